"""Prove an input is an image and make it an RGB JPEG: keep, repair or quarantine.

RGB JPEGs are kept byte for byte. With ``decode=True`` (the default) they are
decoded at 1/8 scale: libjpeg's DCT scaling still walks the whole entropy-coded
stream, so truncation and fatal corruption are caught at a fraction of a full
decode. ``decode=False`` is the fast structural check: the headers are parsed
and the scan must end in an EOI marker (0xFFD9 cannot occur inside entropy-coded
data), which catches truncation at ~1/15 of the cost but not corrupt scan data. Anything else that decodes (CMYK or
grayscale JPEG, PNG named ``.JPEG``, palette, ...) is converted to RGB and
re-encoded at quality 95, and the repair is recorded. Empty, truncated,
undecodable or oversized (decompression bomb) inputs raise :class:`Quarantined`.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile

from .errors import Quarantined

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
REPAIR_QUALITY = 95
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera's multi-picture JPEG; its bytes decode as a plain JPEG


@dataclass(frozen=True)
class CheckedImage:
    """The bytes to store and what was learned about them."""

    data: bytes
    width: int
    height: int
    repaired: str | None


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True) -> CheckedImage:
    """Return the JPEG bytes to store for ``data`` or raise :class:`Quarantined` with the reason."""
    if not data:
        raise Quarantined("empty file (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow itself refuses 2x this before reading pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise Quarantined(f"over pixel limit (decompression bomb): {e}") from None
    except Image.UnidentifiedImageError:
        raise Quarantined(f"not an image (format not recognised; starts with {data[:16]!r})") from None
    except Exception as e:  # PIL raises several types for broken headers
        raise Quarantined(f"not an image: {type(e).__name__}: {e}") from None
    width, height = im.size
    if width * height > max_pixels:
        raise Quarantined(f"over pixel limit: {width}x{height} = {width * height} pixels > {max_pixels} "
                          "(raise --max-pixels if the image is genuine)")
    if width < 1 or height < 1:
        raise Quarantined(f"empty image: {width}x{height}")
    fmt, mode = im.format, im.mode
    if fmt in JPEG_FORMATS and mode == "RGB":
        if decode:
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            _decode(im, "JPEG")
        elif data.rfind(b"\xff\xd9", data.find(b"\xff\xda")) < 0:
            raise Quarantined("truncated or corrupt JPEG: no end-of-image marker after the scan")
        return CheckedImage(data, width, height, None)
    _decode(im, fmt)
    try:
        rgb = _to_rgb(im)
    except Exception as e:
        raise Quarantined(f"cannot convert {fmt} mode {mode} to RGB: {e}") from None
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=REPAIR_QUALITY)
    return CheckedImage(out.getvalue(), width, height, f"{fmt} {mode} -> RGB JPEG q{REPAIR_QUALITY}")


def _decode(im: Image.Image, fmt: str | None) -> None:
    try:
        im.load()
    except Exception as e:
        raise Quarantined(f"truncated or corrupt {fmt or 'image'}: {e}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = im.point(lambda v: v / 256).convert("L")
    elif im.mode == "F":
        im = im.convert("L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return im.convert("RGB")
