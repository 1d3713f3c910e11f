"""The loader object users iterate: one rank's batches of a split, epoch by epoch, resumable mid-epoch.

A :class:`StreamLoader` wraps a torch ``DataLoader`` over an ``IterableDataset`` whose workers run
:meth:`StreamSpec.batches`: read the worker's segments (see :mod:`.plan`), shuffle them in a seeded
buffer, skip what a resumed run already consumed (before decoding), decode with a :class:`Recipe`,
batch and finish the batch. ``set_epoch`` / ``len`` / ``state_dict`` / ``load_state_dict`` follow
``DistributedSampler`` and ``torchdata``'s stateful loaders.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..color import jitter_batch
from ..errors import BeitDataError
from ..rng import rng_for
from .plan import Layout
from .stream import ON_ERROR, Record, ShardRef, batched, decoded, load_sidecar, read_segments, shuffled
from .storage import Storage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # BEiT's "inception" mean and std

Batch = dict[str, Any]
_ERROR = "beit_data_error"  # the key of the one-item batch that carries a worker's BeitDataError


JITTER, JITTER_ORDER = "color_jitter", "color_jitter_order"  # a batch's colour jitter still to apply


def _to(batch: Batch, device: torch.device | str | None, non_blocking: bool) -> Batch:
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) and device is not None else v
            for k, v in batch.items()}


def apply_color_jitter(batch: Batch, device: torch.device | str | None = None, non_blocking: bool = True) -> Batch:
    """``batch`` on ``device`` with the colour jitter it carries (``color_jitter`` / ``color_jitter_order``, as a
    loader made with ``jitter_on_device`` yields) applied to its uint8 ``pixel_values`` there, by
    :func:`beit_data.color.jitter_batch`: the pictures ``render_views`` makes, byte for byte."""
    out = _to(batch, device, non_blocking)
    if JITTER in out:
        out["pixel_values"] = jitter_batch(out["pixel_values"], out.pop(JITTER), out.pop(JITTER_ORDER))
    return out


def normalize(batch: Batch, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
              device: torch.device | str | None = None, non_blocking: bool = True) -> Batch:
    """``batch`` with its tensors on ``device`` and uint8 ``pixel_values`` turned into normalised float32 there,
    after the colour jitter the batch carries (see :func:`apply_color_jitter`)."""
    out = apply_color_jitter(batch, device, non_blocking)
    pixels = out["pixel_values"]
    if pixels.dtype == torch.uint8:
        m = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1) * 255
        s = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1) * 255
        if pixels.device.type == "cpu":
            # picture by picture, so each stays in cache (a float32 batch does not): ≈4x faster, same bytes
            values = torch.empty(pixels.shape, dtype=torch.float32)
            for picture, into in zip(pixels, values):
                torch.div(picture.float().sub_(m), s, out=into)
            out["pixel_values"] = values
        else:
            out["pixel_values"] = (pixels.float() - m) / s
    return out


def stack(samples: Sequence[Batch]) -> Batch:
    """Stack per-sample tensors into batch tensors; other values become lists."""
    return {k: torch.stack([s[k] for s in samples]) if isinstance(v, torch.Tensor) else [s[k] for s in samples]
            for k, v in samples[0].items()}


class Recipe:
    """How one stream turns records into batches; subclasses define :meth:`sample` and may :meth:`finish`."""

    sidecar_shape: tuple[int, int] | None = None  # (views, patches) when the stream joins token sidecars

    def sample(self, record: Record, epoch: int) -> Batch:
        raise NotImplementedError

    def finish(self, batch: Batch, epoch: int, rank: int, index: int) -> Batch:
        """The stacked batch number ``index`` of ``rank``'s epoch, ready to yield."""
        return batch


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs; a pure description, cheap to send to worker processes."""

    storage: Storage
    shards: tuple[ShardRef, ...]
    recipe: Recipe
    layout: Layout
    split: str
    seed: int
    rank: int
    shuffle: bool
    shuffle_buffer: int
    on_error: str

    def batches(self, epoch: int, slot: int, done: int) -> Iterator[Batch]:
        """DataLoader worker ``slot``'s batches of ``epoch`` after ``done`` consumed ones."""
        order = self.layout.shard_order(self.seed, self.split, epoch, self.shuffle)
        task = self.layout.task(order, self.rank, slot, done)
        shape = self.recipe.sidecar_shape
        records = read_segments(self.storage, self.shards, task.segments, self.on_error,
                                None if shape is None else lambda shard: load_sidecar(self.storage, shard, *shape))
        if self.shuffle:
            rng = rng_for(self.seed, "loader-buffer", self.split, epoch, self.rank, task.worker)
            records = shuffled(records, rng, self.shuffle_buffer)
        records = islice(records, task.skip, None)
        samples = decoded(records, lambda rec: self.recipe.sample(rec, epoch), self.on_error)
        indices = range(task.first_batch, self.layout.batches, self.layout.workers)
        try:
            for index, group in zip(indices, batched(samples, task.batch_sizes)):
                batch = stack([s for s, _ in group])
                if self.on_error == "skip":
                    batch["replaced"] = torch.tensor([r for _, r in group])
                yield self.recipe.finish(batch, epoch, self.rank, index)
        except BeitDataError as e:
            # handed over as data: the worker ends cleanly (a raising DataLoader worker stalls the shutdown
            # of the others for seconds) and the user gets the one-line message, not a worker traceback
            yield {_ERROR: str(e)}


class _Epoch(IterableDataset):
    def __init__(self, spec: StreamSpec, epoch: int, done: int) -> None:
        self.spec, self.epoch, self.done = spec, epoch, done

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        return self.spec.batches(self.epoch, info.id if info is not None else 0, self.done)


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: given values, else torch.distributed's, else ``RANK``/``WORLD_SIZE``, else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            found = dist.get_rank(), dist.get_world_size()
        else:
            found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


class StreamLoader:
    """One rank's batches of a split. Every rank yields ``len(loader)`` batches per epoch.

    With ``drop_last`` all batches are full and fewer than ``world_size * batch_size`` samples of the epoch
    are left out, none repeated; without it none is left out, at most ``world_size - 1`` are read twice and
    only the last batch may be short (see :mod:`beit_data.loader.plan`). The order is a pure function of
    the manifests, ``seed``, the epoch, ``world_size``, ``num_workers`` (0 and 1 agree), ``batch_size``
    and ``shuffle_buffer``.

    Call ``set_epoch(epoch)`` before each epoch (as with ``DistributedSampler``). ``state_dict()`` taken
    after any batch and given to ``load_state_dict`` of a loader with the same settings makes its next
    iteration yield exactly the rest of that epoch; the batches already consumed are skipped before
    decoding. With ``on_error="skip"`` a sample that cannot be read is replaced by a repeat of another one
    from the same worker, batches carry ``replaced`` (B,) bool and ``replaced_total`` counts them.
    """

    def __init__(self, spec: StreamSpec, *, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int | None = None, timeout: float = 0) -> None:
        if spec.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {spec.on_error!r}")
        layout = spec.layout
        if layout.batches == 0:
            raise BeitDataError(f"split {spec.split!r} has {layout.total} samples, not one batch of "
                                f"{layout.batch_size} for each of {layout.world_size} ranks: lower batch_size")
        self.spec = spec
        self._loader_args: dict[str, Any] = dict(num_workers=num_workers, pin_memory=pin_memory, timeout=timeout,
                                                 prefetch_factor=prefetch_factor if num_workers else None)
        self.epoch = 0
        self._start = self._served = 0
        self.replaced_total = 0

    def __len__(self) -> int:
        return self.spec.layout.batches

    @property
    def batch_size(self) -> int:
        return self.spec.layout.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration yields (from its start)."""
        self.epoch, self._start, self._served = int(epoch), 0, 0

    def __iter__(self) -> Iterator[Batch]:
        start, self._start = self._start, 0
        self._served = start
        # a private generator: DataLoader draws its workers' base seed from it, not from the caller's RNG
        generator = torch.Generator().manual_seed(self.spec.seed)
        loader = DataLoader(_Epoch(self.spec, self.epoch, start), batch_size=None, generator=generator,
                            **self._loader_args)
        for batch in loader:
            if _ERROR in batch:
                raise BeitDataError(batch[_ERROR])
            self._served += 1
            if "replaced" in batch:
                self.replaced_total += int(batch["replaced"].sum())
            yield batch
        if self._served != len(self):
            raise RuntimeError(f"internal error: rank {self.spec.rank} yielded {self._served} of {len(self)} batches")

    def _settings(self) -> dict[str, Any]:
        s, layout = self.spec, self.spec.layout
        return {"split": s.split, "seed": s.seed, "rank": s.rank, "world_size": layout.world_size,
                "workers": layout.workers, "batch_size": layout.batch_size, "drop_last": layout.drop_last,
                "samples": layout.total, "shuffle": s.shuffle, "shuffle_buffer": s.shuffle_buffer}

    def state_dict(self) -> dict[str, Any]:
        """Where this rank stands: the epoch and the batches of it already yielded, with the settings."""
        return {"epoch": self.epoch, "batches": self._served, **self._settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` on the next iteration; the settings must match the ones that saved it."""
        differ = {k: (state.get(k), v) for k, v in self._settings().items() if state.get(k) != v}
        if differ:
            detail = ", ".join(f"{k} saved {a!r} now {b!r}" for k, (a, b) in differ.items())
            raise BeitDataError(f"loader state does not fit this loader ({detail}): resume with the same settings")
        if not 0 <= state["batches"] <= len(self):
            raise BeitDataError(f"loader state is at batch {state['batches']} of an epoch of {len(self)}")
        self.epoch, self._start, self._served = int(state["epoch"]), int(state["batches"]), int(state["batches"])


def open_stream(storage: Storage, shards: Sequence[ShardRef], recipe: Recipe, *, split: str, batch_size: int,
                seed: int, rank: int | None, world_size: int | None, num_workers: int, shuffle: bool,
                shuffle_buffer: int, drop_last: bool, on_error: str, pin_memory: bool,
                prefetch_factor: int | None, timeout: float) -> StreamLoader:
    """A :class:`StreamLoader` over ``shards`` for this rank (see the loaders for the options)."""
    if batch_size < 1 or num_workers < 0:
        raise ValueError("batch_size must be >= 1 and num_workers >= 0")
    rank, world_size = resolve_rank(rank, world_size)
    layout = Layout(tuple(s.count for s in shards), world_size, batch_size, max(1, num_workers), drop_last)
    spec = StreamSpec(storage, tuple(shards), recipe, layout, split, seed, rank, shuffle, shuffle_buffer, on_error)
    return StreamLoader(spec, num_workers=num_workers, pin_memory=pin_memory, prefetch_factor=prefetch_factor,
                        timeout=timeout)
