"""The image manifest ``ROOT/manifest.json`` (see FORMAT.md)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .atomic import write_json
from .errors import BeitDataError

IMAGES_FORMAT = "beit-data/images"
FORMAT_VERSION = 1


def manifest_path(root: Path) -> Path:
    return Path(root) / "manifest.json"


def load_manifest(root: Path, required: bool = True) -> dict[str, Any] | None:
    """Read ``ROOT/manifest.json``; None (or a clear error when ``required``) if absent."""
    path = manifest_path(root)
    if not path.exists():
        if required:
            raise BeitDataError(f"no manifest at {path}: run 'beit-data shard SRC {root}' first")
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BeitDataError(f"cannot read {path}: {e}; rerun 'beit-data shard' to rewrite it") from None
    if manifest.get("format") != IMAGES_FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise BeitDataError(f"{path} is not a beit-data image manifest of version {FORMAT_VERSION}")
    return manifest


def save_split(root: Path, classes: list[dict[str, Any]], split: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Write ``split``'s entry into the manifest, keeping the other splits."""
    manifest = load_manifest(root, required=False) or {
        "format": IMAGES_FORMAT, "version": FORMAT_VERSION, "classes": classes, "splits": {}}
    manifest["classes"] = classes
    manifest["splits"][split] = entry
    write_json(manifest_path(root), manifest)
    return manifest
