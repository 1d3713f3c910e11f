"""Mini-ImageNet corpora built from the bundled public-domain photos.

Used by ``beit-data demo`` and the tests: real photographs (cropped, resized,
flipped and tinted per image so every file differs) and generated pictures, in
the ImageFolder or the ILSVRC tar layout, optionally with the oddities real
ImageNet has (CMYK and grayscale JPEGs, a PNG named ``.JPEG``) and the broken
inputs a real corpus can hold (empty, truncated, not an image, a decompression
bomb, unsafe tar paths). :class:`Corpus` says what a correct shard job must do
with each input.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .rng import rng_for

PHOTOS = Path(__file__).parent / "photos"
SYNSETS = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
           ("n01491361", "tiger shark"), ("n01494475", "hammerhead"), ("n01496331", "electric ray"),
           ("n01498041", "stingray"), ("n01514668", "cock")]


@dataclass
class Corpus:
    """A generated corpus and the outcome each input must have."""

    src: Path
    synsets: list[str]
    labels: Path | None = None                       # validation labels file, when flat
    names: Path | None = None                        # synset -> name file
    images: dict[str, str] = field(default_factory=dict)      # source -> synset, for good inputs
    repaired: set[str] = field(default_factory=set)           # sources that must be re-encoded
    broken: dict[str, str] = field(default_factory=dict)      # source -> expected reason prefix

    @property
    def inputs(self) -> int:
        return len(self.images) + len(self.broken)


def photo_variant(seed: int, index: int, size_range: tuple[int, int] = (160, 520)) -> Image.Image:
    """A distinct RGB picture: a bundled photo cropped, resized, flipped and tinted, or a generated one."""
    rng = rng_for(seed, "corpus", index)
    photos = sorted(PHOTOS.glob("*.jpg"))
    if index % 5 == 4:
        w, h = (int(v) for v in rng.integers(*size_range, size=2))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        c = rng.uniform(0, 1, size=(3, 3))
        arr = np.stack([(np.sin(xx * c[k, 0] / 9 + yy * c[k, 1] / 13) * 0.5 + 0.5) * 255 * c[k, 2] + 20
                        for k in range(3)], -1)
        arr += rng.normal(0, 8, arr.shape)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    im = Image.open(photos[index % len(photos)]).convert("RGB")
    w, h = im.size
    cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    scale = rng.uniform(*size_range) / max(cw, ch)
    im = im.crop((x, y, x + cw, y + ch)).resize((max(8, int(cw * scale)), max(8, int(ch * scale))), Image.BICUBIC)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    tint = rng.uniform(0.8, 1.2, size=3)
    return Image.fromarray(np.clip(np.asarray(im, np.float32) * tint, 0, 255).astype(np.uint8))


def _jpeg(im: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def _oddities(seed: int) -> list[tuple[str, bytes, str | None, bool]]:
    """(name suffix, bytes, expected quarantine reason or None, repaired?) for each oddity."""
    base = photo_variant(seed, 10_001)
    good = _jpeg(base)
    bomb = Image.new("1", (10_000, 9_000))
    return [
        ("cmyk", _jpeg(base.convert("CMYK")), None, True),
        ("gray", _jpeg(base.convert("L")), None, True),
        ("png", _png(base), None, True),
        ("palette", _png(base.convert("P")), None, True),
        ("empty", b"", "empty file", False),
        ("truncated", good[: len(good) // 2], "truncated or corrupt", False),
        ("html", b"<!DOCTYPE html><html><body>403 Forbidden</body></html>\n", "not an image", False),
        ("bomb", _png(bomb), "over pixel limit", False),
    ]


def _write(files: dict[str, bytes], src: Path, layout: str) -> None:
    """Write ``files`` (relative name -> bytes) as a folder, or as an ILSVRC-style tar of class tars."""
    if layout == "folder":
        for name, data in files.items():
            path = src / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return
    groups: dict[str, dict[str, bytes]] = {}
    for name, data in files.items():
        head, _, tail = name.rpartition("/")
        groups.setdefault(head, {})[tail] = data
    src.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src, "w") as outer:
        for group, members in sorted(groups.items()):
            if group:
                _add(outer, f"{group}.tar", _tar_bytes(members))
            else:
                for tail, data in sorted(members.items()):
                    _add(outer, tail, data)


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in sorted(members.items()):
            _add(tar, name, data)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_train(out: Path, *, classes: int = 4, per_class: int = 6, layout: str = "folder",
                oddities: bool = True, seed: int = 0) -> Corpus:
    """A training corpus: ``out`` is a folder, or ``out`` is ``ILSVRC2012_img_train.tar``-style."""
    synsets = [s for s, _ in SYNSETS[:classes]]
    corpus = Corpus(Path(out), synsets)
    files: dict[str, bytes] = {}
    for c, synset in enumerate(synsets):
        for i in range(per_class):
            name = f"{synset}/{synset}_{i + 1}.JPEG"
            files[name] = _jpeg(photo_variant(seed, c * 1000 + i), quality=85 + (i % 3) * 5)
            corpus.images[name] = synset
    if oddities:
        for k, (suffix, data, reason, repaired) in enumerate(_oddities(seed)):
            synset = synsets[k % len(synsets)]
            name = f"{synset}/{synset}_{suffix}.JPEG"
            files[name] = data
            if reason:
                corpus.broken[name] = reason
            else:
                corpus.images[name] = synset
                if repaired:
                    corpus.repaired.add(name)
    _write(files, corpus.src, layout)
    if layout == "tar" and oddities:
        _add_unsafe_members(corpus)
    corpus.names = _names_file(Path(out).parent / f"{Path(out).name}.synsets.txt", synsets)
    return corpus


def _add_unsafe_members(corpus: Corpus) -> None:
    """Append tar members that must be refused: an absolute path and a '..' path."""
    with tarfile.open(corpus.src, "a") as outer:
        for name in ("/etc/evil.JPEG", "../escape.JPEG"):
            _add(outer, name, _jpeg(photo_variant(0, 7)))
            corpus.broken[name] = "unsafe tar member path"


def build_val(out: Path, *, classes: int = 4, count: int = 12, layout: str = "folder", seed: int = 0,
              labels: str = "csv") -> Corpus:
    """A flat validation corpus (``ILSVRC2012_val_%08d.JPEG``) plus its labels file."""
    synsets = [s for s, _ in SYNSETS[:classes]]
    corpus = Corpus(Path(out), synsets)
    files, truth = {}, []
    for i in range(count):
        stem = f"ILSVRC2012_val_{i + 1:08d}"
        synset = synsets[i % classes]
        files[f"{stem}.JPEG"] = _jpeg(photo_variant(seed + 1, i))
        corpus.images[f"{stem}.JPEG"] = synset
        truth.append((stem, synset))
    _write(files, corpus.src, layout)
    path = Path(out).parent / f"{Path(out).name}.labels.{'csv' if labels == 'csv' else 'txt'}"
    if labels == "csv":
        path.write_text("ImageId,PredictionString\n" + "".join(f"{s},{y} 1 2 3 4\n" for s, y in truth))
    else:
        path.write_text("".join(f"{y}\n" for _, y in truth))
    corpus.labels = path
    corpus.names = _names_file(Path(out).parent / f"{Path(out).name}.synsets.txt", synsets)
    return corpus


def _names_file(path: Path, synsets: list[str]) -> Path:
    names = dict(SYNSETS)
    path.write_text("".join(f"{s} {names[s]}\n" for s in synsets))
    return path
