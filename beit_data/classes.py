"""The class index: synset <-> id <-> name."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import BeitDataError


@dataclass(frozen=True)
class ClassIndex:
    """Class ids are positions in ``synsets``; ``names`` maps a synset to its readable name."""

    synsets: tuple[str, ...]
    names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ids", {s: i for i, s in enumerate(self.synsets)})
        if len(self._ids) != len(self.synsets):  # type: ignore[attr-defined]
            raise BeitDataError("class list names a synset twice: each synset must appear once")

    def id_of(self, synset: str) -> int | None:
        """The class id of ``synset``, or None when it is not in the index."""
        return self._ids.get(synset)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.synsets)

    def to_manifest(self) -> list[dict[str, Any]]:
        """The manifest's ``classes`` list."""
        return [{"id": i, "synset": s, "name": self.names.get(s, "")} for i, s in enumerate(self.synsets)]

    @classmethod
    def from_manifest(cls, rows: list[dict[str, Any]]) -> "ClassIndex":
        """Rebuild from a manifest's ``classes`` list."""
        rows = sorted(rows, key=lambda r: r["id"])
        return cls(tuple(r["synset"] for r in rows), {r["synset"]: r["name"] for r in rows if r.get("name")})

    @classmethod
    def sorted_from(cls, synsets: Iterable[str], names: dict[str, str] | None = None) -> "ClassIndex":
        """Ids in sorted synset order (torchvision ImageFolder's convention)."""
        return cls(tuple(sorted(set(synsets))), dict(names or {}))


def read_synset_file(path: Path) -> tuple[list[str], dict[str, str]]:
    """Read ``LOC_synset_mapping.txt``-style lines (``n01440764 tench, Tinca tinca``),
    bare synsets one per line, or torchvision's ``imagenet_class_index.json``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BeitDataError(f"cannot read class file {path}: {e}") from None
    if text.lstrip().startswith("{"):
        table = json.loads(text)
        rows = sorted(table.items(), key=lambda kv: int(kv[0]))
        return [r[1][0] for _, r in rows], {r[1][0]: r[1][1] for _, r in rows}
    synsets, names = [], {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        synsets.append(parts[0])
        if len(parts) == 2:
            names[parts[0]] = parts[1].strip()
    if not synsets:
        raise BeitDataError(f"class file {path} lists no classes: give one synset per line")
    return synsets, names
