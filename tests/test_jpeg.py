"""Shortened JPEG frames: the rows kept decode as in a full decode, and renders from bytes are unchanged."""
from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from beit_data.jpeg import Frame, read_frame, rows_for, shortened
from beit_data.views import View, render_views, sample_view
from tests.view_fixtures import photo

PAIR = [(224, "bicubic"), (112, "lanczos")]


def jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def decoded(data: bytes, scale: int = 1) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    if scale > 1:
        image.draft("RGB", (image.width // scale, image.height // scale))
    return np.asarray(image.convert("RGB"))


VARIANTS = [dict(subsampling=s, progressive=p, **({"restart_marker_blocks": 3} if r else {}))
            for s, p, r in itertools.product((0, 1, 2), (False, True), (False, True))]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_kept_rows_decode_as_in_a_full_decode(options) -> None:
    data = jpeg(photo(203, 157, seed=len(str(options))), **options)
    frame = read_frame(data)
    assert frame is not None and (frame.width, frame.height) == (203, 157)
    assert frame.mcu_rows == (16 if options["subsampling"] == 2 else 8)
    for scale in (1, 2, 4):
        full = decoded(data, scale)
        for bottom in range(1, 157, 9):
            rows = rows_for(frame, bottom)
            assert bottom <= rows <= 157 and rows >= min(157, bottom + frame.mcu_rows)
            part = decoded(shortened(data, frame, rows), scale)
            need = -(-bottom // scale)
            assert part.shape[0] == -(-rows // scale)
            assert np.array_equal(part[:need], full[:need]), (scale, bottom, rows)


def test_render_from_bytes_equals_render_of_the_full_decode() -> None:
    data = jpeg(photo(500, 375, seed=9), subsampling=2)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    for i in range(40):
        view = sample_view(1, f"k{i}", 0, 500, 375)
        for got, want in zip(render_views(data, view, PAIR), render_views(full, view, PAIR)):
            assert np.array_equal(np.asarray(got), np.asarray(want)), view
    bottom_row = View((300, 0, 75, 500))  # a crop down to the last row: nothing to cut
    assert rows_for(read_frame(data), 375) == 375
    assert np.array_equal(np.asarray(render_views(data, bottom_row, PAIR)[0]),
                          np.asarray(render_views(full, bottom_row, PAIR)[0]))


def test_read_frame_of_other_input_is_none() -> None:
    image = photo(40, 30)
    png = io.BytesIO()
    image.save(png, "PNG")
    data = jpeg(image)
    assert read_frame(png.getvalue()) is None
    assert read_frame(b"") is None and read_frame(b"\xff\xd8") is None
    sof = read_frame(data).offset
    assert read_frame(data[:sof + 6]) is None  # header cut inside the frame segment
    assert read_frame(data[:sof] + b"\xff\xc3" + data[sof + 2:]) is None  # lossless: left alone
    assert read_frame(data[:sof + 5] + b"\x00\x00" + data[sof + 7:]) is None  # height from a DNL marker
    for i in range(2, sof + 20):  # a damaged header gives None or a frame, never an exception
        damaged = data[:i] + bytes([data[i] ^ 0xA5]) + data[i + 1:]
        assert read_frame(damaged) is None or isinstance(read_frame(damaged), Frame)
    with pytest.raises(ValueError, match="cannot shorten"):
        shortened(data, Frame(sof, 40, 30, 8), 31)
