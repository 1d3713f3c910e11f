"""BEiT masked image modeling: predict the stored visual tokens of the masked patches.

Batches: ``pixel_values`` (B, 3, H, W) float normalised or uint8, ``bool_masked_pos``
(B, N) bool and ``visual_tokens`` (B, N) int64. The loss is cross-entropy over
the masked positions only (transformers' ``BeitForMaskedImageModeling`` takes
``labels`` as the flat tokens at the masked positions); logged with the
masked-token accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BeitForMaskedImageModeling

from ..errors import BeitDataError
from .engine import Batch, Batches, TrainConfig, fit
from .models import mim_config, patch_grid, token_set_manifest


@dataclass(kw_only=True)
class PretrainConfig(TrainConfig):
    """BEiT-base pretraining defaults (lr for a global batch of 2048)."""

    model: str = "base"  # tiny | base | large | path to a BeitConfig JSON
    image_size: int = 224
    vocab_size: int | None = None  # None: from tokens_manifest, else 8192
    tokens_manifest: str | None = None  # tokens/<id>/manifest.json
    drop_path: float = 0.1
    layer_scale: float = 0.1
    epochs: int = 800
    lr: float = 1.5e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 10.0
    clip_grad: float | None = 3.0


def mim_step(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and masked-token accuracy of one MIM batch."""
    mask = batch["bool_masked_pos"].bool()
    labels = batch["visual_tokens"][mask].long()
    out = model(pixel_values=batch["pixel_values"], bool_masked_pos=mask, labels=labels)
    accuracy = (out.logits[mask].argmax(-1) == labels).float().mean()
    return out.loss, {"loss": out.loss.detach(), "mim_acc": accuracy}


def pretrain_model(cfg: PretrainConfig) -> BeitForMaskedImageModeling:
    """The freshly initialised MIM model ``cfg`` describes (seeded by ``cfg.seed``).

    With ``tokens_manifest`` the vocabulary comes from the token set, whose
    token grid must be the model's patch grid.
    """
    manifest = token_set_manifest(cfg.tokens_manifest) if cfg.tokens_manifest else None
    vocab = cfg.vocab_size or (int(manifest["tokenizer"]["vocab_size"]) if manifest else 8192)
    config = mim_config(cfg.model, vocab_size=vocab, image_size=cfg.image_size, drop_path_rate=cfg.drop_path,
                        layer_scale=cfg.layer_scale)
    if manifest and tuple(manifest["grid"]) != patch_grid(config):
        raise BeitDataError(f"{cfg.tokens_manifest}: token grid {manifest['grid']} does not match the model's "
                            f"{patch_grid(config)} patches at image_size {cfg.image_size}; set image_size to the "
                            f"token set's resolution ({manifest.get('resolution')})")
    torch.manual_seed(cfg.seed)
    return BeitForMaskedImageModeling(config)


def run_pretrain(cfg: PretrainConfig, batches: Batches) -> BeitForMaskedImageModeling:
    """Pretrain (or resume) per ``cfg`` on ``batches`` (``epoch -> iterable`` or a loader object).

    Checkpoints land in ``cfg.out_dir/checkpoints``; each one's ``model/``
    folder loads with ``BeitForMaskedImageModeling.from_pretrained`` and
    initialises :func:`beit_data.train.run_finetune`.
    """
    return fit(pretrain_model(cfg), cfg, batches, mim_step)
