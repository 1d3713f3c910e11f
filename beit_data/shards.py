"""Image shards: deterministic WebDataset tars written atomically.

Shards are POSIX ustar archives written directly (no tarfile round trips):
every header carries mtime 0, uid/gid 0, empty owner names and mode 0644, and
members come in a fixed order (``.jpg``, ``.cls``, ``.json``), so the same
samples give byte-identical shards on any machine.
"""
from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from .atomic import commit, dump_json, partial_path
from .errors import BeitDataError

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


class ShardReadError(BeitDataError):
    """An image shard that cannot be read to its end."""


@dataclass(frozen=True)
class Sample:
    """One image sample as stored in a shard."""

    key: str
    jpeg: bytes
    class_id: int
    meta: dict[str, Any]


@dataclass(frozen=True)
class WrittenShard:
    """What the manifest records for a committed shard."""

    count: int
    bytes: int
    sha256: str


def shard_name(split: str, index: int) -> str:
    """The file name of shard ``index`` of ``split``."""
    return f"{split}-{index:06d}.tar"


BLOCK = 512
RECORD = 20 * BLOCK  # tar's default blocking factor, as GNU tar and Python's tarfile write it


def _header(name: str, size: int) -> bytes:
    """A POSIX ustar header with fixed mode, owner and mtime (so output is reproducible)."""
    encoded = name.encode()
    if len(encoded) > 100:
        raise ValueError(f"tar member name {name!r} is longer than 100 bytes")
    fields = [encoded.ljust(100, b"\0"), b"0000644\0", b"0000000\0", b"0000000\0", b"%011o\0" % size,
              b"00000000000\0", b" " * 8, b"0", b"\0" * 100, b"ustar\x0000", b"\0" * 32, b"\0" * 32,
              b"0000000\0", b"0000000\0", b"\0" * 155, b"\0" * 12]
    header = bytearray(b"".join(fields))
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def write_shard(path: Path, samples: Iterable[Sample]) -> WrittenShard:
    """Write ``samples`` to ``path`` through a temporary file and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    sha, size, count = hashlib.sha256(), 0, 0
    with open(tmp, "wb") as f:
        def put(chunk: bytes) -> None:
            nonlocal size
            sha.update(chunk)
            f.write(chunk)
            size += len(chunk)

        for s in samples:
            if not KEY_PATTERN.match(s.key):
                raise ValueError(f"invalid sample key {s.key!r}: keys match [A-Za-z0-9_-]+")
            for ext, payload in (("jpg", s.jpeg), ("cls", str(s.class_id).encode()),
                                 ("json", dump_json(s.meta).encode())):
                put(_header(f"{s.key}.{ext}", len(payload)))
                put(payload + b"\0" * (-len(payload) % BLOCK))
            count += 1
        end = 2 * BLOCK
        put(b"\0" * (end + (-(size + end) % RECORD)))
    commit(tmp, path)
    return WrittenShard(count=count, bytes=size, sha256=sha.hexdigest())


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Reading: a direct ustar reader (a header, then the member's bytes) with tarfile's stream-mode ("r|") semantics,
# several times faster than tarfile on small members. Headers are checked as tarfile checks them (checksum,
# numeric fields); errors raise tarfile.ReadError with tarfile's messages, at the same places: a bad or short
# first header, and data or padding cut short, raise; a zero block, the end of the file, or a bad or short
# header after the first one end the archive. Members that need more than one header (GNU long names, pax
# headers, sparse files) hand the rest of the stream over to tarfile itself.
_ZERO_BLOCK = bytes(BLOCK)
_HANDOFF_TYPES = frozenset((tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.GNUTYPE_SPARSE,
                            tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE))
_FILE_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE))
_NUMERIC_FIELDS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))  # all but size, chksum
_DIRECTORY_HEADER = tarfile.TarInfo("_")
_DIRECTORY_HEADER.type = tarfile.DIRTYPE
_DIRECTORY_HEADER = _DIRECTORY_HEADER.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def _read_exact(read: Any, size: int) -> bytes:
    """``size`` bytes, or fewer only at the end of the stream (a raw stream may return short reads)."""
    data = read(size)
    if len(data) == size or not data:
        return data
    chunks = [data]
    size -= len(data)
    while size > 0 and (more := read(size)):
        chunks.append(more)
        size -= len(more)
    return b"".join(chunks)


class _Replay:
    """A read-only stream: ``head``, then the rest of ``fileobj``."""

    def __init__(self, head: bytes, fileobj: BinaryIO) -> None:
        self._head, self._read = head, fileobj.read

    def read(self, size: int | None = -1) -> bytes:
        if not self._head:
            return self._read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._read(), b""
        else:
            data, self._head = self._head[:size], self._head[size:]
        return data


def _tarfile_files(stream: _Replay) -> Iterator[tuple[str, Callable[[], bytes]]]:
    with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            if member.isfile():
                yield member.name, tar.extractfile(member).read  # type: ignore[union-attr]


def _tar_files(fileobj: BinaryIO) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """``(name, read)`` for each regular file of a tar stream, in order, as ``tarfile.open(mode="r|")`` gives
    them; ``read()`` returns the member's bytes, and must be called before the next member is asked for."""
    read = fileobj.read
    offset = 0  # of the header being read
    checked: set[bytes] = set()  # numeric fields already parsed (in practice the same in every header)
    size = 0

    def member() -> bytes:
        data = _read_exact(read, size)
        pad = -size % BLOCK
        if len(data) != size or (pad and len(_read_exact(read, pad)) != pad):
            raise tarfile.ReadError("unexpected end of data")
        return data

    while True:
        header = _read_exact(read, BLOCK)
        if len(header) != BLOCK:
            if offset == 0:
                raise tarfile.ReadError("truncated header" if header else "empty file")
            return
        if header == _ZERO_BLOCK:
            return
        kind = header[156:157]
        if kind not in _HANDOFF_TYPES:
            try:
                chksum = tarfile.nti(header[148:156])
                if chksum != 256 + sum(header) - sum(header[148:156]) and chksum not in tarfile.calc_chksums(header):
                    raise tarfile.InvalidHeaderError("bad checksum")
                fields = header[100:124] + header[136:148] + header[329:345]
                if fields not in checked:
                    for lo, hi in _NUMERIC_FIELDS:
                        tarfile.nti(header[lo:hi])
                    checked.add(fields)
                size = tarfile.nti(header[124:136])
            except tarfile.HeaderError as e:
                if offset == 0:
                    raise tarfile.ReadError(str(e)) from None
                return
        if kind in _HANDOFF_TYPES or size < 0:
            # tarfile reads the rest; after a directory entry of ours, unless this header is the first one,
            # so that it treats errors as it would have this far into the archive
            yield from _tarfile_files(_Replay(header if offset == 0 else _DIRECTORY_HEADER + header, fileobj))
            return
        name = tarfile.nts(header[0:100], tarfile.ENCODING, "surrogateescape")
        if kind in _FILE_TYPES and not (kind == tarfile.AREGTYPE and name.endswith("/")):
            if header[345]:  # ustar prefix
                name = tarfile.nts(header[345:500], tarfile.ENCODING, "surrogateescape") + "/" + name
            yield name, member
            offset += BLOCK + size + (-size % BLOCK)
        elif kind in tarfile.SUPPORTED_TYPES:  # links, directories, devices, fifos: no data follows
            offset += BLOCK
        else:  # an unknown type: tarfile skips its data
            skip = size + (-size % BLOCK)
            if skip and len(_read_exact(read, skip)) != skip:
                raise tarfile.ReadError("unexpected end of data")
            offset += BLOCK + skip


def iter_samples(fileobj: BinaryIO, source: str = "shard") -> Iterable[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` for each sample of an image shard, in order (streamed)."""
    current: str | None = None
    parts: dict[str, bytes] = {}
    try:
        for name, read in _tar_files(fileobj):
            key, _, ext = name.partition(".")
            if key != current:
                if current is not None:
                    yield current, parts
                current, parts = key, {}
            parts[ext] = read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardReadError(f"image shard {source} is truncated or corrupt ({e}): "
                             "check it with 'beit-data verify' and rerun 'beit-data shard' to rewrite it") from None
    if current is not None:
        yield current, parts
