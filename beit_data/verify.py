"""Check a dataset root against its manifests: every problem as one line.

Full mode hashes every shard and sidecar, reads every tar to its end and every
sidecar's columns; ``quick`` only checks presence, sizes and the manifests'
own consistency, so it misses a flipped byte.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import BeitDataError
from .manifest import load_manifest
from .shards import KEY_PATTERN, file_sha256, iter_samples
from .sidecars import load_token_manifest, read_sidecar


def verify(root: Path, quick: bool = False) -> Iterator[str]:
    """Yield one line per problem found under ``root``."""
    root = Path(root)
    try:
        manifest = load_manifest(root)
    except (BeitDataError, KeyError, TypeError) as e:
        yield f"manifest.json: {e}"
        return
    num_classes = len(manifest["classes"])
    shard_keys: dict[str, list[str]] = {}
    shard_sha: dict[str, str] = {}
    for split, entry in manifest["splits"].items():
        if entry["count"] + len(entry["quarantine"]) != entry["inputs"]:
            yield f"manifest.json: split {split}: count + quarantined != inputs"
        if sum(s["count"] for s in entry["shards"]) != entry["count"]:
            yield f"manifest.json: split {split}: shard counts do not add up to {entry['count']}"
        for shard in entry["shards"]:
            shard_sha[shard["name"]] = shard["sha256"]
            problem = _check_file(root, shard["name"], shard["bytes"], None if quick else shard["sha256"])
            if problem:
                yield problem
                continue
            if not quick:
                keys, problems = _read_shard(root / shard["name"], shard["name"], num_classes)
                shard_keys[shard["name"]] = keys
                yield from problems
                if len(keys) != shard["count"]:
                    yield f"{shard['name']}: {len(keys)} samples, manifest says {shard['count']}"
    tokens_dir = root / "tokens"
    for token_id in sorted(p.name for p in tokens_dir.glob("*") if p.is_dir()) if tokens_dir.exists() else []:
        yield from _verify_tokens(root, token_id, shard_sha, shard_keys, quick)


def _check_file(root: Path, name: str, size: int, sha256: str | None) -> str | None:
    path = root / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        return f"{name}: unsafe path in manifest"
    if not path.exists():
        return f"{name}: missing"
    if path.stat().st_size != size:
        return f"{name}: {path.stat().st_size} bytes, manifest says {size}"
    if sha256 and file_sha256(path) != sha256:
        return f"{name}: sha256 mismatch (file changed or corrupt)"
    return None


def _read_shard(path: Path, name: str, num_classes: int) -> tuple[list[str], list[str]]:
    keys, problems = [], []
    try:
        with open(path, "rb") as f:
            for key, parts in iter_samples(f, name):
                keys.append(key)
                if not KEY_PATTERN.match(key) or set(parts) != {"jpg", "cls", "json"}:
                    problems.append(f"{name}: sample {key!r} is malformed (members {sorted(parts)})")
                    continue
                cls = int(parts["cls"]) if parts["cls"].isdigit() else -1
                if not 0 <= cls < num_classes or json.loads(parts["json"]).get("key") != key:
                    problems.append(f"{name}: sample {key!r} has a bad class or metadata")
    except (BeitDataError, ValueError) as e:
        problems.append(f"{name}: {e}")
    return keys, problems


def _verify_tokens(root: Path, token_id: str, shard_sha: dict[str, str], shard_keys: dict[str, list[str]],
                   quick: bool) -> Iterator[str]:
    try:
        manifest = load_token_manifest(root, token_id)
        vocab = manifest["tokenizer"]["vocab_size"]
        grid = manifest["grid"]
        limit = manifest["mask_policy"]["num_masking"]
        exact = manifest["mask_policy"].get("exact", False)
    except (BeitDataError, KeyError, TypeError, json.JSONDecodeError) as e:
        yield f"tokens/{token_id}/manifest.json: {e}"
        return
    n_patches = grid[0] * grid[1]
    for split, entry in manifest["splits"].items():
        for car in entry["sidecars"]:
            if shard_sha.get(car["image_shard"]) != car["image_sha256"]:
                yield f"{car['name']}: made from another version of {car['image_shard']}; rerun 'beit-data tokenize'"
            problem = _check_file(root, car["name"], car["bytes"], None if quick else car["sha256"])
            if problem or quick:
                if problem:
                    yield problem
                continue
            try:
                rows = read_sidecar(root / car["name"])
            except BeitDataError as e:
                yield str(e)
                continue
            if rows.keys != shard_keys.get(car["image_shard"], rows.keys):
                yield f"{car['name']}: keys do not match {car['image_shard']} sample for sample"
            if len(rows) != car["count"] or rows.views != manifest["views"]:
                yield f"{car['name']}: {len(rows)} rows x {rows.views} views, manifest says " \
                      f"{car['count']} x {manifest['views']}"
            if rows.tokens.shape[2] != n_patches or (len(rows) and int(rows.tokens.max()) >= vocab):
                yield f"{car['name']}: token grid not {grid[0]}x{grid[1]} or tokens outside vocabulary {vocab}"
            bits = np.unpackbits(rows.mask, axis=-1)
            counts = bits[..., :n_patches].sum(-1)
            if bits[..., n_patches:].any() or (counts > limit).any() or (exact and (counts != limit).any()):
                yield f"{car['name']}: mask sizes outside the mask policy ({'exactly' if exact else 'at most'} {limit})"
