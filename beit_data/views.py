"""Augmented views for BEiT: seeded sampling, exact replay, and one renderer shared by all callers.

A :class:`View` records everything random about one augmented picture: the crop box in
source pixels, the horizontal flip, and the colour-jitter factors and their order.
:func:`sample_view` draws it from ``rng_for(seed, "view", key, view_index, epoch)``, with
the numbers from BEiT's ``DataAugmentationForBEiT``. The crop follows torchvision's
``RandomResizedCrop.get_params``: scale (0.08, 1), log-uniform ratio (3/4, 4/3), 10
attempts, then a centre-crop fallback. The flip has p = 0.5, and the jitter is
``ColorJitter(0.4, 0.4, 0.4)``, applied in random order. :func:`render_views` turns
(image, view) into pictures at several sizes from one decode. The tokenize job (112
lanczos tokenizer input) and the loader (224 bicubic pixels) both call it, so pixels and
tokens come from the same code.

Where this differs from BEiT on purpose, and why:

* BEiT jitters and flips the whole image, then crops. Here the crop comes first, then the
  resize, the flip and the jitter, applied to each small picture. Decoding and jittering a
  whole photo costs far more than the pictures need. Brightness and saturation act on
  each pixel alone, so they commute with crop, resize and flip up to uint8 rounding.
  Contrast blends towards the mean grey of the crop instead of the whole image.
* The box is in source pixels and the flip comes after it. BEiT draws its box on the
  flipped image; a mirrored box has the same distribution, so the views do too.
* Crops narrower or shorter than 2 pixels are never drawn: such an attempt counts as
  failed, and images below 2×2 are rejected. This only changes the distribution for
  images of under about 40 pixels (default policy).
* Jitter factors are rounded to float32, as torchvision's are, so sidecars store them
  exactly.
* JPEG draft mode (a DCT-domain decode at 1/2, 1/4 or 1/8 scale) is used when the crop is
  at least twice the largest requested size on both sides. The decision depends only on
  (image size, view, sizes), so a replay gets the same pixels.
* A JPEG given as bytes is decoded only down to the MCU row below the crop
  (:mod:`beit_data.jpeg`); those rows are the same as in a full decode.

Why pixels and tokens stay consistent: every size of one view is resized from the same
decoded crop, flipped alike, and jittered with the same factors in the same order.
Contrast uses one reference grey, taken from the largest picture and shared by all
sizes, so every picture is the same per-pixel colour map applied to the same region.
Each picture depends on the whole ``sizes`` list (through the draft scale and the grey),
so every caller that must match passes the same list, e.g.
``[(224, "bicubic"), (112, "lanczos")]``. One size alone gives exactly torchvision's
``resized_crop``, then ``hflip``, then the ``adjust_*`` functions in the view's order,
on the decoded image.
"""
from __future__ import annotations

import functools
import io
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .jpeg import read_frame, rows_for, shortened
from .policy import PolicyDict
from .rng import rng_for

__all__ = [
    "MIN_CROP",
    "MAX_PIXELS",
    "ViewPolicy",
    "View",
    "sample_view",
    "open_image",
    "draft_scale",
    "render",
    "render_views",
    "render_each",
    "color_jitter",
    "to_tensor_uint8",
]

MIN_CROP = 2
"""The smallest crop side, in source pixels."""

MAX_PIXELS = 89_478_485
"""Decompression-bomb limit on width × height (Pillow's default warning threshold)."""

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
_DRAFT_SCALES = (8, 4, 2)


@dataclass(frozen=True)
class ViewPolicy(PolicyDict):
    """BEiT's augmentation parameters; ``jitter=0`` switches colour jitter off."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: float = 0.4
    attempts: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        object.__setattr__(self, "ratio", tuple(float(r) for r in self.ratio))
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"view scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"view ratio must be (low, high) with 0 < low <= high, got {self.ratio}")
        if not 0 <= self.flip_p <= 1:
            raise ValueError(f"flip_p must lie in [0, 1], got {self.flip_p}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {self.jitter}")
        if self.attempts < 0:
            raise ValueError(f"attempts must be >= 0, got {self.attempts}")



@dataclass(frozen=True)
class View:
    """One augmented view. ``box`` is (top, left, height, width) in source pixels, the order
    of torchvision's ``resized_crop``. ``flip`` mirrors the picture left to right.
    ``jitter`` holds the brightness, contrast and saturation factors (1.0 = unchanged),
    and ``jitter_order`` the order they are applied in (0 = brightness, 1 = contrast,
    2 = saturation)."""

    box: tuple[int, int, int, int]
    flip: bool = False
    jitter: tuple[float, float, float] = (1.0, 1.0, 1.0)
    jitter_order: tuple[int, int, int] = (0, 1, 2)

    def __post_init__(self) -> None:
        # accept numpy / Arrow scalars, as read back from a sidecar
        object.__setattr__(self, "box", tuple(int(v) for v in self.box))
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(self, "jitter", tuple(float(v) for v in self.jitter))
        object.__setattr__(self, "jitter_order", tuple(int(v) for v in self.jitter_order))
        if len(self.box) != 4 or min(self.box[:2]) < 0:
            raise ValueError(f"view box must be (top, left, height, width) with top, left >= 0, got {self.box}")
        if min(self.box[2:]) < MIN_CROP:
            raise ValueError(f"view box {self.box} is {self.box[2]}x{self.box[3]} pixels; crops must be at least {MIN_CROP}x{MIN_CROP}")
        if len(self.jitter) != 3 or min(self.jitter) < 0:
            raise ValueError(f"view jitter must be three factors >= 0, got {self.jitter}")
        if sorted(self.jitter_order) != [0, 1, 2]:
            raise ValueError(f"view jitter_order must be a permutation of (0, 1, 2), got {self.jitter_order}")


def _sample_box(rng: np.random.Generator, width: int, height: int, policy: ViewPolicy) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``, drawing from ``rng``."""
    area = width * height
    log_lo, log_hi = math.log(policy.ratio[0]), math.log(policy.ratio[1])
    for _ in range(policy.attempts):
        target = area * float(rng.uniform(*policy.scale))
        aspect = math.exp(float(rng.uniform(log_lo, log_hi)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if MIN_CROP <= w <= width and MIN_CROP <= h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # centre crop at the nearest allowed aspect
    if width / height < policy.ratio[0]:
        w, h = width, round(width / policy.ratio[0])
    elif width / height > policy.ratio[1]:
        w, h = round(height * policy.ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_view(
    seed: int,
    key: str,
    view_index: int,
    width: int,
    height: int,
    policy: ViewPolicy = ViewPolicy(),
    epoch: int = 0,
) -> View:
    """The view ``view_index`` of image ``key`` (``width`` × ``height`` pixels): a pure
    function of its arguments, drawn from ``rng_for(seed, "view", key, view_index, epoch)``.
    The crop is drawn first, then the flip, then the jitter, so switching jitter off
    leaves crops and flips unchanged."""
    if width < MIN_CROP or height < MIN_CROP:
        raise ValueError(f"image {key!r} is {width}x{height} pixels; a view needs at least {MIN_CROP}x{MIN_CROP}")
    rng = rng_for(seed, "view", str(key), int(view_index), int(epoch))
    box = _sample_box(rng, width, height, policy)
    flip = bool(rng.random() < policy.flip_p)
    if policy.jitter == 0:
        return View(box, flip)
    factors = rng.uniform(max(0.0, 1 - policy.jitter), 1 + policy.jitter, size=3).astype(np.float32)
    return View(box, flip, tuple(factors.tolist()), tuple(rng.permutation(3).tolist()))


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open encoded image bytes lazily: only the header is read, and nothing is decoded
    yet. Raises ValueError for bytes that are not an image and for images larger than
    ``max_pixels`` (decompression-bomb protection)."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ValueError(f"image refused as a decompression bomb: {err}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"not a readable image ({len(data)} bytes): {err}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(
            f"image is {width}x{height} = {width * height} pixels, over the decompression-bomb limit of {max_pixels}; "
            "pass a larger max_pixels if the image is genuine"
        )
    return image


def draft_scale(image: Image.Image, view: View, sizes: Sequence[tuple[int, str]]) -> int:
    """The JPEG draft scale :func:`render_views` decodes ``view`` at: the largest of 8, 4 and
    2 that leaves the crop at least the largest size on both sides, else 1 (a full decode,
    and always for images that are not JPEGs). Depends only on the format, ``view`` and
    ``sizes``."""
    if image.format != "JPEG":
        return 1
    side, largest = min(view.box[2:]), max(int(size) for size, _ in sizes)
    return next((s for s in _DRAFT_SCALES if side >= s * largest), 1)


def _draft(image: Image.Image, scale: int) -> None:
    """Ask a not yet decoded JPEG for its DCT-domain decode at 1/``scale``."""
    if not getattr(image, "tile", None):
        raise ValueError("this JPEG is already decoded, so draft mode cannot apply; pass the bytes or a fresh open_image() result")
    image.draft("RGB", (image.width // scale, image.height // scale))


def _crop(image: Image.Image, box: tuple[int, int, int, int], scale: int) -> tuple[Image.Image, tuple[float, float, float, float] | None]:
    """The RGB region of ``image`` (decoded at 1/``scale``) holding ``box``, and the box within it (None: all of it)."""
    top, left, h, w = box
    if scale == 1:
        hull, inner = (left, top, left + w, top + h), None
    else:
        # the decode at 1/scale maps source pixel x to x / scale; crop the whole pixels around the box
        x0, y0, x1, y1 = left / scale, top / scale, (left + w) / scale, (top + h) / scale
        hull = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
        inner = (x0 - hull[0], y0 - hull[1], x1 - hull[0], y1 - hull[1])
    try:
        region = image.crop(hull)
    except OSError as err:
        raise ValueError(f"cannot decode the {image.format or 'image'} ({image.width}x{image.height}): {err}") from None
    return (region if region.mode == "RGB" else region.convert("RGB")), inner


def _grey_mean(picture: Image.Image) -> int:
    """Rounded mean of the L-mode picture, as Pillow's ``ImageEnhance.Contrast`` takes it (there from the
    histogram; the sum of the grey bytes is the same integer)."""
    grey = picture.convert("L")
    count = grey.width * grey.height
    total = int(np.frombuffer(grey.tobytes(), np.uint8).sum(dtype=np.uint32 if count < 1 << 24 else np.uint64))
    return int(total / count + 0.5)


# Colour jitter, fast and bit-exact. torchvision's adjust_brightness / adjust_contrast / adjust_saturation are
# Pillow's ImageEnhance, i.e. Image.blend(degenerate, picture, factor), which computes every byte as
# float32 ``d + factor * (p - d)`` (one rounding after the product, one after the sum), then clips to
# [0, 255] and truncates. Brightness (d = 0) and contrast (d = one grey for the whole picture) are maps of
# the byte value alone: their 256-entry tables come from Image.blend itself run on a ramp of all 256 values,
# so they are exact by construction, and consecutive tables compose into one lookup. Saturation blends each
# channel with the pixel's own grey (Pillow's convert("L"), kept as is), so it has no table; it is the same
# float32 arithmetic done with numpy on the colour planes, which rounds the same way (IEEE single, no fused
# multiply-add, as Pillow's scalar blend loop): checked against this Pillow's Image.blend once per process
# (else saturation uses Image.blend itself), and on all 65536 (grey, value) pairs for many factors in
# tests/test_views.py. A brightness right after a saturation is done in the same arithmetic.
_RAMP = Image.frombytes("L", (256, 1), bytes(range(256)))  # Image.blend works byte by byte, whatever the mode


@functools.lru_cache(maxsize=256)
def _constant(grey: int) -> Image.Image:
    return Image.new("L", _RAMP.size, grey)


def _blend_table(grey: int, factor: float) -> bytes:
    """What ``Image.blend(constant grey, picture, factor)`` makes of each byte value 0..255."""
    return Image.blend(_constant(grey), _RAMP, factor).tobytes()


def _apply_table(picture: Image.Image, table: bytes) -> Image.Image:
    """``picture.point(table * 3)`` without ``Image.point``'s per-call rounding of the 768 entries."""
    return picture._new(picture.im.point(table * 3, None))


def _blend_float32(x: np.ndarray, base: np.ndarray | None, factor: float) -> None:
    """``x`` (float32 bytes) := what Image.blend(base, x, factor) stores, before the truncation to uint8
    (``base`` None: black)."""
    if base is not None:
        x -= base  # exact: small integers
    x *= np.float32(factor)  # float32 product, rounded once
    if base is not None:
        x += base  # float32 sum, rounded once (0 + y is y)
    if not 0.0 <= factor <= 1.0:  # Image.blend clips only here (between 0 and 1 the bytes stay in range)
        np.clip(x, 0.0, 255.0, out=x)


def _in_float32_range(factor: float) -> bool:
    return abs(factor) <= 1e30  # near or past float32's range, or NaN: left to Pillow


# float32 factors for which rounding the product and the sum separately, as Pillow's scalar loop does, and
# rounding once (a fused multiply-add, or x87 extended precision) give different bytes on some (grey, value)
_WITNESS_FACTORS = (0.6220473051071167, 1.040000319480896, 1.7111111879348755)


@functools.lru_cache(maxsize=1)
def _blend_float32_is_pillows() -> bool:
    """Whether :func:`_blend_float32` gives this Pillow's Image.blend bytes: checked once, on all 65536
    (grey, value) pairs, for factors where a differently compiled blend loop would show. If not, saturation
    falls back to Image.blend itself."""
    grey, value = (a.astype(np.uint8) for a in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    grey_image, value_image = Image.fromarray(grey), Image.fromarray(value)
    for factor in _WITNESS_FACTORS + (0.5, 1.3):
        x = value.astype(np.float32)
        _blend_float32(x, grey.astype(np.float32), factor)
        if not np.array_equal(x.astype(np.uint8), np.asarray(Image.blend(grey_image, value_image, factor))):
            return False
    return True


_scratch = threading.local()


def _scratch_planes(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This thread's float32 grey and work plane and uint8 result planes for ``count`` pixels, kept from call to
    call (fresh ones would be fresh memory each time: page faults and cache misses)."""
    cache = getattr(_scratch, "planes", None)
    if cache is None:
        cache = _scratch.planes = {}
    arrays = cache.get(count)
    if arrays is None:
        if len(cache) >= 4:
            cache.clear()
        arrays = cache[count] = (np.empty(count, np.float32), np.empty(count, np.float32), np.empty((3, count), np.uint8))
    return arrays


def _saturate(picture: Image.Image, factor: float, brightness: float = 1.0) -> Image.Image:
    """``Image.blend(picture.convert("L").convert("RGB"), picture, factor)`` (``ImageEnhance.Color``), then
    ``Image.blend(black, that, brightness)`` unless ``brightness`` is 1: the same bytes."""
    if not (_in_float32_range(factor) and _in_float32_range(brightness) and _blend_float32_is_pillows()):
        picture = Image.blend(picture.convert("L").convert("RGB"), picture, factor)
        return picture if brightness == 1.0 else Image.blend(Image.new("RGB", picture.size, 0), picture, brightness)
    width, height = picture.size
    grey, x, planes = _scratch_planes(width * height)
    np.copyto(grey, np.frombuffer(picture.convert("L").tobytes(), np.uint8))
    for plane, band in zip(planes, "RGB"):  # a plane at a time: the float32 work stays in cache
        np.copyto(x, np.frombuffer(picture.tobytes("raw", band), np.uint8))
        _blend_float32(x, grey, factor)
        if brightness != 1.0:
            np.floor(x, out=x)  # the saturated bytes (all >= 0, so truncation is the floor)
            _blend_float32(x, None, brightness)
        np.copyto(plane, x, casting="unsafe")  # truncation, as Image.blend's cast
    # Image.merge copies the planes into a new picture, so they can be used again
    return Image.merge("RGB", [Image.frombuffer("L", (width, height), plane, "raw", "L", 0, 1) for plane in planes])


def color_jitter(pictures: list[Image.Image], factors: Sequence[float], order: Sequence[int],
                 reference: int = 0) -> list[Image.Image]:
    """Brightness / contrast / saturation ``factors`` applied in ``order`` (as in :class:`View`), as torchvision's
    ``adjust_*`` (Pillow's ``ImageEnhance``) do, with one contrast grey from ``pictures[reference]``.

    Byte for byte what one ``Image.blend(degenerate, picture, factor)`` per step and picture gives (the plain
    form, kept in tests/test_views.py), faster: runs of brightness and contrast become one table lookup (the
    grey a contrast needs is taken from the reference picture with the pending table applied), and a
    brightness right after a saturation is done in the saturation's arithmetic."""
    steps = [(int(op), float(factors[op])) for op in order if factors[op] != 1.0]
    table: bytes | None = None  # brightness / contrast still to apply to every picture
    while steps:
        op, factor = steps.pop(0)
        if op == 0:
            step = _blend_table(0, factor)
        elif op == 1:
            shown = pictures[reference] if table is None else _apply_table(pictures[reference], table)
            step = _blend_table(_grey_mean(shown), factor)
        else:
            if table is not None:
                pictures, table = [_apply_table(p, table) for p in pictures], None
            brightness = steps.pop(0)[1] if steps and steps[0][0] == 0 else 1.0
            pictures = [_saturate(p, factor, brightness) for p in pictures]
            continue
        table = step if table is None else table.translate(step)
    return pictures if table is None else [_apply_table(p, table) for p in pictures]


def _open_down_to(data: bytes, bottom: int) -> Image.Image:
    """:func:`open_image` of ``data``; a JPEG is shortened to the rows a crop ending at row ``bottom`` needs
    (:mod:`beit_data.jpeg`), so the decoder stops there. The pixels are the same."""
    frame = read_frame(data)
    if frame is not None and bottom <= frame.height and frame.width * frame.height <= MAX_PIXELS:
        rows = rows_for(frame, bottom)
        if rows < frame.height:
            data = shortened(data, frame, rows)
    return open_image(data)


def _checked_sizes(sizes: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    sizes = [(int(size), str(interpolation).lower()) for size, interpolation in sizes]
    if not sizes:
        raise ValueError("render_views needs at least one (size, interpolation)")
    for size, interpolation in sizes:
        if size < 1 or interpolation not in _RESAMPLE:
            raise ValueError(f"bad picture size {(size, interpolation)}: need a positive size and one of {sorted(_RESAMPLE)}")
    return sizes


def _check_box(image: Image.Image, view: View) -> None:
    top, left, h, w = view.box
    if top + h > image.height or left + w > image.width:
        raise ValueError(f"view box {view.box} (top, left, height, width) lies outside the {image.width}x{image.height} image")


def _pictures(image: Image.Image, view: View, scale: int, sizes: list[tuple[int, str]]) -> list[Image.Image]:
    """Crop ``view`` from ``image`` (decoded at 1/``scale``), then resize to every size, flip and jitter."""
    region, inner = _crop(image, view.box, scale)
    pictures = [region.resize((size, size), _RESAMPLE[interpolation], box=inner) for size, interpolation in sizes]
    if view.flip:
        pictures = [p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in pictures]
    return color_jitter(pictures, view.jitter, view.jitter_order, max(range(len(sizes)), key=lambda i: sizes[i][0]))


def render_views(data_or_image: bytes | Image.Image, view: View, sizes: Sequence[tuple[int, str]]) -> list[Image.Image]:
    """Render ``view`` at every ``(size, interpolation)`` in ``sizes`` (RGB, size × size) from
    one decode: crop, resize, flip, jitter. Bytes are opened with :func:`open_image`; a JPEG
    given as bytes is decoded only down to the MCU row below the crop. A JPEG, given as
    bytes or as a not yet decoded image, is decoded in draft mode when the crop is at least
    twice the largest size; such an image is used up by the call."""
    sizes = _checked_sizes(sizes)
    if isinstance(data_or_image, (bytes, bytearray, memoryview)):
        image = _open_down_to(bytes(data_or_image), view.box[0] + view.box[2])
    else:
        image = data_or_image
    decoder = getattr(image, "decoderconfig", ())
    if image.format == "JPEG" and decoder and decoder[0] > 1:
        raise ValueError("this image was already decoded in JPEG draft mode by an earlier call; open it again")
    _check_box(image, view)
    scale = draft_scale(image, view, sizes)
    if scale > 1:
        _draft(image, scale)
    return _pictures(image, view, scale, sizes)


def render_each(data: bytes, views: Sequence[View], sizes: Sequence[tuple[int, str]]) -> list[list[Image.Image]]:
    """``[render_views(data, view, sizes) for view in views]``, the same pictures, with the image decoded once
    per JPEG draft scale among the views (down to the lowest crop bottom among them) instead of once per view."""
    if len(views) < 2:
        return [render_views(data, view, sizes) for view in views]
    sizes, data = _checked_sizes(sizes), bytes(data)
    header = open_image(data)
    groups: dict[int, list[int]] = {}
    for i, view in enumerate(views):
        _check_box(header, view)
        groups.setdefault(draft_scale(header, view, sizes), []).append(i)
    out: list[list[Image.Image]] = [[] for _ in views]
    for scale, members in groups.items():
        image = _open_down_to(data, max(views[i].box[0] + views[i].box[2] for i in members))
        if scale > 1:
            _draft(image, scale)
        for i in members:
            out[i] = _pictures(image, views[i], scale, sizes)
    return out


def render(image: Image.Image, view: View, size: int, interpolation: str = "bicubic") -> Image.Image:
    """One picture of ``view``: ``render_views(image, view, [(size, interpolation)])[0]``."""
    return render_views(image, view, [(size, interpolation)])[0]


def to_tensor_uint8(image: Image.Image) -> torch.Tensor:
    """A picture as a (3, H, W) uint8 tensor."""
    picture = image if image.mode == "RGB" else image.convert("RGB")
    width, height = picture.size
    tensor = torch.empty((3, height, width), dtype=torch.uint8)
    if width and height:
        # plane by plane (Pillow packs one band alone): no (H, W, 3) -> (3, H, W) transpose to pay for
        for plane, band in zip(tensor.numpy().reshape(3, -1), "RGB"):
            plane[:] = np.frombuffer(picture.tobytes("raw", band), np.uint8)
    return tensor
