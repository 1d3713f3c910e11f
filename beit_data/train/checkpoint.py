"""Training checkpoints that resume exactly and double as Hugging Face model folders.

Layout under a run's ``out_dir``::

    checkpoints/step-00001000/model/      save_pretrained(): config.json + model.safetensors
    checkpoints/step-00001000/trainer.pt  optimiser, schedule, step, epoch, batches done, loader states

A checkpoint is written under a temporary name and renamed when complete, so
the newest ``step-*`` folder is always a complete one;
``trainer.pt`` holds only plain data and tensors and is read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..errors import BeitDataError

_PREFIX = "step-"


def _checkpoints(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def save_checkpoint(out_dir: str | Path, model: PreTrainedModel, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict, *, keep: int = 2) -> Path:
    """Write the checkpoint for ``state["step"]``, point ``latest`` at it and keep the newest ``keep``."""
    root = _checkpoints(Path(out_dir))
    name = f"{_PREFIX}{state['step']:08d}"
    tmp, final = root / f".{name}.tmp", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "model")
    torch.save({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               tmp / "trainer.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob(f"{_PREFIX}*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = sorted(p for p in _checkpoints(Path(out_dir)).glob(f"{_PREFIX}*") if (p / "trainer.pt").is_file())
    return found[-1] if found else None


def load_checkpoint(path: str | Path, model: PreTrainedModel, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict:
    """Restore weights, optimiser and schedule from ``path``; return the rest of the trainer state."""
    path = Path(path)
    if not (path / "trainer.pt").is_file():
        raise BeitDataError(f"{path}: not a training checkpoint (no trainer.pt); "
                         "pass a checkpoints/step-* folder or the run's out_dir")
    # from_pretrained, not the raw file: save_pretrained may write transformers' legacy parameter names
    model.load_state_dict(type(model).from_pretrained(path / "model").state_dict())
    state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


def resume_target(resume: str | None, out_dir: str | Path) -> Path | None:
    """Which checkpoint to resume: ``"auto"`` = the run's latest (if any), None = none, else a path."""
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    path = Path(resume)
    found = path if (path / "trainer.pt").is_file() else latest_checkpoint(path)
    if found is None:
        raise BeitDataError(f"{path}: nothing to resume from; pass a checkpoints/step-* folder or a run's out_dir")
    return found


def model_folder(path: str | Path) -> Path:
    """The Hugging Face model folder behind a run dir, a checkpoint or a model folder."""
    path = Path(path)
    for candidate in (path, path / "model", (latest_checkpoint(path) or path) / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise BeitDataError(f"{path}: no BEiT model here (no config.json); pass a Hugging Face BEiT folder, "
                     "a pretraining out_dir or one of its checkpoints/step-* folders")
