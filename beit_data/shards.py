"""Image shards: deterministic WebDataset tars written atomically.

Shards are POSIX ustar archives written directly (no tarfile round trips):
every header carries mtime 0, uid/gid 0, empty owner names and mode 0644, and
members come in a fixed order (``.jpg``, ``.cls``, ``.json``), so the same
samples give byte-identical shards on any machine.
"""
from __future__ import annotations

import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

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


def iter_samples(fileobj: BinaryIO, source: str = "shard") -> Iterable[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` for each sample of an image shard, in order (streamed)."""
    current: str | None = None
    parts: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if key != current:
                    if current is not None:
                        yield current, parts
                    current, parts = key, {}
                parts[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardReadError(f"image shard {source} is truncated or corrupt ({e}): "
                             "check it with 'beit-data verify' and rerun 'beit-data shard' to rewrite it") from None
    if current is not None:
        yield current, parts
