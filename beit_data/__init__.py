"""beit-data: ImageNet → image shards, visual-token sidecars and masks → streaming loaders → trainer.

The loaders are imported on first use (``beit_data.pretraining_loader``), so ``import beit_data`` stays light.
"""
from __future__ import annotations

from typing import Any

_LOADER_NAMES = {"pretraining_loader", "finetuning_loader", "normalize", "apply_color_jitter"}


def __getattr__(name: str) -> Any:
    if name in _LOADER_NAMES:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'beit_data' has no attribute {name!r}")
