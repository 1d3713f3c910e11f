"""Resize BEiT position tables when the patch grid changes (224 → 384).

Relative position bias tables are resampled the way BEiT's fine-tuning did it
(microsoft/unilm ``beit/run_class_finetuning.py``): the source offsets are laid
on a geometric progression that stretches the outermost offset to the target's,
so short-range offsets keep near-unit spacing, and a bicubic interpolating
spline is evaluated at the target's integer offsets. BEiT used
``scipy.interpolate.interp2d(kind="cubic")``, removed in SciPy 1.14; on a
rectangular grid that was FITPACK's ``regrid`` with ``kx = ky = 3, s = 0``,
which is exactly what :class:`scipy.interpolate.RectBivariateSpline` runs.
Absolute position embeddings are resized with bicubic interpolation.
"""
from __future__ import annotations

import re

import numpy as np
import torch
from scipy.interpolate import RectBivariateSpline

from ..errors import BeitDataError

#: The three extra rows after the grid offsets: cls→token, token→cls, cls→cls.
NUM_EXTRA = 3

_LAYER_TABLE = "layers.{}.relative_position_bias.relative_position_bias_table"
_SHARED_TABLE = "shared_position_bias.relative_position_bias_table"


def _growth_ratio(n: int, reach: float) -> float:
    """``q`` with ``1 + q + … + q^(n-1) = reach``.

    Solved by the bisection BEiT ran (bracket [1.01, 1.5], stop at width 1e-6,
    take the last midpoint) so 224→384 offsets equal those behind its
    published 384 checkpoints; a wider bracket only when the root lies outside
    (shrinking, or growing by less than ~1 %).
    """
    def total(q: float) -> float:
        return sum(q ** i for i in range(n))

    lo, hi = 1.01, 1.5
    if not total(lo) <= reach <= total(hi):
        lo, hi = 0.0, float(reach)
    while hi - lo > 1e-6:
        q = (lo + hi) / 2.0
        if total(q) > reach:
            hi = q
        else:
            lo = q
    return q


def geometric_offsets(src_len: int, dst_len: int) -> np.ndarray:
    """Source offset coordinates for one axis of a ``src_len``-long table.

    ``src_len`` and ``dst_len`` are the table lengths ``2 * window - 1``. The
    gaps between consecutive offsets grow as ``1, q, q², …`` with ``q`` chosen
    so the outermost offset lands on ``dst_len // 2``; the coordinates are
    symmetric around 0.
    """
    n, reach = src_len // 2, dst_len // 2
    if n == reach:
        return np.arange(-n, n + 1, dtype=np.float64)
    if n == 0:
        raise BeitDataError("cannot stretch a 1-offset table")
    right = np.cumsum(_growth_ratio(n, reach) ** np.arange(n))
    return np.concatenate([-right[::-1], [0.0], right])


def resize_relative_position_table(table: torch.Tensor, src_window: tuple[int, int],
                                   dst_window: tuple[int, int]) -> torch.Tensor:
    """Resample a ``((2h-1)(2w-1) + 3, heads)`` bias table from ``src_window`` to ``dst_window``.

    Rows are the (dy, dx) offsets in row-major order followed by the three
    cls rows, which are kept unchanged. Equal windows return ``table`` itself.
    """
    if tuple(src_window) == tuple(dst_window):
        return table
    sh, sw = (2 * s - 1 for s in src_window)
    dh, dw = (2 * d - 1 for d in dst_window)
    if table.shape[0] != sh * sw + NUM_EXTRA:
        raise BeitDataError(f"bias table has {table.shape[0]} rows, expected {sh * sw + NUM_EXTRA} "
                         f"for a {src_window[0]}x{src_window[1]} window")
    ys, xs = geometric_offsets(sh, dh), geometric_offsets(sw, dw)
    ty = np.arange(-(dh // 2), dh // 2 + 1, dtype=np.float64)
    tx = np.arange(-(dw // 2), dw // 2 + 1, dtype=np.float64)
    grid = table[:-NUM_EXTRA].detach().double().cpu().numpy().reshape(sh, sw, -1)
    heads = [RectBivariateSpline(ys, xs, grid[:, :, h], kx=3, ky=3, s=0)(ty, tx)
             for h in range(grid.shape[2])]
    resized = torch.from_numpy(np.stack(heads, axis=-1).reshape(dh * dw, -1))
    return torch.cat([resized.to(table), table[-NUM_EXTRA:]], dim=0)


def resize_position_embeddings(pos: torch.Tensor, dst_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize absolute position embeddings ``(1, 1 + h*w, dim)``; the cls row stays."""
    n = pos.shape[1] - 1
    side = int(round(n ** 0.5))
    if side * side != n:
        raise BeitDataError(f"position embeddings of {n} patches are not a square grid")
    if (side, side) == tuple(dst_grid):
        return pos
    grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=tuple(dst_grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2).to(pos)], dim=1)


def adapt_backbone_state(state: dict[str, torch.Tensor], *, src_window: tuple[int, int],
                         dst_window: tuple[int, int], num_layers: int,
                         per_layer_bias: bool) -> dict[str, torch.Tensor]:
    """Rewrite a ``BeitModel`` state dict (transformers 5.x names) for a new patch grid.

    With ``per_layer_bias`` a shared table (``shared_position_bias``) is copied
    into every layer's ``relative_position_bias``, as BEiT does when it turns a
    pretrained encoder into a classifier. Every bias table is then resampled
    to ``dst_window`` and absolute position embeddings, if any, resized.
    """
    out = dict(state)
    if per_layer_bias and _SHARED_TABLE in out:
        shared = out.pop(_SHARED_TABLE)
        for i in range(num_layers):
            out[_LAYER_TABLE.format(i)] = shared.clone()
    for key in [k for k in out if k.endswith("relative_position_bias_table")]:
        out[key] = resize_relative_position_table(out[key], src_window, dst_window)
    for key in [k for k in out if re.fullmatch(r"(.*\.)?embeddings\.position_embeddings", k)]:
        out[key] = resize_position_embeddings(out[key], dst_window)
    return out
