"""Seeded random streams that depend only on (seed, key, view, epoch, ...).

Every random choice in beit-data comes from :func:`rng_for`, so a result never
depends on process ids, time, worker count or the order work was scheduled in.
"""
from __future__ import annotations

import hashlib

import numpy as np


def stream_id(*parts: object) -> list[int]:
    """Hash ``parts`` (ints, strings, ...) into 32-bit words for ``SeedSequence``."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    """A numpy Generator that is a pure function of ``seed`` and ``parts``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *stream_id(*parts)])))
