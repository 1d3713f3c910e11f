"""ImageNet source readers: list every input once, read its bytes on demand.

Layouts:

* ImageFolder: ``SRC/<synset>/<name>.JPEG``.
* ``ILSVRC2012_img_train.tar``: a tar of per-class tars, indexed in one pass
  over the headers and read by offset, never extracted.
* Validation: a flat folder or ``ILSVRC2012_img_val.tar`` plus a labels file
  (``LOC_val_solution.csv`` or one synset per line in sorted file order).

Listing is cheap (names, sizes, offsets); bytes are read by the shard tasks.
Inputs that cannot even be listed as images of a class (unsafe tar paths,
links, files outside a class folder, unlabelled files, duplicate keys) come
back as :class:`Rejected` rows so nothing is lost silently.
"""
from __future__ import annotations

import hashlib
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from .errors import BeitDataError

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
MAX_KEY_LENGTH = 90


class Entry(NamedTuple):
    """One input image: where it came from and how to read it."""

    key: str
    synset: str
    source: str          # path relative to SRC, or member path inside the tar
    path: str            # file to read
    offset: int          # byte offset of the image inside the tar ``path``; -1 for a plain file
    size: int            # byte size of the image


class Rejected(NamedTuple):
    """An input that was listed but cannot be written, with the reason."""

    source: str
    reason: str


@dataclass
class Listing:
    """Everything found in a source."""

    entries: list[Entry]
    rejected: list[Rejected]


def make_key(synset: str | None, name: str) -> str:
    """A dot-free key from a file name: its stem, prefixed by the synset unless already."""
    stem = _UNSAFE_KEY_CHARS.sub("_", PurePosixPath(name).name.split(".")[0]) or "_"
    if synset and not stem.startswith(synset):
        stem = f"{_UNSAFE_KEY_CHARS.sub('_', synset)}_{stem}"
    if len(stem) > MAX_KEY_LENGTH:  # tar member names are at most 100 bytes
        stem = f"{stem[:MAX_KEY_LENGTH - 17]}_{hashlib.sha256(stem.encode()).hexdigest()[:16]}"
    return stem


def read_labels(path: Path) -> dict[str, str]:
    """Map image stem -> synset from ``LOC_val_solution.csv`` or a synset-per-line file.

    A synset-per-line file maps by position; its keys are ``"#<line index>"``
    and :func:`list_source` applies them to files in sorted order."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BeitDataError(f"cannot read labels file {path}: {e}") from None
    if lines and lines[0].startswith("ImageId"):
        labels = {}
        for line in lines[1:]:
            if line.strip():
                image_id, prediction = line.split(",", 1)
                labels[image_id.strip()] = prediction.split()[0]
        return labels
    synsets = [ln.strip() for ln in lines if ln.strip()]
    if synsets and all(s.isdigit() for s in synsets[:10]):
        raise BeitDataError(f"labels file {path} holds class numbers, not synsets: "
                            "give LOC_val_solution.csv or one synset per line")
    return {f"#{i}": s for i, s in enumerate(synsets)}


def list_source(src: Path, labels: dict[str, str] | None = None) -> Listing:
    """List every input under ``src`` (a folder or an uncompressed tar)."""
    src = Path(src)
    if not src.exists():
        raise BeitDataError(f"source {src} does not exist: give an ImageNet folder or ILSVRC tar")
    found: list[tuple[str | None, str, str, int, int]] = []  # synset, source, path, offset, size
    rejected: list[Rejected] = []
    if src.is_dir():
        _list_folder(src, labels is not None, found, rejected)
    else:
        _list_tar(src, labels is not None, found, rejected)
    if labels is not None:
        found = _apply_labels(found, labels, rejected)
    return _dedupe(found, rejected)


def _list_folder(src: Path, flat: bool, found: list, rejected: list[Rejected]) -> None:
    for root, dirs, files in os.walk(src):
        dirs.sort()
        rel_root = Path(root).relative_to(src)
        for name in sorted(files):
            rel = (rel_root / name).as_posix()
            path = os.path.join(root, name)
            synset = None if flat else (rel_root.parts[0] if rel_root.parts else None)
            if synset is None and not flat:
                rejected.append(Rejected(rel, "not inside a class folder (SRC/<synset>/...)"))
                continue
            found.append((synset, rel, path, -1, os.path.getsize(path)))


def _unsafe(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    if not p.parts:
        return True
    return p.is_absolute() or ".." in p.parts or ":" in p.parts[0]


def _list_tar(src: Path, flat: bool, found: list, rejected: list[Rejected]) -> None:
    try:
        outer = tarfile.open(src, mode="r:")
    except tarfile.ReadError as e:
        raise BeitDataError(f"cannot read {src} as an uncompressed tar ({e}): "
                            "give the original ILSVRC tar or an extracted folder") from None
    with outer:
        for member in outer:
            if member.isdir():
                continue
            if _unsafe(member.name):
                rejected.append(Rejected(member.name, "unsafe tar member path (absolute or '..'): refused"))
                continue
            if not member.isfile():
                rejected.append(Rejected(member.name, "not a regular file in the tar (link or device): refused"))
                continue
            if member.name.endswith(".tar") and not flat:
                synset = PurePosixPath(member.name).name[:-4]
                _list_inner_tar(outer, member, synset, str(src), found, rejected)
                continue
            parent = PurePosixPath(member.name).parent.name
            if not flat and not parent:
                rejected.append(Rejected(member.name, "no class: not in a class tar or folder, and no --labels"))
                continue
            found.append((None if flat else parent, member.name, str(src), member.offset_data, member.size))


def _list_inner_tar(outer: tarfile.TarFile, member: tarfile.TarInfo, synset: str, path: str,
                    found: list, rejected: list[Rejected]) -> None:
    fileobj = outer.extractfile(member)
    try:
        inner = tarfile.open(fileobj=fileobj, mode="r:")
    except tarfile.ReadError as e:
        rejected.append(Rejected(member.name, f"class tar is not a readable tar: {e}"))
        return
    with inner:
        for m in inner:
            source = f"{member.name}/{m.name}"
            if m.isdir():
                continue
            if _unsafe(m.name):
                rejected.append(Rejected(source, "unsafe tar member path (absolute or '..'): refused"))
            elif not m.isfile():
                rejected.append(Rejected(source, "not a regular file in the tar (link or device): refused"))
            else:
                found.append((synset, source, path, member.offset_data + m.offset_data, m.size))


def _apply_labels(found: list, labels: dict[str, str], rejected: list[Rejected]) -> list:
    by_position = next(iter(labels), "").startswith("#")
    if by_position:
        found = sorted(found, key=lambda f: PurePosixPath(f[1]).name)
        if len(labels) != len(found):
            raise BeitDataError(f"labels file has {len(labels)} lines but the source has {len(found)} images: "
                                "a synset-per-line file needs exactly one line per image in sorted file order")
    labelled = []
    for i, (_, source, path, offset, size) in enumerate(found):
        synset = labels.get(f"#{i}") if by_position else labels.get(PurePosixPath(source).name.split(".")[0])
        if synset is None:
            rejected.append(Rejected(source, "no label for this image in the labels file"))
        else:
            labelled.append((synset, source, path, offset, size))
    return labelled


def _dedupe(found: list, rejected: list[Rejected]) -> Listing:
    entries: dict[str, Entry] = {}
    for synset, source, path, offset, size in sorted(found, key=lambda f: f[1]):
        e = Entry(make_key(synset, source), synset, source, path, offset, size)
        if e.key in entries:
            rejected.append(Rejected(source, f"duplicate key {e.key!r} (same as {entries[e.key].source})"))
        else:
            entries[e.key] = e
    return Listing(sorted(entries.values()), sorted(rejected))


class EntryReader:
    """Reads entries' bytes, keeping source tars open between reads."""

    def __init__(self) -> None:
        self._files: dict[str, object] = {}

    def read(self, e: Entry) -> bytes:
        if e.offset < 0:
            with open(e.path, "rb") as f:
                return f.read()
        f = self._files.get(e.path)
        if f is None:
            f = self._files[e.path] = open(e.path, "rb")
        f.seek(e.offset)  # type: ignore[attr-defined]
        return f.read(e.size)  # type: ignore[attr-defined]

    def close(self) -> None:
        for f in self._files.values():
            f.close()  # type: ignore[attr-defined]
        self._files.clear()

    def __enter__(self) -> "EntryReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
