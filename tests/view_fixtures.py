"""Pictures and the plain colour-jitter reference shared by the view and colour tests."""
from __future__ import annotations

import numpy as np
from PIL import Image

from beit_data.views import View


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour field with noise, so crops, filters and jitter all show."""
    y, x = np.mgrid[:height, :width]
    noise = np.random.default_rng(seed).normal(0, 18, (height, width, 3))
    base = np.stack([x / width * 200 + 30, y / height * 180 + 40, (x + y) / (width + height) * 150 + 60], -1)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def blend_jitter(pictures: list[Image.Image], view: View, reference: int) -> list[Image.Image]:
    """Brightness / contrast / saturation as ImageEnhance does them, one Image.blend each: the reference."""
    for op in view.jitter_order:
        factor = view.jitter[op]
        if factor == 1.0:
            continue
        if op == 0:
            degenerate = [Image.new("RGB", p.size, 0) for p in pictures]
        elif op == 1:
            histogram = pictures[reference].convert("L").histogram()
            grey = int(sum(i * c for i, c in enumerate(histogram)) / sum(histogram) + 0.5)
            degenerate = [Image.new("RGB", p.size, (grey, grey, grey)) for p in pictures]
        else:
            degenerate = [p.convert("L").convert("RGB") for p in pictures]
        pictures = [Image.blend(d, p, factor) for d, p in zip(degenerate, pictures)]
    return pictures


EXTREME_FACTORS = [0.0, 1e-30, 1e-7, 0.001, 0.5, 0.6, 0.99999994, 1.0, 1.0000001, 1.4, 2.0, 3.5, 10.0, 255.0, 1e6,
                   1e30, 1e31]


def random_picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Noise, a smooth photo or a saturated, clipped mix, so grey, clipping and rounding all show."""
    kind = rng.integers(3)
    if kind == 0:
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if kind == 1:
        return photo(width, height, int(rng.integers(1000)))
    pixels = rng.choice(np.array([0, 1, 2, 127, 128, 253, 254, 255], np.uint8), (height, width, 3))
    return Image.fromarray(pixels)
