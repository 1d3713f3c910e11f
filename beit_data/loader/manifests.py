"""The loaders' view of the manifests: a split's shards, joined with a token set's sidecars and cross-checked."""
from __future__ import annotations

from typing import Any

from ..errors import BeitDataError
from ..manifest import FORMAT_VERSION, IMAGES_FORMAT
from ..sidecars import TOKENS_FORMAT, TOKENS_VERSION
from .storage import Storage, check_name
from .stream import RERUN_TOKENIZE, ShardRef


def image_manifest(storage: Storage) -> dict[str, Any]:
    """``ROOT/manifest.json``, checked for format and version."""
    manifest = storage.read_json("manifest.json", f"run 'beit-data shard SRC {storage.root}' first")
    if manifest.get("format") != IMAGES_FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise BeitDataError(f"{storage.where('manifest.json')} is not a beit-data image manifest "
                            f"of version {FORMAT_VERSION}")
    return manifest


def token_manifest(storage: Storage, token_id: str) -> dict[str, Any]:
    """``tokens/<id>/manifest.json``, checked for format and version."""
    if "/" in token_id:
        raise BeitDataError(f"token set id {token_id!r} must be one folder name under tokens/")
    name = check_name(f"tokens/{token_id}/manifest.json", "tokens=")
    manifest = storage.read_json(name, "run 'beit-data tokenize' to make this token set, or pass the id of one "
                                       "that exists (see 'beit-data inspect ROOT')")
    if manifest.get("format") != TOKENS_FORMAT or manifest.get("version") != TOKENS_VERSION:
        raise BeitDataError(f"{storage.where(name)} is not a beit-data token manifest of version {TOKENS_VERSION}")
    return manifest


def image_shards(storage: Storage, manifest: dict[str, Any], split: str) -> tuple[ShardRef, ...]:
    """The split's image shards in manifest order."""
    if split not in manifest["splits"]:
        raise BeitDataError(f"split {split!r} is not in {storage.where('manifest.json')} "
                            f"(has: {', '.join(manifest['splits']) or 'none'}): run 'beit-data shard' for it")
    return tuple(ShardRef(check_name(s["name"], "manifest.json"), int(s["count"]))
                 for s in manifest["splits"][split]["shards"])


def token_shards(storage: Storage, images: dict[str, Any], tokens: dict[str, Any], token_id: str,
                 split: str) -> tuple[ShardRef, ...]:
    """The split's image shards, each with its sidecar entry, after checking the two manifests agree."""
    where = storage.where(f"tokens/{token_id}/manifest.json")
    if split not in tokens["splits"]:
        raise BeitDataError(f"token set {token_id} has no split {split!r} ({where}): "
                            f"run 'beit-data tokenize --split {split}' for it")
    shards = image_shards(storage, images, split)
    hashes = {s["name"]: s["sha256"] for s in images["splits"][split]["shards"]}
    cars = {}
    for car in tokens["splits"][split]["sidecars"]:
        check_name(car["name"], where)
        cars[car["image_shard"]] = car
    for shard in shards:
        car = cars.get(shard.name)
        if car is None:
            raise BeitDataError(f"{where} has no sidecar for {shard.name}: {RERUN_TOKENIZE}")
        if car["image_sha256"] != hashes[shard.name] or car["count"] != shard.count:
            raise BeitDataError(f"{car['name']} was made from another version of {shard.name} (sha256 or count "
                                f"differs from manifest.json): {RERUN_TOKENIZE} (add --overwrite)")
    if len(cars) != len(shards):
        extra = sorted(set(cars) - {s.name for s in shards})
        raise BeitDataError(f"{where} lists sidecars for shards manifest.json does not have "
                            f"({', '.join(extra)[:200]}): {RERUN_TOKENIZE}")
    return tuple(ShardRef(s.name, s.count, cars[s.name]) for s in shards)
