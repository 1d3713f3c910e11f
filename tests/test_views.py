"""Views: seeded sampling against torchvision's algorithm, exact rendering, replay, edge cases."""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from beit_data.views import (
    MIN_CROP,
    View,
    ViewPolicy,
    draft_scale,
    open_image,
    render,
    render_each,
    render_views,
    sample_view,
    to_tensor_uint8,
)
from tests.view_fixtures import EXTREME_FACTORS, blend_jitter, photo, random_picture

MODES = {"bicubic": InterpolationMode.BICUBIC, "lanczos": InterpolationMode.LANCZOS, "bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST}
ADJUST = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
PAIR = [(224, "bicubic"), (112, "lanczos")]


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=92) if fmt == "JPEG" else image.save(buffer, fmt)
    return buffer.getvalue()


def torchvision_view(image: Image.Image, view: View, size: int, interpolation: str) -> Image.Image:
    """What BEiT's torchvision calls give for the same box, flip and jitter."""
    top, left, h, w = view.box
    out = TF.resized_crop(image, top, left, h, w, [size, size], MODES[interpolation])
    out = TF.hflip(out) if view.flip else out
    for op in view.jitter_order:
        out = ADJUST[op](out, view.jitter[op])
    return out


def test_policy_dict_and_validation() -> None:
    policy = ViewPolicy()
    assert (policy.scale, policy.ratio, policy.flip_p, policy.jitter, policy.attempts) == ((0.08, 1.0), (3 / 4, 4 / 3), 0.5, 0.4, 10)
    assert ViewPolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    custom = ViewPolicy(scale=[0.2, 1], ratio=[0.5, 2], flip_p=0, jitter=0, attempts=3)
    assert ViewPolicy.from_dict(custom.to_dict()) == custom and custom.scale == (0.2, 1.0)
    with pytest.raises(ValueError, match="unknown"):
        ViewPolicy.from_dict({"scale": [0.1, 1], "hue": 0.1})
    for bad in ({"scale": (0.5, 0.1)}, {"scale": (0, 1)}, {"ratio": (2, 1)}, {"flip_p": 1.5}, {"jitter": -0.1}, {"attempts": -1}):
        with pytest.raises(ValueError):
            ViewPolicy(**bad)


def test_sample_view_is_pure_and_keyed() -> None:
    view = sample_view(7, "n01440764_10026", 1, 500, 375)
    assert view == sample_view(7, "n01440764_10026", 1, 500, 375)
    assert view == sample_view(np.int64(7), np.str_("n01440764_10026"), np.int64(1), 500, 375)
    others = {sample_view(*args) for args in [(8, "n01440764_10026", 1, 500, 375), (7, "n01440764_10027", 1, 500, 375), (7, "n01440764_10026", 0, 500, 375)]}
    others.add(sample_view(7, "n01440764_10026", 1, 500, 375, epoch=1))
    assert view not in others and len(others) == 4
    plain = sample_view(7, "n01440764_10026", 1, 500, 375, ViewPolicy(jitter=0))
    assert (plain.box, plain.flip, plain.jitter, plain.jitter_order) == (view.box, view.flip, (1.0, 1.0, 1.0), (0, 1, 2))


def test_boxes_stay_inside_for_tiny_and_extreme_images() -> None:
    for width, height in [(2, 2), (3, 5), (5, 3), (2, 4000), (4000, 2), (7, 7), (500, 375), (375, 500), (10000, 50)]:
        for i in range(100):
            view = sample_view(0, f"k{i}", 0, width, height)
            top, left, h, w = view.box
            assert MIN_CROP <= h and MIN_CROP <= w and top + h <= height and left + w <= width, (width, height, view)
    # an extreme aspect ratio falls back to the centre crop at the nearest allowed aspect
    assert sample_view(0, "wide", 0, 4000, 2).box == (0, 1998, 2, 3)
    assert sample_view(0, "tall", 0, 2, 4000).box == (1998, 0, 3, 2)


def box_stats(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Mean area fraction, mean log aspect, share of centre crops and mean top / height."""
    top, left, h, w = boxes.T.astype(float)
    centre = (top == (height - h) // 2) & (left == (width - w) // 2)
    return np.array([(h * w).mean() / (width * height), np.log(w / h).mean(), centre.mean(), top.mean() / height])


def test_crop_distribution_matches_torchvision() -> None:
    torch.manual_seed(0)
    for width, height in [(500, 375), (4000, 300)]:
        image = Image.new("RGB", (width, height))
        ours = np.array([sample_view(1, f"k{i}", 0, width, height).box for i in range(3000)])
        theirs = np.array([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(3000)])
        assert np.all(np.abs(box_stats(ours, width, height) - box_stats(theirs, width, height)) < 0.03)


def test_fallback_equals_torchvision() -> None:
    never = ViewPolicy(scale=(2.0, 2.0))  # twice the image area never fits: every draw falls back
    for width, height in [(500, 375), (375, 500), (640, 480), (4000, 300), (300, 4000), (333, 334), (2, 9)]:
        image = Image.new("RGB", (width, height))
        expected = RandomResizedCrop.get_params(image, [2.0, 2.0], [3 / 4, 4 / 3])
        assert sample_view(0, "k", 0, width, height, never).box == expected


def test_flip_and_jitter_distribution() -> None:
    views = [sample_view(3, f"k{i}", 0, 640, 480) for i in range(3000)]
    factors = np.array([v.jitter for v in views])
    assert 0.47 < np.mean([v.flip for v in views]) < 0.53
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert np.all(np.abs(factors.mean(0) - 1.0) < 0.02)
    assert np.array_equal(factors.astype(np.float32).astype(float), factors)  # float32-exact for sidecars
    orders = {v.jitter_order for v in views}
    assert len(orders) == 6 and all(sorted(o) == [0, 1, 2] for o in orders)
    assert not any(v.flip for v in (sample_view(3, f"k{i}", 0, 640, 480, ViewPolicy(flip_p=0)) for i in range(50)))


@pytest.mark.parametrize("interpolation", sorted(MODES))
def test_render_equals_torchvision_resized_crop(interpolation: str) -> None:
    image = photo(451, 300)
    for i in range(12):
        view = sample_view(0, f"k{i}", 0, 451, 300)
        plain = View(view.box, view.flip)
        assert np.array_equal(np.array(render(image, plain, 224, interpolation)), np.array(torchvision_view(image, plain, 224, interpolation)))
        # one size with jitter on is torchvision's adjust_* in the view's order
        assert np.array_equal(np.array(render(image, view, 112, interpolation)), np.array(torchvision_view(image, view, 112, interpolation)))


def test_render_views_shares_one_decode_and_one_contrast_grey() -> None:
    image = photo(640, 480, seed=1)
    png = encode(image, "PNG")
    for i in range(8):
        view = sample_view(0, f"k{i}", 0, 640, 480)
        pixels, tokens = render_views(png, view, PAIR)
        assert pixels.size == (224, 224) and tokens.size == (112, 112) and pixels.mode == tokens.mode == "RGB"
        assert np.array_equal(np.array(pixels), np.array(render(image, view, 224, "bicubic")))
        plain = View(view.box, view.flip)
        assert np.array_equal(np.array(render_views(image, plain, PAIR)[1]), np.array(render(image, plain, 112, "lanczos")))
    # contrast towards the grey of the largest picture, whatever order the sizes come in
    view = View((10, 20, 300, 400), False, (1.0, 0.5, 1.0))
    small, large = render_views(image, view, [(112, "lanczos"), (224, "bicubic")])
    grey = int(np.asarray(render(image, View(view.box), 224).convert("L"), float).mean() + 0.5)
    undone = Image.blend(Image.new("RGB", (112, 112), (grey,) * 3), render(image, View(view.box), 112, "lanczos"), 0.5)
    assert np.array_equal(np.array(small), np.array(undone))
    assert np.array_equal(np.array(large), np.array(render(image, view, 224)))


def test_jpeg_small_crop_decodes_fully_and_equals_torchvision() -> None:
    data = encode(photo(800, 600, seed=2), "JPEG")
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    view = View((100, 150, 300, 400), True)
    assert draft_scale(open_image(data), view, PAIR) == 1  # 300 < 2 * 224: full decode
    for picture, (size, interpolation) in zip(render_views(data, view, PAIR), PAIR):
        assert np.array_equal(np.array(picture), np.array(torchvision_view(decoded, view, size, interpolation)))
    # the draft decision follows the largest size asked for: 112 alone may use a 1/2 decode
    assert draft_scale(open_image(data), view, PAIR[1:]) == 2


def test_jpeg_large_crop_uses_draft_mode() -> None:
    data = encode(photo(2000, 1600, seed=3), "JPEG")
    view = View((50, 100, 1500, 1800), True, (1.1, 0.9, 1.2), (2, 1, 0))
    assert draft_scale(open_image(data), view, PAIR) == 4
    assert draft_scale(open_image(data), view, PAIR[1:]) == 8
    assert draft_scale(photo(2000, 1600), view, PAIR) == 1  # not a JPEG
    drafted = render_views(data, view, PAIR)
    full = render_views(Image.open(io.BytesIO(data)).convert("RGB"), view, PAIR)
    for a, b in zip(drafted, full):
        assert np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() < 2.0
    lazy = open_image(data)
    assert np.array_equal(np.array(render_views(lazy, view, PAIR)[0]), np.array(drafted[0]))
    with pytest.raises(ValueError, match="draft"):
        render_views(lazy, view, PAIR)  # used up by the draft decode
    loaded = open_image(data)
    loaded.load()
    with pytest.raises(ValueError, match="draft"):
        render_views(loaded, view, PAIR)


def replay(args: tuple[bytes, int, str, int]) -> tuple[View, list[str]]:
    data, seed, key, index = args
    image = open_image(data)
    view = sample_view(seed, key, index, *image.size)
    return view, [hashlib.sha256(p.tobytes()).hexdigest() for p in render_views(image, view, PAIR)]


def test_replay_in_other_processes_gives_identical_pixels() -> None:
    jpeg = encode(photo(1600, 1200, seed=4), "JPEG")
    png = encode(photo(300, 200, seed=5), "PNG")
    jobs = [(data, 11, f"key{i}", i % 3) for i in range(6) for data in (jpeg, png)]
    local = [replay(job) for job in jobs]
    assert any(draft_scale(open_image(jpeg), view, PAIR) > 1 for view, _ in local[::2])
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert list(pool.map(replay, jobs)) == local


def test_tiny_images_render() -> None:
    for width, height in [(2, 2), (3, 5), (2, 900), (900, 2)]:
        image = photo(width, height)
        view = sample_view(0, "tiny", 0, width, height)
        pixels, tokens = render_views(encode(image, "PNG"), view, PAIR)
        assert pixels.size == (224, 224) and tokens.size == (112, 112)
        assert np.array_equal(np.array(pixels), np.array(torchvision_view(image, view, 224, "bicubic")))


def test_bad_input_is_rejected_clearly() -> None:
    image = photo(64, 48)
    with pytest.raises(ValueError, match="at least 2x2"):
        View((0, 0, 10, 1))
    with pytest.raises(ValueError, match="at least 2x2"):
        sample_view(0, "thin", 0, 1, 500)
    with pytest.raises(ValueError, match="top, left"):
        View((-1, 0, 10, 10))
    with pytest.raises(ValueError, match="permutation"):
        View((0, 0, 10, 10), jitter_order=(0, 0, 1))
    with pytest.raises(ValueError, match="outside"):
        render(image, View((40, 0, 10, 10)), 32)
    with pytest.raises(ValueError, match="bicubic"):
        render(image, View((0, 0, 10, 10)), 32, "cubic")
    with pytest.raises(ValueError):
        render_views(image, View((0, 0, 10, 10)), [])
    with pytest.raises(ValueError, match="not a readable image"):
        open_image(b"definitely not an image")
    with pytest.raises(ValueError, match="decompression-bomb"):
        open_image(encode(image, "PNG"), max_pixels=1000)
    truncated = encode(photo(400, 300), "JPEG")[:2000]
    with pytest.raises(ValueError, match="cannot decode the JPEG"):
        render_views(truncated, View((0, 0, 300, 400)), PAIR)


def test_open_image_is_lazy_and_to_tensor() -> None:
    data = encode(photo(320, 240), "JPEG")
    image = open_image(data)
    assert image.size == (320, 240) and image.format == "JPEG" and image.tile  # header read, not decoded
    tensor = to_tensor_uint8(render(image, View((0, 0, 240, 320)), 32))
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 32, 32) and tensor.is_contiguous()
    grey = to_tensor_uint8(Image.new("L", (5, 4), 7))
    assert grey.shape == (3, 4, 5) and int(grey.min()) == int(grey.max()) == 7
    assert np.array_equal(tensor.permute(1, 2, 0).numpy(), np.asarray(render(open_image(data), View((0, 0, 240, 320)), 32)))


# --- colour jitter: the fast path is byte for byte the plain one (one Image.blend per step and picture) ---

def test_jitter_equals_plain_blends_in_every_order() -> None:
    from beit_data.views import color_jitter

    rng = np.random.default_rng(11)
    orders = list(itertools.permutations(range(3)))
    for trial in range(600):
        order = orders[trial % 6]
        if trial % 3 == 0:  # the view distribution (float32 factors in [0.6, 1.4])
            factors = rng.uniform(0.6, 1.4, 3).astype(np.float32).tolist()
        else:
            factors = [float(rng.choice(EXTREME_FACTORS)) if rng.random() < 0.5 else float(np.float32(rng.uniform(0, 3)))
                       for _ in range(3)]
        width, height = (int(v) for v in rng.integers(1, 70, 2))
        pictures = [random_picture(rng, width, height)]
        if rng.random() < 0.5:  # a second size, as render_views makes for [(224, ...), (112, ...)]
            pictures.append(random_picture(rng, max(1, width // 2), max(1, height // 2 + 1)))
        view = View((0, 0, 2, 2), False, tuple(factors), order)
        reference = int(rng.integers(len(pictures)))
        got = color_jitter(pictures, view.jitter, view.jitter_order, reference)
        expected = blend_jitter(pictures, view, reference)
        for g, e in zip(got, expected):
            assert g.mode == "RGB" and g.size == e.size
            assert np.array_equal(np.asarray(g), np.asarray(e)), (view, reference, [p.size for p in pictures])


def test_render_views_jitter_equals_plain_blends() -> None:
    image = photo(640, 480, seed=6)
    jpeg = encode(photo(800, 600, seed=7), "JPEG")
    for i in range(60):
        view = sample_view(5, f"k{i}", 0, 640, 480)
        plain = render_views(image, View(view.box, view.flip), PAIR)
        for got, expected in zip(render_views(image, view, PAIR), blend_jitter(plain, view, 0)):
            assert np.array_equal(np.asarray(got), np.asarray(expected))
        view = sample_view(5, f"j{i}", 0, 800, 600)
        plain = render_views(jpeg, View(view.box, view.flip), PAIR)
        for got, expected in zip(render_views(jpeg, view, PAIR), blend_jitter(plain, view, 0)):
            assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_jitter_arithmetic_on_every_grey_and_value() -> None:
    """The float32 arithmetic that stands in for Image.blend in saturation (and a brightness after it), on all
    65536 (grey, value) byte pairs, for many factors; the tables come from Image.blend itself."""
    from beit_data.views import _WITNESS_FACTORS, _blend_float32, _blend_float32_is_pillows, _blend_table

    assert _blend_float32_is_pillows()  # so the numpy path is the one in use (and tested) here
    # the witnesses tell one rounding (a fused multiply-add) from two, so the self-check would catch such a build
    grey, value = np.meshgrid(np.arange(256.0), np.arange(256.0), indexing="ij")
    for factor in _WITNESS_FACTORS:
        once = np.clip((grey + np.float64(np.float32(factor)) * (value - grey)).astype(np.float32), 0, 255)
        twice = value.astype(np.float32)
        _blend_float32(twice, grey.astype(np.float32), factor)
        assert not np.array_equal(once.astype(np.uint8), twice.astype(np.uint8)), factor

    grey, value = (a.astype(np.uint8) for a in (grey, value))
    grey_image, value_image = Image.fromarray(grey), Image.fromarray(value)
    black = Image.new("L", value_image.size, 0)
    rng = np.random.default_rng(12)
    factors = (EXTREME_FACTORS[:-1] + rng.uniform(0.6, 1.4, 400).astype(np.float32).tolist()
               + rng.uniform(0, 4, 200).astype(np.float32).tolist() + np.linspace(0.59, 1.41, 300).tolist()
               + [float(np.nextafter(np.float32(f), np.float32(d))) for f in (0.6, 1.0, 1.4) for d in (0, 2)])
    out = np.empty(value.shape, np.uint8)
    for factor in factors:
        for base, degenerate in ((grey, grey_image), (None, black)):
            x = value.astype(np.float32)
            _blend_float32(x, None if base is None else base.astype(np.float32), factor)
            np.copyto(out, x, casting="unsafe")
            assert np.array_equal(out, np.asarray(Image.blend(degenerate, value_image, factor))), (factor, base is None)
        table = np.frombuffer(_blend_table(int(rng.integers(256)), factor), np.uint8)
        assert table.shape == (256,)


def test_jitter_tables_and_saturation_match_image_blend() -> None:
    from beit_data.views import _apply_table, _blend_table, _saturate

    rng = np.random.default_rng(13)
    for trial in range(120):
        picture = random_picture(rng, int(rng.integers(1, 90)), int(rng.integers(1, 90)))
        factor = float(rng.choice(EXTREME_FACTORS)) if trial % 2 else float(np.float32(rng.uniform(0, 2)))
        grey = int(rng.integers(256))
        expected = Image.blend(Image.new("RGB", picture.size, (grey,) * 3), picture, factor)
        assert np.array_equal(np.asarray(_apply_table(picture, _blend_table(grey, factor))), np.asarray(expected))
        saturated = Image.blend(picture.convert("L").convert("RGB"), picture, factor)
        assert np.array_equal(np.asarray(_saturate(picture, factor)), np.asarray(saturated))
        brightness = float(np.float32(rng.uniform(0, 2)))
        both = Image.blend(Image.new("RGB", picture.size, 0), saturated, brightness)
        assert np.array_equal(np.asarray(_saturate(picture, factor, brightness)), np.asarray(both))


def test_to_tensor_uint8_layout_and_modes() -> None:
    rng = np.random.default_rng(14)
    for width, height in [(1, 1), (3, 5), (31, 17), (224, 224)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        tensor = to_tensor_uint8(Image.fromarray(pixels))
        assert tensor.shape == (3, height, width) and tensor.is_contiguous() and tensor.dtype == torch.uint8
        assert np.array_equal(tensor.numpy(), pixels.transpose(2, 0, 1))
        tensor[0, 0, 0] = 1  # writable, and its own memory
    for mode in ("RGBA", "P", "I", "1", "CMYK"):
        image = Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).convert(mode)
        expected = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(to_tensor_uint8(image).numpy(), expected)
    assert to_tensor_uint8(Image.new("RGB", (0, 5))).shape == (3, 5, 0)


def test_render_each_decodes_once_per_draft_scale_with_the_same_pictures(monkeypatch) -> None:
    import beit_data.views as views_module

    jpeg = encode(photo(1200, 900, seed=12), "JPEG")
    png = encode(photo(300, 200, seed=13), "PNG")
    opened = []
    real_open = views_module.open_image
    monkeypatch.setattr(views_module, "open_image", lambda data, *a: opened.append(data) or real_open(data, *a))
    for data, (width, height) in ((jpeg, (1200, 900)), (png, (300, 200))):
        views = [sample_view(3, "many", k, width, height) for k in range(12)]
        opened.clear()
        together = render_each(data, views, PAIR)
        decodes = len(opened) - 1  # one header read, then one open per draft scale
        assert decodes == len({draft_scale(real_open(data), v, PAIR) for v in views}) < len(views)
        for view, pictures in zip(views, together):
            for got, want in zip(pictures, render_views(data, view, PAIR)):
                assert np.array_equal(np.asarray(got), np.asarray(want)), view
    assert render_each(png, [], PAIR) == []
    with pytest.raises(ValueError, match="outside"):
        render_each(png, [View((0, 0, 10, 10)), View((150, 0, 100, 10))], PAIR)
