"""Lightweight BEiT trainer on transformers' BEiT models: MIM pretraining and 384 fine-tuning.

``run_pretrain(PretrainConfig(...), batches)`` and ``run_finetune(FinetuneConfig(...),
train, val)`` take batches as a callable ``epoch -> iterable of batch dicts`` or
a loader object; both run unchanged under ``torchrun --nproc-per-node N``.
"""
from .checkpoint import latest_checkpoint, model_folder
from .engine import TrainConfig
from .finetune import FinetuneConfig, evaluate, export_classifier, run_finetune
from .models import classifier_from_pretrained, mim_config
from .pretrain import PretrainConfig, run_pretrain
from .relpos import resize_position_embeddings, resize_relative_position_table

__all__ = [
    "FinetuneConfig", "PretrainConfig", "TrainConfig", "classifier_from_pretrained", "evaluate",
    "export_classifier", "latest_checkpoint", "mim_config", "model_folder", "resize_position_embeddings",
    "resize_relative_position_table", "run_finetune", "run_pretrain",
]
