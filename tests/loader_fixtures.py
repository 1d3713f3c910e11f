"""Test data for the loaders: a sharded mini-ImageNet root and a token set laid out as the tokenize job
writes it (FORMAT.md), with cheap tokens that identify their sample and view."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from beit_data.atomic import write_json
from beit_data.manifest import load_manifest
from beit_data.masks import MaskPolicy, masks_for, pack_masks
from beit_data.rng import rng_for
from beit_data.shards import iter_samples
from beit_data.sidecars import TOKENS_FORMAT, TOKENS_VERSION, SidecarRows, token_dir, write_sidecar
from beit_data.views import View, ViewPolicy, render_views, sample_view

VOCAB = 512


def sharded_root(base: Path, corpus_src: Path, samples_per_shard: int = 5) -> Path:
    """``base/root``: the corpus sharded (uneven shards: quarantined inputs leave theirs short); made once."""
    from pipelines.shard import ShardOptions, run_shard_job

    root = base / "root"
    if not (root / "manifest.json").exists():
        run_shard_job(corpus_src, root, ShardOptions(samples_per_shard=samples_per_shard), quiet=True)
    return root


def fixture_tokens(seed: int, key: str, view: int, n: int) -> np.ndarray:
    """The cheap "visual tokens" of (key, view): a pure function, so a test knows what each sample must carry."""
    return rng_for(seed, "fixture-tokens", key, view).integers(VOCAB, size=n).astype(np.uint16)


def shard_samples(root: Path, name: str) -> list[tuple[str, dict[str, bytes]]]:
    with open(root / name, "rb") as f:
        return list(iter_samples(f, name))


def make_token_set(root: Path, token_id: str = "fixture", split: str = "train", *, views: int = 2,
                   resolution: int = 224, seed: int = 0, jitter: bool = True) -> dict:
    """Write ``tokens/<token_id>/`` for ``split`` of ``root`` in the tokenize job's layout; returns its manifest."""
    policy = ViewPolicy() if jitter else ViewPolicy(jitter=0.0)
    mask_policy = MaskPolicy.for_resolution(resolution)
    grid = mask_policy.grid
    n_patches = grid[0] * grid[1]
    sidecars = []
    for shard in load_manifest(root)["splits"][split]["shards"]:
        samples = shard_samples(root, shard["name"])
        keys = [k for k, _ in samples]
        sizes = [json.loads(parts["json"]) for _, parts in samples]
        chosen = [[sample_view(seed, k, v, size["width"], size["height"], policy) for v in range(views)]
                  for k, size in zip(keys, sizes)]
        masks = masks_for(mask_policy, seed, [k for k in keys for _ in range(views)],
                          [v for _ in keys for v in range(views)])
        n = len(keys)
        rows = SidecarRows(
            keys=keys,
            box=np.array([[v.box for v in vs] for vs in chosen], np.int32).reshape(n, views, 4),
            flip=np.array([[v.flip for v in vs] for vs in chosen], bool).reshape(n, views),
            jitter=np.array([[v.jitter for v in vs] for vs in chosen], np.float32).reshape(n, views, 3),
            jitter_order=np.array([[v.jitter_order for v in vs] for vs in chosen], np.int8).reshape(n, views, 3),
            tokens=np.array([[fixture_tokens(seed, k, v, n_patches) for v in range(views)] for k in keys],
                            np.uint16).reshape(n, views, n_patches),
            mask=pack_masks(masks).reshape(n, views, -1))
        name = f"tokens/{token_id}/{split}/{Path(shard['name']).stem}.parquet"
        data = write_sidecar(root / name, rows, {"image_shard": shard["name"], "count": n, "views": views,
                                                 "grid": list(grid)})
        sidecars.append({"name": name, "image_shard": shard["name"], "image_sha256": shard["sha256"], "count": n,
                         "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"format": TOKENS_FORMAT, "version": TOKENS_VERSION,
                "tokenizer": {"kind": "fixture", "weights_sha256": "0" * 64, "vocab_size": VOCAB,
                              "input_size": resolution // 2, "interpolation": "lanczos"},
                "resolution": resolution, "grid": list(grid), "views": views, "seed": seed,
                "view_policy": policy.to_dict(), "mask_policy": mask_policy.to_dict(),
                "splits": {split: {"count": sum(c["count"] for c in sidecars), "sidecars": sidecars}}}
    write_json(token_dir(root, token_id) / "manifest.json", manifest)
    return manifest


def stored_view(root: Path, manifest: dict, key: str, view: int) -> tuple[View, bytes, np.ndarray, np.ndarray]:
    """(View, jpeg, tokens, packed mask) of ``key``'s stored ``view``, read straight from the files."""
    from beit_data.sidecars import read_sidecar

    for car in manifest["splits"]["train"]["sidecars"]:
        rows = read_sidecar(root / car["name"])
        if key in rows.keys:
            i = rows.keys.index(key)
            parts = dict(shard_samples(root, car["image_shard"]))[key]
            v = View(rows.box[i, view], rows.flip[i, view], rows.jitter[i, view], rows.jitter_order[i, view])
            return v, parts["jpg"], rows.tokens[i, view], rows.mask[i, view]
    raise KeyError(key)


def rendered(jpeg: bytes, view: View, size: int, interpolation: str = "bicubic") -> Image.Image:
    (picture,) = render_views(jpeg, view, [(size, interpolation)])
    return picture
