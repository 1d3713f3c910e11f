"""check_image: keep, repair or quarantine, in both check depths."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from beit_data.corpus import photo_variant
from beit_data.errors import Quarantined
from beit_data.imagecheck import check_image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kw)
    return out.getvalue()


PHOTO = photo_variant(0, 3)
JPEG = encode(PHOTO, "JPEG", quality=90)


@pytest.mark.parametrize("decode", [True, False])
def test_rgb_jpeg_is_kept_byte_for_byte(decode):
    checked = check_image(JPEG, decode=decode)
    assert checked.data == JPEG and checked.repaired is None and (checked.width, checked.height) == PHOTO.size


@pytest.mark.parametrize("mode,fmt", [("CMYK", "JPEG"), ("L", "JPEG"), ("RGB", "PNG"), ("P", "PNG"), ("RGBA", "PNG"),
                                      ("I;16", "PNG"), ("RGB", "WEBP")])
def test_other_images_become_rgb_jpeg(mode, fmt):
    source = PHOTO.convert(mode) if mode != "I;16" else PHOTO.convert("L").convert("I;16")
    checked = check_image(encode(source, fmt))
    assert checked.repaired.startswith(fmt) and checked.repaired.endswith("-> RGB JPEG q95")
    with Image.open(io.BytesIO(checked.data)) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", PHOTO.size)


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (JPEG[: len(JPEG) * 2 // 3], "truncated or corrupt JPEG"),
    (b"<html><body>Not Found</body></html>", "not an image"),
    (encode(Image.new("1", (10_000, 9_000)), "PNG"), "over pixel limit"),
])
def test_broken_inputs_are_quarantined_with_a_reason(data, reason, decode):
    with pytest.raises(Quarantined, match=reason):
        check_image(data, decode=decode)


def test_pixel_limit_is_a_parameter():
    bomb = encode(Image.new("1", (4_000, 3_000)), "PNG")
    with pytest.raises(Quarantined, match="over pixel limit"):
        check_image(bomb, max_pixels=10_000_000)
    assert check_image(bomb, max_pixels=12_000_000).width == 4_000
