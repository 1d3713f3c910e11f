"""BEiT model configs and construction on top of transformers' BEiT classes.

``model`` names a size (``tiny``, ``base``, ``large``) or a path to a
``BeitConfig`` JSON (``CONFIG.json`` / a saved ``config.json``). Pretraining
uses BEiT's MIM layout (mask token, one relative position bias shared by all
layers, layer scale); fine-tuning gives every layer its own bias table and
mean pooling, and is initialised from any folder ``from_pretrained`` reads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import BeitConfig, BeitForImageClassification, BeitModel

from ..errors import BeitDataError
from ..sidecars import load_token_manifest
from .relpos import adapt_backbone_state

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}


def patch_grid(config: BeitConfig) -> tuple[int, int]:
    """(rows, columns) of patches at the config's image size."""
    size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    patch = config.patch_size if isinstance(config.patch_size, (list, tuple)) else (config.patch_size,) * 2
    return size[0] // patch[0], size[1] // patch[1]


def token_set_manifest(path: str | Path) -> dict:
    """The manifest of a token set, given ``ROOT/tokens/<id>`` or its ``manifest.json``."""
    folder = Path(path)
    if folder.name == "manifest.json":
        folder = folder.parent
    return load_token_manifest(folder.parent.parent, folder.name)


def mim_config(model: str = "base", *, vocab_size: int = 8192, image_size: int = 224,
               drop_path_rate: float = 0.1, layer_scale: float = 0.1) -> BeitConfig:
    """A ``BeitConfig`` for masked image modeling with BEiT-pretraining defaults.

    A JSON ``model`` gives the architecture; the MIM layout and these arguments override it.
    """
    layout: dict[str, Any] = {
        "vocab_size": vocab_size, "image_size": image_size, "drop_path_rate": drop_path_rate,
        "layer_scale_init_value": layer_scale, "use_mask_token": True,
        "use_shared_relative_position_bias": True, "use_relative_position_bias": False,
        "use_absolute_position_embeddings": False, "use_mean_pooling": True,
        "attn_implementation": "sdpa",
    }
    if model in SIZES:
        return BeitConfig(patch_size=16, layer_norm_eps=1e-6, **SIZES[model], **layout)
    path = Path(model)
    if not path.is_file():
        raise BeitDataError(f"model {model!r} is neither one of {sorted(SIZES)} nor a BeitConfig JSON file")
    return BeitConfig.from_dict({**json.loads(path.read_text()), **layout})


def classifier_config(source: BeitConfig, *, num_labels: int, image_size: int = 384,
                      drop_path_rate: float = 0.1, labels: list[str] | None = None) -> BeitConfig:
    """Turn a backbone config (MIM or classifier) into a fine-tuning classifier config."""
    config = BeitConfig.from_dict(source.to_dict())
    config.image_size = image_size
    config.num_labels = num_labels
    if labels is not None:
        if len(labels) != num_labels:
            raise BeitDataError(f"{len(labels)} label names for {num_labels} classes")
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    config.drop_path_rate = drop_path_rate
    config.use_relative_position_bias = source.use_relative_position_bias or source.use_shared_relative_position_bias
    config.use_shared_relative_position_bias = False
    config.use_mask_token = False
    config.use_mean_pooling = True
    config.architectures = ["BeitForImageClassification"]
    config._attn_implementation = "sdpa"
    return config


def classifier_from_pretrained(folder: str | Path, *, num_labels: int, image_size: int = 384,
                               drop_path_rate: float = 0.1,
                               labels: list[str] | None = None) -> BeitForImageClassification:
    """A classifier at ``image_size`` initialised from a BEiT checkpoint folder.

    ``folder`` is anything ``BeitModel.from_pretrained`` reads (this trainer's
    checkpoints, Hugging Face BEiT folders in old or new parameter names). The
    shared relative position bias is copied into every layer, bias tables are
    resampled to the new patch grid and absolute position embeddings resized;
    the classifier head (and, from a MIM checkpoint, the pooling norm) start fresh.
    """
    backbone = BeitModel.from_pretrained(folder)
    config = classifier_config(backbone.config, num_labels=num_labels, image_size=image_size,
                               drop_path_rate=drop_path_rate, labels=labels)
    model = BeitForImageClassification(config)
    state = adapt_backbone_state(backbone.state_dict(), src_window=patch_grid(backbone.config),
                                 dst_window=patch_grid(config), num_layers=config.num_hidden_layers,
                                 per_layer_bias=config.use_relative_position_bias)
    state.pop("embeddings.mask_token", None)
    missing, unexpected = model.beit.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise BeitDataError(f"{folder}: checkpoint does not fit the classifier "
                         f"(missing {missing}, unexpected {unexpected})")
    return model

