"""Streaming loaders: MIM pretraining (pixels + visual tokens + masks) and fine-tuning, exact across ranks
and workers and resumable mid-epoch."""
from .core import HALF, IMAGENET_MEAN, IMAGENET_STD, StreamLoader, apply_color_jitter, normalize
from .finetuning import finetuning_loader
from .pretraining import pretraining_loader

__all__ = ["HALF", "IMAGENET_MEAN", "IMAGENET_STD", "StreamLoader", "apply_color_jitter", "finetuning_loader",
           "normalize", "pretraining_loader"]
