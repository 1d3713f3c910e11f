"""Resume bookkeeping shared by the jobs: which run owns an output, which files are committed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from beit_data.atomic import write_json
from beit_data.errors import BeitDataError


def claim(out: Path, state: Path, fingerprint: str, overwrite: bool, refusal: str) -> None:
    """Make ``out`` (and its bookkeeping folder ``state``) belong to the run with ``fingerprint``.

    The same fingerprint resumes; another one is refused with ``refusal`` unless
    ``overwrite``, which removes both folders first.
    """
    plan = state / "plan.json"
    previous = json.loads(plan.read_text())["fingerprint"] if plan.exists() else None
    busy = previous is not None or (out.exists() and any(out.iterdir()))
    if busy and previous != fingerprint:
        if not overwrite:
            raise BeitDataError(refusal)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    write_json(plan, {"fingerprint": fingerprint})


def committed(root: Path, record_path: Path) -> dict[str, Any] | None:
    """The record at ``record_path`` if the file it names under ``root`` is there at its recorded size."""
    if not record_path.exists():
        return None
    record = json.loads(record_path.read_text())
    path = root / record["name"]
    return record if path.exists() and path.stat().st_size == record["bytes"] else None
