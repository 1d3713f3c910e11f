"""BEiT blockwise masks: batched generators with the per-mask loop's distribution.

The algorithm is BEiT's ``MaskingGenerator`` (microsoft/unilm, beit/masking_generator.py).
Blocks are added one at a time. Each block gets up to ``attempts`` tries: an area uniform
in ``[min_patches, min(remaining, max_patches)]`` and an aspect log-uniform in
``[min_aspect, max_aspect]``, rounded to ``h × w`` patches, which must be strictly smaller
than the grid on both sides, placed uniformly. The first try that adds between 1 and
``remaining`` new patches is kept. The mask is done when it holds ``num_masking``
patches, or when a block adds nothing, so masks can fall short of the target (about a
third of them at 14×14 / 75 / 16). ``exact=True`` is BEiT v2's rule: a short mask is
topped up with unmasked patches chosen uniformly. Blocks never overshoot, so nothing
ever needs trimming.

Batching: one pass gives every unfinished mask of the batch one try, so a batch makes
exactly the tries the loop makes, mask by mask; a kept block starts the mask's next
block, and ``attempts`` failed tries in a row end it. Blocks are ANDs of a precomputed
row band and column band, and the patches a block would add are counted against the
mask in a few word operations:

* numpy (:func:`generate_masks`, :func:`masks_for`): a mask is a column of 64-bit words,
  counted with popcounts;
* torch (:func:`generate_masks_torch`, CPU or CUDA): a mask is a column of bools.

:func:`masks_for` gives every row its own stream ``rng_for(seed, "mask", key, view)``, read
in order, so a row never depends on the rest of the batch. :func:`reference_mask` is the
plain per-mask loop that the tests and ``bench/masks.py`` measure the batched generators
against.
"""
from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .policy import PolicyDict
from .rng import rng_for

__all__ = [
    "MaskPolicy",
    "generate_masks",
    "generate_masks_torch",
    "masks_for",
    "pack_masks",
    "unpack_masks",
    "reference_mask",
]

# uniforms(rows, count) -> float64 (len(rows), count) in [0, 1), numpy or torch: the next
# `count` uniforms for each listed row of the batch.
UniformSource = Callable[[Any, int], Any]


@dataclass(frozen=True)
class MaskPolicy(PolicyDict):
    """BEiT's masking parameters. ``None`` means BEiT's default: ``max_patches`` is
    ``num_masking`` and ``max_aspect`` is ``1 / min_aspect``."""

    grid: tuple[int, int] = (14, 14)
    num_masking: int = 75
    min_patches: int = 16
    max_patches: int | None = None
    min_aspect: float = 0.3
    max_aspect: float | None = None
    exact: bool = False
    attempts: int = 10

    def __post_init__(self) -> None:
        grid = tuple(int(g) for g in self.grid)
        object.__setattr__(self, "grid", grid)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"mask grid must be two positive sizes, got {self.grid}")
        if not 0 <= self.num_masking <= grid[0] * grid[1]:
            raise ValueError(f"num_masking={self.num_masking} must lie in [0, {grid[0] * grid[1]}] for a {grid[0]}x{grid[1]} grid")
        if self.min_patches < 1 or (self.max_patches is not None and self.max_patches < 1):
            raise ValueError("min_patches and max_patches must be at least 1")
        if self.min_aspect <= 0 or (self.max_aspect is not None and self.max_aspect < self.min_aspect):
            raise ValueError(f"aspect range ({self.min_aspect}, {self.max_aspect}) must be positive and increasing")
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    @property
    def block_cap(self) -> int:
        """The most patches one block may add."""
        return self.num_masking if self.max_patches is None else self.max_patches

    @property
    def aspect_range(self) -> tuple[float, float]:
        return self.min_aspect, (1 / self.min_aspect if self.max_aspect is None else self.max_aspect)

    @classmethod
    def for_resolution(cls, resolution: int, patch: int = 16, **fields: Any) -> MaskPolicy:
        """The policy for square ``resolution`` pictures: a ``resolution // patch`` grid and
        the mask count scaled by area from 75 on 14×14, rounded (224 → 14×14 / 75,
        384 → 24×24 / 220). ``fields`` set the other parameters."""
        if resolution <= 0 or resolution % patch:
            raise ValueError(f"resolution {resolution} is not a positive multiple of the patch size {patch}")
        side = resolution // patch
        base = cls()
        count = round(base.num_masking * side * side / (base.grid[0] * base.grid[1]))
        return cls(grid=(side, side), num_masking=count, **fields)



def _propose(u: Any, cap: Any, policy: MaskPolicy, xp: Any) -> tuple[Any, Any, Any, Any]:
    """One block per row from uniforms ``u`` (rows, 4) and each row's ``cap``: height, width,
    top and left. A block that does not fit the grid comes out empty (0×0), so it is never
    kept. ``xp`` is numpy or torch."""
    gh, gw = policy.grid
    log_lo, log_hi = (math.log(a) for a in policy.aspect_range)
    side = xp.sqrt(policy.min_patches + (cap - policy.min_patches) * u[:, 0])  # sqrt(area)
    stretch = xp.exp(0.5 * (log_lo + (log_hi - log_lo) * u[:, 1]))  # sqrt(aspect)
    h = xp.asarray(xp.round(side * stretch), dtype=xp.int64)
    w = xp.asarray(xp.round(side / stretch), dtype=xp.int64)
    fits = (h < gh) & (w < gw)
    h = h * fits
    w = w * fits
    top = xp.asarray(u[:, 2] * (gh + 1 - h), dtype=xp.int64)
    left = xp.asarray(u[:, 3] * (gw + 1 - w), dtype=xp.int64)
    return h, w, top, left


@functools.lru_cache(maxsize=8)
def _band_cells(gh: int, gw: int) -> tuple[np.ndarray, np.ndarray]:
    """Bands of a gh×gw grid as bool (gh*gw, bands): row band ``top * (gh+1) + h`` covers
    rows top..top+h-1 and column band ``left * (gw+1) + w`` columns left..left+w-1, so a
    block is the AND of its two bands."""
    start_y, len_y = np.ogrid[: gh + 1, : gh + 1]
    start_x, len_x = np.ogrid[: gw + 1, : gw + 1]
    y, x = np.arange(gh), np.arange(gw)
    in_rows = ((y >= start_y[..., None]) & (y < (start_y + len_y)[..., None])).reshape(-1, gh)
    in_cols = ((x >= start_x[..., None]) & (x < (start_x + len_x)[..., None])).reshape(-1, gw)
    rows = np.broadcast_to(in_rows[:, :, None], (len(in_rows), gh, gw)).reshape(len(in_rows), -1)
    cols = np.broadcast_to(in_cols[:, None, :], (len(in_cols), gh, gw)).reshape(len(in_cols), -1)
    return np.ascontiguousarray(rows.T), np.ascontiguousarray(cols.T)


class _Bits:
    """numpy store: each mask is a column of uint64 words, bit ``c % 64`` of word ``c // 64``
    for patch ``c``; a set of patches is counted with popcounts."""

    xp = np

    def __init__(self, grid: tuple[int, int]) -> None:
        self.grid = grid
        self.band_rows, self.band_cols = (self._pack(b) for b in _band_cells(*grid))

    @staticmethod
    def _pack(cells: np.ndarray) -> np.ndarray:
        padded = np.concatenate([cells, np.zeros((-len(cells) % 64, *cells.shape[1:]), bool)])
        packed = np.packbits(padded, axis=0, bitorder="little")
        return np.ascontiguousarray(np.ascontiguousarray(packed.T).view(np.uint64).T)

    def empty(self, n: int) -> np.ndarray:
        return np.zeros((len(self.band_rows), n), np.uint64)

    @staticmethod
    def take(store: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.take(store, index, axis=1)

    @staticmethod
    def count(store: np.ndarray) -> np.ndarray:
        return np.add.reduce(np.bitwise_count(store), axis=0, dtype=np.int64)

    @staticmethod
    def nonzero(flags: np.ndarray) -> np.ndarray:
        return np.flatnonzero(flags)

    def masks(self, store: np.ndarray) -> np.ndarray:
        gh, gw = self.grid
        packed = np.ascontiguousarray(store.T).view(np.uint8)
        return np.unpackbits(packed, axis=1, count=gh * gw, bitorder="little").view(bool).reshape(-1, gh, gw)


class _Cells:
    """torch store: each mask is a column of bools, one per patch."""

    xp = torch

    def __init__(self, grid: tuple[int, int], device: torch.device) -> None:
        self.grid = grid
        self.device = device
        self.band_rows, self.band_cols = (torch.from_numpy(b).to(device) for b in _band_cells(*grid))

    def empty(self, n: int) -> torch.Tensor:
        return torch.zeros((len(self.band_rows), n), dtype=torch.bool, device=self.device)

    @staticmethod
    def take(store: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return store.index_select(1, index)

    @staticmethod
    def count(store: torch.Tensor) -> torch.Tensor:
        return store.sum(0)

    @staticmethod
    def nonzero(flags: torch.Tensor) -> torch.Tensor:
        return flags.nonzero().squeeze(1)

    def masks(self, store: torch.Tensor) -> torch.Tensor:
        return store.T.reshape(-1, *self.grid).contiguous()


def _blockwise(policy: MaskPolicy, n: int, uniforms: UniformSource, store: Any) -> tuple[Any, Any]:
    """Masks (n, gh, gw) bool and the patches each kept block added, in ``store``'s
    representation (a :class:`_Bits` or a :class:`_Cells`).

    Each pass gives every unfinished mask one try: four uniforms make a block, which is
    kept when it adds between 1 and ``cap`` patches. A mask is finished when it is full or
    after ``attempts`` failed tries in a row (the loop's "a block adds nothing")."""
    xp, (gh, gw) = store.xp, policy.grid
    target = policy.num_masking
    done = store.empty(n)
    counts = xp.zeros(n, dtype=xp.int64, device=done.device)
    rows = xp.arange(n if target > 0 else 0, device=done.device)  # unfinished masks...
    live = store.take(done, rows)  # ...their patches,
    live_counts = counts[rows]  # their patch counts
    failed = xp.zeros_like(rows)  # and their failed tries since the last kept block
    sizes = []
    while rows.shape[0]:
        cap = (target - live_counts).clip(max=policy.block_cap)
        h, w, top, left = _propose(uniforms(rows, 4), cap, policy, xp)
        block = store.take(store.band_rows, top * (gh + 1) + h) & store.take(store.band_cols, left * (gw + 1) + w)
        new = h * w - store.count(live & block)
        ok = (new > 0) & (new <= cap)
        live |= block * ok
        live_counts += new * ok
        sizes.append(new[ok])
        failed = (failed + 1) * ~ok
        going = (live_counts < target) & (failed < policy.attempts)
        keep = store.nonzero(going)
        if keep.shape[0] < rows.shape[0]:
            stop = store.nonzero(~going)
            done[:, rows[stop]] = store.take(live, stop)
            counts[rows[stop]] = live_counts[stop]
            rows, live, live_counts, failed = rows[keep], store.take(live, keep), live_counts[keep], failed[keep]
    masks = store.masks(done)
    if policy.exact:
        _top_up(masks, counts, target, uniforms, xp)
    return masks, (xp.concatenate(sizes) if sizes else xp.zeros(0, dtype=xp.int64, device=done.device))


def _top_up(masks: Any, counts: Any, target: int, uniforms: UniformSource, xp: Any) -> None:
    """BEiT v2's exact count: mask uniformly chosen free patches of every short mask, in place."""
    short = xp.arange(masks.shape[0], device=counts.device)[counts < target]
    if not short.shape[0]:
        return
    flat = masks[short].reshape(short.shape[0], -1)
    keys = uniforms(short, flat.shape[1])
    keys[flat] = 2.0  # masked patches sort last
    rank = keys.argsort(1).argsort(1)
    masks[short] = (flat | (rank < (target - counts[short])[:, None])).reshape(-1, *masks.shape[1:])


def generate_masks(policy: MaskPolicy, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` masks (n, gh, gw) bool, a pure function of ``rng``'s state."""
    return _blockwise(policy, n, lambda rows, count: rng.random((rows.shape[0], count)), _Bits(policy.grid))[0]


def generate_masks_torch(
    policy: MaskPolicy,
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` masks (n, gh, gw) bool on ``device``, which defaults to the generator's device
    (or the CPU); the generator must live on that device."""
    if device is None:
        device = generator.device if generator is not None else "cpu"
    device = torch.device(device)

    def uniforms(rows: torch.Tensor, count: int) -> torch.Tensor:
        return torch.rand((rows.shape[0], count), generator=generator, device=device, dtype=torch.float64)

    return _blockwise(policy, n, uniforms, _Cells(policy.grid, device))[0]


class _RowStreams:
    """Uniforms for each row from its own generator, read strictly in order and drawn ahead
    ``width`` at a time, so what a row reads never depends on the other rows."""

    def __init__(self, generators: list[np.random.Generator], width: int) -> None:
        self.generators = generators
        self.buffer = np.stack([g.random(width) for g in generators]) if generators else np.zeros((0, width))
        self.cursor = np.zeros(len(generators), np.int64)

    def __call__(self, rows: np.ndarray, count: int) -> np.ndarray:
        width = self.buffer.shape[1]
        for r in rows[self.cursor[rows] + count > width].tolist():  # move the unread rest up, draw more
            self.buffer[r] = np.concatenate([self.buffer[r, self.cursor[r]:], self.generators[r].random(self.cursor[r])])
            self.cursor[r] = 0
        start = self.cursor[rows]
        self.cursor[rows] = start + count
        return self.buffer[rows[:, None], start[:, None] + np.arange(count)]


def masks_for(policy: MaskPolicy, seed: int, keys: Sequence[str], view_indices: Sequence[int]) -> np.ndarray:
    """One mask per (key, view) pair, (n, gh, gw) bool. Row ``i`` is a pure function of
    ``(seed, keys[i], view_indices[i])``: it reads only ``rng_for(seed, "mask", key, view)``,
    in order, whatever else the batch holds."""
    if len(keys) != len(view_indices):
        raise ValueError(f"got {len(keys)} keys but {len(view_indices)} view indices")
    generators = [rng_for(seed, "mask", str(key), int(view)) for key, view in zip(keys, view_indices)]
    streams = _RowStreams(generators, max(32 * policy.attempts, policy.grid[0] * policy.grid[1]))
    return _blockwise(policy, len(generators), streams, _Bits(policy.grid))[0]


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """Bool masks (..., gh, gw) → uint8 (..., ceil(gh*gw/8)): ``numpy.packbits`` (big-endian
    bit order) of the row-major grid."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim < 2:
        raise ValueError(f"masks need a (..., gh, gw) shape, got {masks.shape}")
    return np.packbits(masks.reshape(*masks.shape[:-2], -1), axis=-1)


def unpack_masks(packed: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`pack_masks`: uint8 (..., ceil(gh*gw/8)) → bool (..., gh, gw)."""
    packed = np.asarray(packed, dtype=np.uint8)
    gh, gw = grid
    if packed.ndim < 1 or packed.shape[-1] != (gh * gw + 7) // 8:
        raise ValueError(f"packed masks of shape {packed.shape} do not fit a {gh}x{gw} grid ({(gh * gw + 7) // 8} bytes per mask)")
    bits = np.unpackbits(packed, axis=-1, count=gh * gw)
    return bits.reshape(*packed.shape[:-1], gh, gw).astype(bool)


def reference_mask(policy: MaskPolicy, rng: random.Random, block_sizes: list[int] | None = None) -> np.ndarray:
    """One mask (gh, gw) bool from the plain per-mask loop, written the way BEiT's
    ``MaskingGenerator`` is; the patches each kept block added go to ``block_sizes``."""
    gh, gw = policy.grid
    log_lo, log_hi = (math.log(a) for a in policy.aspect_range)
    mask = np.zeros((gh, gw), dtype=bool)
    count = 0
    while count < policy.num_masking:
        cap = min(policy.num_masking - count, policy.block_cap)
        added = 0
        for _ in range(policy.attempts):
            area = rng.uniform(policy.min_patches, cap)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if h < gh and w < gw:
                top = rng.randint(0, gh - h)
                left = rng.randint(0, gw - w)
                if 0 < h * w - mask[top:top + h, left:left + w].sum() <= cap:
                    for y in range(top, top + h):
                        for x in range(left, left + w):
                            if not mask[y, x]:
                                mask[y, x] = True
                                added += 1
                    break
        if added == 0:
            break
        count += added
        if block_sizes is not None:
            block_sizes.append(added)
    if policy.exact and count < policy.num_masking:
        free = np.flatnonzero(~mask).tolist()
        mask.flat[rng.sample(free, policy.num_masking - count)] = True
    return mask
