"""The shard reader: the direct ustar reader reads what tarfile's stream mode reads, and fails where it fails."""
from __future__ import annotations

import io

import numpy as np
import pytest

def tarfile_samples(fileobj, source: str = "shard"):
    """iter_samples as it was, on tarfile's stream mode: the reference for the direct reader."""
    import tarfile

    from beit_data.shards import ShardReadError

    current, parts = None, {}
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
                parts[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardReadError(f"image shard {source} is truncated or corrupt ({e}): "
                             "check it with 'beit-data verify' and rerun 'beit-data shard' to rewrite it") from None
    if current is not None:
        yield current, parts


def read_outcome(reader, data: bytes, wrap=io.BytesIO):
    """Every sample ``reader`` yields from ``data``, then how it ended (None, or the error message)."""
    from beit_data.shards import ShardReadError

    got = []
    try:
        for key, parts in reader(wrap(data), "s"):
            got.append((key, dict(parts)))
    except ShardReadError as e:
        return got, str(e)
    return got, None


class Trickle(io.RawIOBase):
    """A raw stream that returns at most 37 bytes a read, as a socket or pipe may."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 37) if size is not None and size >= 0 else -1)


def tar_archives(tmp_path) -> dict[str, bytes]:
    import tarfile

    from beit_data.shards import Sample, write_shard

    rng = np.random.default_rng(15)
    ours = tmp_path / "ours.tar"
    write_shard(ours, [Sample(f"k{i}", rng.integers(0, 256, int(rng.integers(0, 1300)), dtype=np.uint8).tobytes(), i,
                              {"key": f"k{i}"}) for i in range(6)])
    archives = {"ours": ours.read_bytes()}
    for name, fmt in (("ustar", tarfile.USTAR_FORMAT), ("gnu", tarfile.GNU_FORMAT), ("pax", tarfile.PAX_FORMAT)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
            def add(member: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
                info = tarfile.TarInfo(member)
                info.type, info.linkname, info.size = kind, link, len(data) if kind in tarfile.REGULAR_TYPES else 0
                tar.addfile(info, io.BytesIO(data) if kind in tarfile.REGULAR_TYPES else None)

            add("a.jpg", b"x" * 700)
            add("a.cls", b"1")
            add("dir", kind=tarfile.DIRTYPE)
            add("a.json", b"{}")
            add("b.jpg")
            add("link", kind=tarfile.SYMTYPE, link="a.jpg")
            add("hard", kind=tarfile.LNKTYPE, link="a.cls")
            add("sub/" + "p" * 90 + "/c.jpg", b"y" * 512)  # a ustar prefix
            add("c.cls", b"2", kind=tarfile.CONTTYPE)
            if fmt != tarfile.USTAR_FORMAT:
                add("d" * 120 + ".jpg", b"z" * 1025)  # a GNU long name / a pax path
                add("é.cls", b"3")
                add("e.jpg", b"q" * 5)
        archives[name] = buffer.getvalue()
    pax_first = io.BytesIO()
    with tarfile.open(fileobj=pax_first, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f" * 150 + ".jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    archives["pax-first"] = pax_first.getvalue()
    archives["empty"], archives["zeros"], archives["short"] = b"", bytes(10240), b"\0" * 100
    return archives


def test_shard_reader_matches_tarfile_on_valid_truncated_and_corrupt_archives(tmp_path) -> None:
    from beit_data.shards import iter_samples

    rng = np.random.default_rng(16)
    for name, data in tar_archives(tmp_path).items():
        assert read_outcome(iter_samples, data) == read_outcome(tarfile_samples, data), name
        assert read_outcome(iter_samples, data, Trickle) == read_outcome(tarfile_samples, data), name
        cuts = set(range(0, min(len(data), 3000), 7)) | {int(c) for c in rng.integers(0, len(data) + 1, 150)}
        cuts |= {b * 512 + d for b in range(len(data) // 512 + 1) for d in (-1, 0, 1, 156, 511) if 0 <= b * 512 + d <= len(data)}
        for cut in sorted(cuts):
            assert read_outcome(iter_samples, data[:cut]) == read_outcome(tarfile_samples, data[:cut]), (name, cut)
        for _ in range(300 if len(data) >= 512 else 0):  # corrupt header bytes: checksum, type, size, numbers, names
            broken = bytearray(data)
            for _ in range(int(rng.integers(1, 4))):
                block = int(rng.integers(len(broken) // 512)) * 512
                at = block + int(rng.choice([0, 99, 100, 110, 124, 130, 135, 148, 150, 155, 156, 257, 329, 345,
                                             int(rng.integers(512))]))
                broken[min(at, len(broken) - 1)] = int(rng.choice([0, 32, 48, 55, 56, 0x80, 0xFF, ord("L"), ord("x"),
                                                                   ord("g"), ord("5"), ord("S"), ord("V"),
                                                                   int(rng.integers(256))]))
            broken = bytes(broken)
            assert read_outcome(iter_samples, broken) == read_outcome(tarfile_samples, broken), name


def test_shard_reader_reads_written_shards(tmp_path) -> None:
    from beit_data.shards import Sample, ShardReadError, iter_samples, write_shard

    samples = [Sample(f"n0_{i}", bytes([i]) * (i * 300), i, {"key": f"n0_{i}"}) for i in range(5)]
    write_shard(tmp_path / "s.tar", samples)
    data = (tmp_path / "s.tar").read_bytes()
    got = list(iter_samples(io.BytesIO(data)))
    assert [k for k, _ in got] == [s.key for s in samples]
    assert all(parts["jpg"] == s.jpeg and parts["cls"] == str(s.class_id).encode() for (_, parts), s in zip(got, samples))
    inside = data.index(b"n0_4.jpg") + 512 + 100  # in the last picture's bytes
    with pytest.raises(ShardReadError, match=r"image shard s\.tar is truncated or corrupt \(unexpected end of data\)"):
        list(iter_samples(io.BytesIO(data[:inside]), "s.tar"))
    assert [k for k, _ in iter_samples(io.BytesIO(data[:data.index(b"n0_4.jpg")]))] == [s.key for s in samples[:4]]
    bad = bytearray(data)
    bad[148] ^= 1  # the first header's checksum
    with pytest.raises(ShardReadError, match="bad checksum"):
        list(iter_samples(io.BytesIO(bytes(bad))))
