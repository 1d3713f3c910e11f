"""The training loop both modes share.

A mode supplies a model and a ``step_fn(model, batch) -> (loss, metrics)``;
this loop owns devices and DDP, AdamW with the cosine schedule, bf16 autocast
on GPU, gradient clipping, logging and checkpoint/resume.

Batches come from ``batches``: a callable ``epoch -> iterable of batch dicts``
or one re-iterable loader (``set_epoch(epoch)`` is called when it has one);
an epoch is ``steps_per_epoch`` batches, or ``len()`` of epoch 0's. Tensors
move to the device here, and uint8 ``pixel_values`` (the loaders'
``uint8=True``) are normalised there with ``pixel_mean``/``pixel_std``.

Resuming inside an epoch restores the epoch's iterable with
``load_state_dict`` (of the ``state_dict()`` it gave after the last batch
trained on) when it has one, and otherwise replays and drops the batches
already consumed. Randomness inside a step (drop path) is reseeded from
(seed, rank, step), so a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import PreTrainedModel

from ..errors import BeitDataError
from ..loader import HALF, normalize
from ..rng import stream_id
from .checkpoint import load_checkpoint, resume_target, save_checkpoint
from .dist import DistContext, all_reduce_sum, gather_objects, init_distributed, wrap_model
from .optim import build_optimizer

Batch = dict[str, torch.Tensor]
Batches = Callable[[int], Iterable[Batch]] | Iterable[Batch]
Model = TypeVar("Model", bound=PreTrainedModel)
StepFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(kw_only=True)
class TrainConfig:
    """Options common to pretraining and fine-tuning (``lr`` is the peak rate for the whole batch)."""

    out_dir: str
    epochs: int
    lr: float
    steps_per_epoch: int | None = None  # None: len() of epoch 0's batches
    min_lr: float = 1e-6
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None
    bf16: bool = True  # autocast to bfloat16 on CUDA; CPU runs stay fp32
    pixel_mean: tuple[float, ...] = HALF  # BEiT's; normalises uint8 batches, and the exported processor's
    pixel_std: tuple[float, ...] = HALF
    seed: int = 0
    log_every: int = 50
    save_every: int = 1000  # steps; the last step is always saved
    keep_checkpoints: int = 2
    resume: str | None = "auto"  # "auto": the run's latest checkpoint if any; None: start fresh; or a path
    device: str | None = None  # default cuda:LOCAL_RANK when available, else cpu


def per_epoch(batches: Batches) -> Callable[[int], Iterable[Batch]]:
    """``batches`` as a callable ``epoch -> iterable``."""
    if callable(batches) and not hasattr(batches, "__iter__"):
        return batches

    def epoch_batches(epoch: int) -> Iterable[Batch]:
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(epoch)
        return batches

    return epoch_batches


def autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA when ``cfg.bf16``; a disabled context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")


def train_step(net: torch.nn.Module, batch: Batch, step_fn: StepFn, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig,
               device: torch.device) -> dict[str, torch.Tensor]:
    """One update: forward under autocast, backward, clip, AdamW step, schedule step; returns the metrics."""
    with autocast(cfg, device):
        loss, metrics = step_fn(net, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad)
    optimizer.step()
    scheduler.step()
    return metrics


def _epoch_length(source: Iterable[Batch]) -> int:
    try:
        return len(source)  # type: ignore[arg-type]
    except TypeError:
        raise BeitDataError("the batches have no len(); set steps_per_epoch (batches per rank per epoch)") from None


def _positioned(source: Iterable[Batch], loader_state: object, consumed: int) -> Iterator[Batch]:
    if consumed and loader_state is not None and hasattr(source, "load_state_dict"):
        source.load_state_dict(loader_state)
        return iter(source)
    it = iter(source)
    for _ in range(consumed):
        if next(it, None) is None:
            raise BeitDataError(f"cannot resume: the epoch now has fewer than the {consumed} batches "
                                "already trained on")
    return it


class RunLog:
    """Rank 0's JSON-lines log (``out_dir/log.jsonl``), echoed to stdout."""

    def __init__(self, out_dir: Path, ctx: DistContext):
        self.path, self.enabled = out_dir / "log.jsonl", ctx.is_main

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), flush=True)


class _Window:
    """Metrics, images and data-wait time since the last log line, summed over ranks when read."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = self.images = 0
        self.data_s = 0.0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor], images: int, data_s: float) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
        self.steps += 1
        self.images += images
        self.data_s += data_s

    def read(self, ctx: DistContext) -> dict[str, float]:
        """Means over steps and ranks, images/s and the share of wall time spent waiting for batches."""
        wall = time.perf_counter() - self.start
        keys = sorted(self.sums)
        totals = all_reduce_sum(torch.stack([self.sums[k] for k in keys] + [
            torch.tensor(float(self.images), device=ctx.device),
            torch.tensor(self.data_s / wall, device=ctx.device)]), ctx).tolist()
        out = {k: totals[i] / (self.steps * ctx.world_size) for i, k in enumerate(keys)}
        out["images_per_s"] = totals[-2] / wall
        out["data_wait"] = totals[-1] / ctx.world_size
        return out


def fit(model: Model, cfg: TrainConfig, batches: Batches, step_fn: StepFn, *, layer_decay: float = 1.0,
        on_epoch_end: Callable[[torch.nn.Module, int], dict[str, float]] | None = None) -> Model:
    """Train ``model`` for ``cfg.epochs`` (resuming per ``cfg.resume``); return the unwrapped model.

    ``on_epoch_end(model, epoch)`` runs on every rank after each epoch
    (evaluation) and its metrics are logged.
    """
    ctx = init_distributed(cfg.device)
    out_dir = Path(cfg.out_dir)
    epoch_batches = per_epoch(batches)
    steps_per_epoch = cfg.steps_per_epoch or _epoch_length(epoch_batches(0))
    model.to(ctx.device)
    optimizer, scheduler = build_optimizer(
        model, lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
        total_steps=cfg.epochs * steps_per_epoch, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        num_layers=model.config.num_hidden_layers, layer_decay=layer_decay)
    state: dict[str, Any] = {"step": 0, "epoch": 0, "in_epoch": 0, "loader": None}
    checkpoint = resume_target(cfg.resume, out_dir)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        if state["loader"] is not None and len(state["loader"]) != ctx.world_size:
            raise BeitDataError(f"{checkpoint}: saved by {len(state['loader'])} ranks, resumed by {ctx.world_size}; "
                             "resume with the same number of ranks")
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True))
    net = wrap_model(model, ctx)
    net.train()
    log, window = RunLog(out_dir, ctx), _Window()
    step, epoch, in_epoch = state["step"], state["epoch"], state["in_epoch"]
    loader_state = state["loader"][ctx.rank] if state["loader"] is not None else None
    saved_step = step

    def save() -> int:
        loaders = gather_objects(source.state_dict() if hasattr(source, "state_dict") else None, ctx)
        if ctx.is_main:
            save_checkpoint(out_dir, model, optimizer, scheduler, keep=cfg.keep_checkpoints, state={
                "step": step, "epoch": epoch, "in_epoch": in_epoch,
                "loader": None if all(s is None for s in loaders) else loaders})
        return step

    while epoch < cfg.epochs:
        source = epoch_batches(epoch)
        if in_epoch < steps_per_epoch:
            it = _positioned(source, loader_state, in_epoch)
        while in_epoch < steps_per_epoch:
            t0 = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                break
            data_s = time.perf_counter() - t0
            batch = normalize(batch, cfg.pixel_mean, cfg.pixel_std, ctx.device)
            torch.manual_seed(stream_id(cfg.seed, "train-step", ctx.rank, step)[0])
            metrics = train_step(net, batch, step_fn, optimizer, scheduler, cfg, ctx.device)
            step, in_epoch = step + 1, in_epoch + 1
            window.add(metrics, images=len(batch["pixel_values"]), data_s=data_s)
            if step % cfg.log_every == 0:
                log.write({"step": step, "epoch": epoch, "lr": max(scheduler.get_last_lr()), **window.read(ctx)})
                window = _Window()
            if step % cfg.save_every == 0:
                saved_step = save()
        epoch, in_epoch, loader_state = epoch + 1, 0, None
        if on_epoch_end is not None:
            t0 = time.perf_counter()
            log.write({"step": step, "epoch": epoch, **on_epoch_end(net, epoch)})
            window.start += time.perf_counter() - t0  # evaluation is not training throughput
    if step != saved_step:
        save()
    return model
