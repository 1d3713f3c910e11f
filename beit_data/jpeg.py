"""JPEG frame headers: read a JPEG's size and sampling, and shorten its frame so a decoder stops early.

A sequential or progressive JPEG decodes top to bottom. Rewriting the height in its frame header (two
bytes of the SOF segment) to fewer rows makes libjpeg decode only those rows; it then skips the rest of the
entropy-coded data up to the next marker. The rows kept come out byte for byte as in a full decode, also
in a DCT-scaled (draft) decode, provided one whole MCU row follows the last row needed: chroma upsampling
reads one row group below. ``tests/test_views.py`` checks this for 4:4:4, 4:2:2 and 4:2:0 sampling,
progressive files and restart markers. A crop of a random box needs only the rows down to its bottom
edge, on average about three quarters of the image.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["Frame", "read_frame", "rows_for", "shortened"]

# SOF0 baseline, SOF1 extended sequential, SOF2 progressive (Huffman coded): what libjpeg decodes row by row
_SHORTENABLE = frozenset((0xC0, 0xC1, 0xC2))
# every other frame type: lossless, differential, arithmetic coded; left alone
_OTHER_FRAMES = frozenset((0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD9)))  # TEM, RST0-7, SOI: markers without a length


@dataclass(frozen=True)
class Frame:
    """A JPEG frame header: where its SOF segment starts, the image size, and the MCU height in rows."""

    offset: int
    width: int
    height: int
    mcu_rows: int


def read_frame(data: bytes) -> Frame | None:
    """The frame header of a sequential or progressive Huffman-coded JPEG, else None (another format, another
    JPEG coding, a height left to a DNL marker, or a header that does not parse)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, end = 2, len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _STANDALONE:
            i += 2
        elif marker in _SHORTENABLE:
            return _parse_sof(data, i)
        elif marker in _OTHER_FRAMES or marker in (0xD9, 0xDA):  # EOI or SOS before any frame: not ours
            return None
        else:
            i += 2 + (data[i + 2] << 8 | data[i + 3])
    return None


def _parse_sof(data: bytes, i: int) -> Frame | None:
    if i + 10 > len(data):
        return None
    length, _, height, width, components = struct.unpack_from(">HBHHB", data, i + 2)
    if height == 0 or width == 0 or components == 0 or length != 8 + 3 * components or i + 2 + length > len(data):
        return None
    vertical = max(data[i + 11 + 3 * c] & 0x0F for c in range(components))
    return Frame(i, width, height, 8 * max(vertical, 1))


def rows_for(frame: Frame, bottom: int) -> int:
    """How many rows to decode so that rows ``[0, bottom)`` come out as in a full decode: ``bottom`` rounded up
    to whole MCU rows, plus one MCU row, at most the whole image."""
    mcu = frame.mcu_rows
    return min(frame.height, -(-bottom // mcu) * mcu + mcu)


def shortened(data: bytes, frame: Frame, rows: int) -> bytes:
    """``data`` with its frame header saying ``rows`` rows (1 to the frame's height); the same bytes otherwise."""
    if not 1 <= rows <= frame.height:
        raise ValueError(f"cannot shorten a {frame.height}-row JPEG frame to {rows} rows")
    at = frame.offset + 5
    return b"".join((data[:at], struct.pack(">H", rows), data[at + 2:]))
