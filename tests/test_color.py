"""Batched colour jitter: the device path and the CPU path give render_views' bytes (Pillow's ImageEnhance)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from beit_data.color import GREY_FORMULAS, _grey, _jitter_with_torch, grey_formula, jitter_batch
from beit_data.views import View, to_tensor_uint8
from tests.view_fixtures import EXTREME_FACTORS, blend_jitter, random_picture

ORDERS = list(itertools.permutations(range(3)))


def test_grey_formula_is_this_pils_on_every_colour() -> None:
    formula = grey_formula()
    assert formula is not None, "neither known RGB -> L formula matches this PIL build"
    colours = np.stack(np.meshgrid(*[np.arange(256, dtype=np.uint8)] * 3, indexing="ij"), -1).reshape(4096, 4096, 3)
    grey = np.asarray(Image.fromarray(colours).convert("L"))
    assert np.array_equal(_grey(colours, *formula), grey)
    # the two known formulas differ, so finding the right one matters
    pillow, simd = (_grey(colours[:256], *f) for f in GREY_FORMULAS.values())
    assert not np.array_equal(pillow, simd)


def batch_case(rng: np.random.Generator, size: int, count: int, extreme: bool) -> tuple[list[Image.Image], list[View]]:
    pictures = [random_picture(rng, size, size) for _ in range(count)]
    views = []
    for i in range(count):
        if extreme:
            factors = [float(rng.choice(EXTREME_FACTORS)) if rng.random() < 0.5 else float(np.float32(rng.uniform(0, 3)))
                       for _ in range(3)]
        else:  # the view distribution: float32 factors in [0.6, 1.4]
            factors = rng.uniform(0.6, 1.4, 3).astype(np.float32).tolist()
        views.append(View((0, 0, 2, 2), False, tuple(factors), ORDERS[int(rng.integers(6))]))
    return pictures, views


def as_batch(pictures: list[Image.Image], views: list[View]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.stack([to_tensor_uint8(p) for p in pictures]),
            torch.tensor([v.jitter for v in views], dtype=torch.float32),
            torch.tensor([v.jitter_order for v in views], dtype=torch.uint8))


def expected(pictures: list[Image.Image], views: list[View]) -> torch.Tensor:
    return torch.stack([to_tensor_uint8(blend_jitter([p], v, 0)[0]) for p, v in zip(pictures, views)])


@pytest.mark.parametrize("extreme", [False, True])
def test_torch_path_equals_plain_blends(extreme: bool) -> None:
    """The path a CUDA batch takes, run here with CPU tensors (the same IEEE float32 steps): every picture of a
    batch with mixed orders and factors equals one Image.blend per step."""
    rng = np.random.default_rng(3 if extreme else 4)
    for size in (1, 7, 40):
        pictures, views = batch_case(rng, size, 24, extreme)
        got = _jitter_with_torch(*as_batch(pictures, views), *grey_formula())
        assert got.dtype == torch.uint8 and torch.equal(got, expected(pictures, views))


def test_torch_path_with_the_other_grey_formula_differs() -> None:
    """The grey formula matters: the wrong one changes some saturated bytes (so the test above can fail)."""
    rng = np.random.default_rng(5)
    pictures, views = batch_case(rng, 64, 8, extreme=False)
    views = [View(v.box, v.flip, (1.0, 1.0, 1.3), (2, 0, 1)) for v in views]
    other = next(f for f in GREY_FORMULAS.values() if f != grey_formula())
    assert not torch.equal(_jitter_with_torch(*as_batch(pictures, views), *other), expected(pictures, views))


def test_jitter_batch_on_the_cpu_equals_plain_blends() -> None:
    rng = np.random.default_rng(6)
    pictures, views = batch_case(rng, 33, 6, extreme=False)
    assert torch.equal(jitter_batch(*as_batch(pictures, views)), expected(pictures, views))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_jitter_batch_on_cuda_equals_plain_blends() -> None:
    rng = np.random.default_rng(7)
    for extreme in (False, True):
        pictures, views = batch_case(rng, 48, 32, extreme)
        pixels, factors, order = as_batch(pictures, views)
        got = jitter_batch(pixels.cuda(), factors.cuda(), order.cuda())
        assert got.is_cuda and torch.equal(got.cpu(), expected(pictures, views))


def test_jitter_batch_rejects_bad_shapes() -> None:
    pixels = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        jitter_batch(pixels.float(), torch.ones(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(B, 3\) factors"):
        jitter_batch(pixels, torch.ones(3, 3), torch.zeros(2, 3))
