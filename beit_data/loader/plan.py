"""Who reads what in an epoch: shards → ranks → DataLoader workers → batches, and where a resume starts.

Each epoch the split's shards are permuted with ``rng_for(seed, "loader-shards", split, epoch)`` (or kept in
manifest order when not shuffling) and their samples laid end to end, one sequence of ``T`` samples. Rank
``r`` reads the slice ``[r*S, (r+1)*S)`` of it, ``S`` the same share for every rank:

* ``drop_last`` (training): ``nb = T // (world*B)`` full batches per rank, ``S = nb*B``; the last
  ``T - world*S < world*B`` samples of the epoch's sequence are left out (a different set each epoch, as the
  shard order changes) and no sample is read twice.
* otherwise (evaluation): ``S = ceil(T / world)``; the slice wraps to the start of the sequence, so at most
  ``world - 1`` samples are read twice and none is left out; ``nb = ceil(S / B)``, only the last batch short.

Within a rank, logical worker ``w`` of ``W = max(1, num_workers)`` reads its own contiguous part of the slice
and produces the rank's batches ``w, w+W, w+2W, ...``; torch's DataLoader takes batches from its workers
round-robin, so the rank sees batches ``0, 1, 2, ...`` in order. Resuming after ``b`` batches, DataLoader
worker ``i`` plays logical worker ``(i + b) mod W``, skips the samples of its batches below ``b`` (after
shuffling, before decoding) and produces the rest, so the remaining batches equal the uninterrupted ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..rng import rng_for


@dataclass(frozen=True)
class Segment:
    """Samples ``start:stop`` of shard number ``shard`` (an index into the split's shard list)."""

    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class WorkerTask:
    """What one DataLoader worker does in one epoch."""

    worker: int                    # the logical worker it plays
    segments: tuple[Segment, ...]  # the samples it reads, in order
    skip: int                      # samples already consumed before a resume (counted after shuffling)
    first_batch: int               # the rank's index of its first batch; the next ones follow every W
    batch_sizes: tuple[int, ...]   # the batches it still produces


@dataclass(frozen=True)
class Layout:
    """The per-epoch arithmetic for a split of shards with ``counts`` samples."""

    counts: tuple[int, ...]
    world_size: int
    batch_size: int
    workers: int
    drop_last: bool

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def share(self) -> int:
        """Samples per rank per epoch."""
        if self.drop_last:
            return self.batches * self.batch_size
        return -(-self.total // self.world_size)

    @property
    def batches(self) -> int:
        """Batches per rank per epoch (the same on every rank)."""
        if self.drop_last:
            return self.total // (self.world_size * self.batch_size)
        return -(-self.share // self.batch_size)

    def batch_size_at(self, t: int) -> int:
        return min(self.batch_size, self.share - t * self.batch_size)

    def shard_order(self, seed: int, split: str, epoch: int, shuffle: bool) -> np.ndarray:
        n = len(self.counts)
        return rng_for(seed, "loader-shards", split, epoch).permutation(n) if shuffle else np.arange(n)

    def task(self, order: np.ndarray, rank: int, slot: int, done: int = 0) -> WorkerTask:
        """DataLoader worker ``slot``'s work on ``rank`` when ``done`` batches were already consumed."""
        nb, w_count = self.batches, self.workers
        if not 0 <= done <= nb:
            raise ValueError(f"cannot resume after {done} batches: the epoch has {nb}")
        worker = (slot + done) % w_count
        mine = range(worker, nb, w_count)
        offset = rank * self.share + sum(self.batch_size_at(t) for t in range(nb) if t % w_count < worker)
        length = sum(self.batch_size_at(t) for t in mine)
        consumed = [t for t in mine if t < done]
        first = worker + len(consumed) * w_count
        return WorkerTask(worker=worker, segments=self._segments(order, offset, offset + length),
                          skip=sum(self.batch_size_at(t) for t in consumed), first_batch=first,
                          batch_sizes=tuple(self.batch_size_at(t) for t in range(first, nb, w_count)))

    def _segments(self, order: np.ndarray, begin: int, end: int) -> tuple[Segment, ...]:
        """Positions ``begin:end`` of the epoch's sequence (taken modulo ``T``) as shard segments."""
        counts = np.asarray(self.counts, dtype=np.int64)[order]
        ends = np.cumsum(counts)
        out = []
        while begin < end:
            p = begin % self.total
            j = int(np.searchsorted(ends, p, side="right"))
            start = p - int(ends[j] - counts[j])
            n = min(end - begin, int(ends[j]) - p)
            out.append(Segment(int(order[j]), start, start + n))
            begin += n
        return tuple(out)
