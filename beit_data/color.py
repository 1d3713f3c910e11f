"""Colour jitter on batches of uint8 pictures, on any device, byte for byte as :func:`beit_data.views.render_views`.

Colour jitter is the last step of a render, so a loader can hand over the pictures before it together with
each view's factors and order, and :func:`jitter_batch` finishes them where the batch is going: on an
accelerator it is a few elementwise kernels per batch instead of ≈400 µs of CPU time per picture.

On a CUDA (or any non-CPU) device the batch is jittered with torch, step by step as Pillow's ``ImageEnhance``
computes ``Image.blend(degenerate, picture, factor)``: float32 ``d + factor * (p - d)``, each operation
rounded on its own (separate kernels, never a fused multiply-add), clipped to [0, 255] and truncated to uint8
after every step. The degenerate picture is black (brightness), the rounded mean grey of the picture
(contrast) or the pixel's own grey (saturation), with the grey computed by the same integer formula as this
PIL build's ``convert("L")`` (Pillow and pillow-simd differ; :func:`grey_formula` finds out which applies).
On the CPU, and for a PIL build whose grey formula is not known, each picture goes through
:func:`beit_data.views.color_jitter`, the code ``render_views`` itself uses.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from PIL import Image

from .views import color_jitter, to_tensor_uint8

__all__ = ["GREY_FORMULAS", "grey_formula", "jitter_batch"]

GREY_FORMULAS = {
    "pillow": ((19595, 38470, 7471), 16),      # Pillow's L = (R*19595 + G*38470 + B*7471 + 2^15) >> 16
    "pillow-simd": ((9798, 19235, 3735), 15),  # pillow-simd's 15-bit weights, rounded the same way
}


def _grey(pixels: np.ndarray, weights: tuple[int, int, int], shift: int) -> np.ndarray:
    r, g, b = (pixels[..., c].astype(np.int64) for c in range(3))
    return (r * weights[0] + g * weights[1] + b * weights[2] + (1 << (shift - 1))) >> shift


@functools.lru_cache(maxsize=1)
def grey_formula() -> tuple[tuple[int, int, int], int] | None:
    """The integer RGB → L formula of this PIL's ``convert("L")``, as (weights, shift), or None when it is
    none of :data:`GREY_FORMULAS`. Checked on 65,536 seeded random colours (about 85 of which tell the
    two known formulas apart) plus a grid; ``tests/test_color.py`` checks all 16.7 million."""
    rng = np.random.default_rng(20240607)
    grid = np.stack(np.meshgrid(*[np.arange(0, 256, 17)] * 3, indexing="ij"), -1).reshape(-1, 3)
    colours = np.concatenate([rng.integers(0, 256, (65536, 3)), grid]).astype(np.uint8)
    grey = np.asarray(Image.fromarray(colours[None]).convert("L"))[0].astype(np.int64)
    for weights, shift in GREY_FORMULAS.values():
        if np.array_equal(_grey(colours, weights, shift), grey):
            return weights, shift
    return None


def _jitter_on_cpu(pixels: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(pixels)
    for i, (picture, f, o) in enumerate(zip(pixels.numpy(), factors.tolist(), order.tolist())):
        height, width = picture.shape[1:]
        planes = [Image.frombuffer("L", (width, height), np.ascontiguousarray(p), "raw", "L", 0, 1) for p in picture]
        out[i] = to_tensor_uint8(color_jitter([Image.merge("RGB", planes)], f, o)[0])
    return out


def _jitter_with_torch(pixels: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                       weights: tuple[int, int, int], shift: int) -> torch.Tensor:
    factors = factors.to(torch.float32)
    order = order.to(torch.int64)
    count = pixels.shape[2] * pixels.shape[3]
    for step in range(3):
        op = order[:, step]
        factor = factors.gather(1, op[:, None]).view(-1, 1, 1, 1)
        grey = pixels[:, 0:1].to(torch.int32).mul_(weights[0])
        for channel in (1, 2):
            grey.add_(pixels[:, channel:channel + 1].to(torch.int32).mul_(weights[channel]))
        grey = grey.add_(1 << (shift - 1)).bitwise_right_shift_(shift)
        total = grey.sum(dim=(1, 2, 3), dtype=torch.int64)
        mean = torch.div(2 * total + count, 2 * count, rounding_mode="floor")  # int(total / count + 0.5)
        op = op.view(-1, 1, 1, 1)
        degenerate = torch.where(op == 2, grey, torch.where(op == 1, mean.view(-1, 1, 1, 1), 0)).to(torch.float32)
        x = pixels.to(torch.float32)
        x.sub_(degenerate)
        x.mul_(factor)
        x.add_(degenerate)
        pixels = x.clamp_(0, 255).to(torch.uint8)
    return pixels


def jitter_batch(pixels: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 ``pixels`` with each picture's colour jitter applied: ``factors`` (B, 3) brightness,
    contrast and saturation, in ``order`` (B, 3), the values a :class:`~beit_data.views.View` holds. The bytes
    equal what ``render_views`` makes of the same view, on every device."""
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"jitter_batch needs (B, 3, H, W) uint8 pictures, got {tuple(pixels.shape)} {pixels.dtype}")
    if factors.shape != (pixels.shape[0], 3) or order.shape != (pixels.shape[0], 3):
        raise ValueError(f"jitter_batch needs (B, 3) factors and order for {pixels.shape[0]} pictures, got "
                         f"{tuple(factors.shape)} and {tuple(order.shape)}")
    if pixels.device.type == "cpu":
        return _jitter_on_cpu(pixels, factors, order)
    formula = grey_formula()
    if formula is None:
        warnings.warn("this PIL build's grey conversion is not a known formula: colour jitter runs on the CPU",
                      RuntimeWarning, stacklevel=2)
        return _jitter_on_cpu(pixels.cpu(), factors.cpu(), order.cpu()).to(pixels.device)
    return _jitter_with_torch(pixels, factors.to(pixels.device), order.to(pixels.device), *formula)
