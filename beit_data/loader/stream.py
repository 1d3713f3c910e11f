"""Small composable stages a DataLoader worker chains: read (tar + sidecar join), shuffle, decode, batch.

The tar stream and the token sidecar are joined by shard and position and checked key by key; a
sidecar that is missing, differs from its manifest hash, has the wrong row count or other keys stops
the stream with one clear error. A shard that cannot be read to the end (missing, truncated, corrupt)
or a sample that does not decode either raises (``on_error="raise"``) or, with ``on_error="skip"``,
is replaced by a repeat of a good sample of the same worker and flagged, so every rank still yields
its full batch count.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, cast

import numpy as np

from ..errors import BeitDataError
from ..shards import ShardReadError, iter_samples
from ..sidecars import SidecarRows, decode_sidecar
from .plan import Segment
from .storage import Storage

ON_ERROR = ("raise", "skip")
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)
RERUN_TOKENIZE = "rerun 'beit-data tokenize' with the same options to rewrite it"


@dataclass(frozen=True)
class ShardRef:
    """An image shard of the split and, for token streams, its sidecar's manifest entry."""

    name: str
    count: int
    sidecar: dict[str, Any] | None = None


@dataclass
class Record:
    """One sample on its way through a worker: the tar members, its sidecar row, or why it is missing."""

    key: str
    parts: dict[str, bytes]
    shard: str
    row: int
    sidecar: SidecarRows | None = None
    error: str | None = None


def load_sidecar(storage: Storage, shard: ShardRef, views: int, patches: int) -> SidecarRows:
    """The shard's sidecar, checked against its manifest entry (sha256, rows, views, grid)."""
    entry = cast(dict[str, Any], shard.sidecar)
    where = storage.where(entry["name"])
    try:
        data = storage.read_bytes(entry["name"])
    except FileNotFoundError:
        raise BeitDataError(f"token sidecar {where} (for {shard.name}) is missing: {RERUN_TOKENIZE}") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise BeitDataError(f"token sidecar {where}: sha256 differs from the token manifest (changed or corrupt "
                            f"file): {RERUN_TOKENIZE}")
    rows = decode_sidecar(data, where)
    if len(rows) != shard.count or rows.views != views or rows.tokens.shape[2] != patches:
        raise BeitDataError(f"token sidecar {where}: {len(rows)} rows x {rows.views} views x {rows.tokens.shape[2]} "
                            f"tokens, expected {shard.count} x {views} x {patches} for {shard.name}: {RERUN_TOKENIZE}")
    return rows


def read_segments(storage: Storage, shards: Sequence[ShardRef], segments: Iterable[Segment], on_error: str,
                  sidecar: Callable[[ShardRef], SidecarRows] | None = None) -> Iterator[Record]:
    """Records of ``segments`` in order; ``sidecar`` loads each shard's token rows when given."""
    for seg in segments:
        shard = shards[seg.shard]
        yield from read_shard(storage, shard, seg.start, seg.stop, on_error,
                              sidecar(shard) if sidecar is not None else None)


def read_shard(storage: Storage, shard: ShardRef, start: int, stop: int, on_error: str,
               rows: SidecarRows | None = None) -> Iterator[Record]:
    """Samples ``start:stop`` of one image shard, joined with its sidecar ``rows``."""
    where = storage.where(shard.name)
    read, failure = 0, None
    try:
        with storage.open(shard.name) as f:
            for key, parts in iter_samples(f, where):
                if rows is not None and rows.keys[read] != key:
                    car = storage.where(cast(dict, shard.sidecar)["name"])
                    raise BeitDataError(f"{where} sample {read} is {key!r} but its token sidecar {car} has "
                                        f"{rows.keys[read]!r} there: the sidecar belongs to another shard; "
                                        f"{RERUN_TOKENIZE}")
                if read >= start:
                    yield Record(key, parts, shard.name, read, rows)
                read += 1
                if read >= stop:
                    return
    except FileNotFoundError:
        failure = f"image shard {where} is missing: restore it or rerun 'beit-data shard' to rewrite it"
    except ShardReadError as e:
        failure = str(e)
    failure = failure or (f"image shard {where} ends after {read} samples, the manifest says {shard.count}: "
                          "check it with 'beit-data verify' and rerun 'beit-data shard' to rewrite it")
    if on_error == "raise":
        raise BeitDataError(failure)
    for i in range(max(read, start), stop):
        yield Record(rows.keys[i] if rows is not None else f"#{i}", {}, shard.name, i, rows, failure)


def shuffled(items: Iterable[Any], rng: np.random.Generator, size: int) -> Iterator[Any]:
    """A seeded shuffle buffer of ``size`` items (``size <= 1``: the order unchanged)."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            j = int(rng.integers(len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


def decoded(records: Iterable[Record], fn: Callable[[Record], dict[str, Any]],
            on_error: str) -> Iterator[tuple[dict[str, Any], bool]]:
    """``(fn(record), replaced)`` per record; a record that failed raises or is replaced by a good sample
    of the stream (the previous one, or the next when none came before)."""
    last, pending = None, 0
    for rec in records:
        try:
            sample = fn(rec) if rec.error is None else None
        except DECODE_ERRORS as e:
            if on_error == "raise":
                raise BeitDataError(f"cannot decode sample {rec.key!r} of image shard {rec.shard} ({e}): check it "
                                    "with 'beit-data verify' and rerun 'beit-data shard' to rewrite it") from None
            sample = None
        if sample is None:
            if last is None:
                pending += 1
            else:
                yield last, True
            continue
        for _ in range(pending):
            yield sample, True
        last, pending = sample, 0
        yield sample, False
    if pending:
        raise BeitDataError(f"none of the {pending} samples this worker read could be decoded (the last from "
                            f"{rec.shard}): check the shards with 'beit-data verify'")


def batched(samples: Iterable[Any], sizes: Iterable[int]) -> Iterator[list[Any]]:
    """Consecutive groups of ``sizes``."""
    it = iter(samples)
    for n in sizes:
        group = list(islice(it, n))
        if len(group) != n:
            raise RuntimeError(f"internal error: a worker's stream ended {n - len(group)} samples early")
        yield group
