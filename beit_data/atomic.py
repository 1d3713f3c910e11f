"""Write-then-rename helpers: readers never see a half-written file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def partial_path(path: Path) -> Path:
    """The temporary name ``path`` is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.partial")


def commit(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk and rename it to ``path`` atomically."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    tmp.write_bytes(data)
    commit(tmp, path)


def dump_json(obj: Any) -> str:
    """The canonical JSON text used for every file beit-data writes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as canonical JSON."""
    write_bytes(path, dump_json(obj).encode())
