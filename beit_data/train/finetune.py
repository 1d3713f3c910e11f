"""BEiT image classification fine-tuning (224-pretrained → 384) and top-1/top-5 evaluation.

Batches: ``pixel_values`` (B, 3, H, W) and ``labels``, either int64 (B,) class
ids or float (B, C) soft targets from the loader's mixup/cutmix and label
smoothing; the loss is cross-entropy against either. The finished model is
exported with ``save_pretrained`` plus a BEiT image processor (384×384 resize,
bicubic, ``pixel_mean``/``pixel_std``: BEiT's 0.5 by default, which must be what
the loader normalised with) to ``out_dir/final``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BeitForImageClassification, BeitImageProcessor
from transformers.image_utils import PILImageResampling

from ..loader import HALF, normalize
from .checkpoint import model_folder
from .dist import all_reduce_sum, init_distributed
from .engine import Batch, Batches, TrainConfig, autocast, fit, per_epoch
from .models import classifier_config, classifier_from_pretrained, mim_config


@dataclass(kw_only=True)
class FinetuneConfig(TrainConfig):
    """BEiT-base ImageNet-1k fine-tuning defaults (lr for a global batch of 1024)."""

    init: str | None = None  # pretraining out_dir / checkpoint, or a Hugging Face BEiT folder; None: random
    model: str = "base"  # size for a random init
    num_labels: int = 1000
    labels: list[str] | None = None  # class names for config.id2label
    image_size: int = 384
    layer_decay: float = 0.65
    drop_path: float = 0.1
    epochs: int = 100
    lr: float = 4e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 20.0


def classification_step(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy against hard (B,) or soft (B, C) labels."""
    logits = model(pixel_values=batch["pixel_values"]).logits.float()
    labels = batch["labels"]
    loss = F.cross_entropy(logits, labels.float() if labels.is_floating_point() else labels)
    return loss, {"loss": loss.detach()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[Batch], cfg: TrainConfig) -> dict[str, float]:
    """Loss, top-1 and top-5 (%) over ``batches``, summed over all ranks (soft labels count as their argmax)."""
    ctx = init_distributed(cfg.device)
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=ctx.device)
    for batch in batches:
        batch = normalize(batch, cfg.pixel_mean, cfg.pixel_std, ctx.device)
        with autocast(cfg, ctx.device):
            logits = model(pixel_values=batch["pixel_values"]).logits.float()
        labels = batch["labels"]
        labels = labels.argmax(-1) if labels.is_floating_point() else labels
        hits = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == labels[:, None]
        totals += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                               hits[:, 0].sum().double(), hits.sum().double(),
                               torch.tensor(len(labels), dtype=torch.float64, device=ctx.device)])
    model.train(was_training)
    loss, top1, top5, count = all_reduce_sum(totals, ctx).tolist()
    n = max(count, 1.0)
    return {"val_loss": loss / n, "val_top1": 100 * top1 / n, "val_top5": 100 * top5 / n, "val_count": int(count)}


def finetune_model(cfg: FinetuneConfig) -> BeitForImageClassification:
    """The classifier to fine-tune: from ``cfg.init`` (resampled to ``cfg.image_size``) or random."""
    torch.manual_seed(cfg.seed)
    if cfg.init is not None:
        return classifier_from_pretrained(model_folder(cfg.init), num_labels=cfg.num_labels,
                                          image_size=cfg.image_size, drop_path_rate=cfg.drop_path, labels=cfg.labels)
    return BeitForImageClassification(classifier_config(
        mim_config(cfg.model, image_size=cfg.image_size), num_labels=cfg.num_labels,
        image_size=cfg.image_size, drop_path_rate=cfg.drop_path, labels=cfg.labels))


def export_classifier(model: BeitForImageClassification, folder: str | Path, *,
                      mean: Sequence[float] = HALF, std: Sequence[float] = HALF) -> Path:
    """``save_pretrained`` the model with a BEiT image processor: bicubic resize to the model's size, mean/std."""
    folder = Path(folder)
    side = model.config.image_size
    height, width = side if isinstance(side, (list, tuple)) else (side, side)
    size = {"height": height, "width": width}
    model.save_pretrained(folder)
    BeitImageProcessor(size=size, crop_size=size, resample=PILImageResampling.BICUBIC, do_center_crop=False,
                       image_mean=list(mean), image_std=list(std)).save_pretrained(folder)
    return folder


def run_finetune(cfg: FinetuneConfig, train_loader: Batches,
                 val_loader: Batches | None = None) -> BeitForImageClassification:
    """Fine-tune (or resume) per ``cfg``; evaluate on ``val_loader`` after every epoch; export to ``out_dir/final``."""
    val = per_epoch(val_loader) if val_loader is not None else None
    model = fit(finetune_model(cfg), cfg, train_loader, classification_step, layer_decay=cfg.layer_decay,
                on_epoch_end=(lambda net, epoch: evaluate(net, val(epoch), cfg)) if val else None)
    if init_distributed(cfg.device).is_main:
        export_classifier(model, Path(cfg.out_dir) / "final", mean=cfg.pixel_mean, std=cfg.pixel_std)
    return model
