"""The tokenize job: image shards -> token sidecars (views, visual tokens, masks), on Ray.

Per image shard, a CPU task reads the tar, samples K views per image and
renders each view's tokenizer input with the shared ``render_views`` (the same
call the loader makes for pixels; ``render_each`` decodes an image once for all
its views that share a JPEG draft scale, with the same pictures); an actor pool (one GPU per actor when the
cluster has GPUs, CPU actors otherwise) encodes the whole shard in large
batches (a CPU actor: on its share of the CPUs as torch threads, in cache-sized
chunks); a CPU task adds the blockwise masks and writes the Parquet sidecar
atomically with a small record under ``ROOT/.state``. At most ``window`` shards
are in flight, so memory is bounded by about
``window x samples_per_shard x K x 3 x input_size^2`` bytes of rendered inputs
(8 shards x 1000 x 2 x 37.6 kB = 0.6 GB at 112 px) plus one sidecar per writer.
A rerun keeps committed sidecars and redoes the rest; outputs are byte-identical
(CPU fp32 tokens; GPU kernels are deterministic per device type).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from beit_data.atomic import dump_json, write_json
from beit_data.color import jitter_batch
from beit_data.errors import BeitDataError
from beit_data.manifest import load_manifest
from beit_data.masks import MaskPolicy, masks_for, pack_masks
from beit_data.progress import Progress
from beit_data.shards import iter_samples
from beit_data.sidecars import TOKENS_FORMAT, TOKENS_VERSION, SidecarRows, token_dir, write_sidecar
from beit_data.views import View, ViewPolicy, render_each, sample_view, to_tensor_uint8
from tokenizer import load_tokenizer

from .ray_session import cluster_cpus
from .resume import claim, committed


@dataclass(frozen=True)
class TokenizeOptions:
    """Everything that decides the bytes of the sidecars (besides the weights)."""

    split: str = "train"
    resolution: int = 224
    views: int = 2
    seed: int = 0
    view_policy: ViewPolicy = field(default_factory=ViewPolicy)
    mask_policy: MaskPolicy | None = None        # default: MaskPolicy.for_resolution(resolution)
    token_interpolation: str = "lanczos"

    def masks(self) -> MaskPolicy:
        return self.mask_policy or MaskPolicy.for_resolution(self.resolution)


@dataclass(frozen=True)
class TokenizerSpec:
    """How each actor loads the tokenizer."""

    weights: str
    trust_pickle: bool = False
    precision: str = "auto"
    batch_size: int = 256


def prepare_shard(root: str, shard: str, options: TokenizeOptions, input_size: int,
                  jitter: bool = True) -> tuple[dict[str, Any], np.ndarray]:
    """Read one image shard, sample K views per image and render their tokenizer inputs
    (``jitter=False``: before their colour jitter, which the encoding actor then applies).

    Returns the views (for the sidecar) and the rendered inputs (for the encoder)
    separately, so the sidecar writer never fetches the pixels."""
    keys, boxes, flips, jitters, orders, inputs = [], [], [], [], [], []
    with open(Path(root) / shard, "rb") as f:
        for key, parts in iter_samples(f, shard):
            meta = json.loads(parts["json"])
            views = [sample_view(options.seed, key, k, meta["width"], meta["height"], options.view_policy)
                     for k in range(options.views)]
            shown = views if jitter else [View(v.box, v.flip) for v in views]
            for (picture,) in render_each(parts["jpg"], shown, [(input_size, options.token_interpolation)]):
                inputs.append(to_tensor_uint8(picture).numpy())
            keys.append(key)
            boxes.append([v.box for v in views])
            flips.append([v.flip for v in views])
            jitters.append([v.jitter for v in views])
            orders.append([v.jitter_order for v in views])
    n, k = len(keys), options.views
    views = {"keys": keys, "box": np.array(boxes, np.int32).reshape(n, k, 4),
             "flip": np.array(flips, bool).reshape(n, k), "jitter": np.array(jitters, np.float32).reshape(n, k, 3),
             "jitter_order": np.array(orders, np.int8).reshape(n, k, 3)}
    return views, np.stack(inputs) if inputs else np.zeros((0, 3, input_size, input_size), np.uint8)


CPU_CHUNK_BYTES = 16 << 20
"""On the CPU the encoder runs in chunks whose widest activation (n_hid x input_size^2 float32
per picture) stays within about this many bytes: 4 pictures for n_hid=64 at 112 px, 1 for the
full-size n_hid=256. Large CPU batches spill the caches: batch 64 costs 1.6x the CPU time per
picture of batch 4 with the small encoder (bench/tokenize.py). CPU tokens do not depend on the
batch they come in (no padding there), so this changes speed, not bytes."""


def cpu_batch_size(encoder: Any, input_size: int, limit: int | None = None) -> int:
    """Pictures per encoder call on the CPU: see :data:`CPU_CHUNK_BYTES` (at most ``limit``)."""
    per_picture = 4 * int(getattr(encoder, "n_hid", 256)) * input_size * input_size
    size = max(1, CPU_CHUNK_BYTES // per_picture)
    size = 1 << (size.bit_length() - 1)  # a power of two
    return max(1, min(size, limit or size))


def _node_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class TokenizerActor:
    """Holds one tokenizer (on a GPU when it has one) and encodes whole shards in batches.

    On the CPU it runs torch on ``threads`` threads (default: every CPU of its node; Ray
    itself would leave a 1-CPU actor on one thread) and encodes in cache-sized chunks
    (:func:`cpu_batch_size`, at most ``spec.batch_size``)."""

    def __init__(self, spec: TokenizerSpec, threads: int | None = None) -> None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = load_tokenizer(spec.weights, trust_pickle=spec.trust_pickle, device=device,
                                        precision=spec.precision, batch_size=spec.batch_size)
        if device == "cpu":
            torch.set_num_threads(max(1, min(threads or _node_cpus(), _node_cpus())))
        self.batch_size = spec.batch_size

    def identity(self) -> dict[str, Any]:
        return self.tokenizer.identity()

    def encode(self, inputs: np.ndarray, views: dict[str, Any] | None = None) -> np.ndarray:
        """Tokens of the rendered ``inputs``; with ``views`` (from :func:`prepare_shard` with ``jitter=False``)
        their colour jitter is applied first, on this actor's device."""
        import torch

        n = len(inputs)
        if not n:
            return np.zeros((0, 0), np.uint16)
        if self.tokenizer.device.type == "cpu":
            self.tokenizer.batch_size = cpu_batch_size(self.tokenizer.encoder, inputs.shape[-1], self.batch_size)
        pixels = torch.from_numpy(inputs)
        if views is not None:
            pixels = jitter_batch(pixels.to(self.tokenizer.device), torch.from_numpy(views["jitter"].reshape(n, 3)),
                                  torch.from_numpy(views["jitter_order"].reshape(n, 3)))
        # one call: the tokenizer chunks (and on CUDA pads) by its batch_size exactly as before,
        # but the host no longer waits for each chunk's tokens before queueing the next one
        return self.tokenizer.encode(pixels).numpy().reshape(n, -1)


def write_sidecar_task(root: str, token_id: str, shard: dict[str, Any], prepared: dict[str, Any],
                       tokens: np.ndarray, options: TokenizeOptions, grid: tuple[int, int]) -> dict[str, Any]:
    """Add masks to one encoded shard, write its sidecar and commit its record."""
    keys, k = prepared["keys"], options.views
    n = len(keys)
    masks = masks_for(options.masks(), options.seed, [key for key in keys for _ in range(k)],
                      [v for _ in keys for v in range(k)])
    rows = SidecarRows(keys=keys, box=prepared["box"], flip=prepared["flip"], jitter=prepared["jitter"],
                       jitter_order=prepared["jitter_order"], tokens=tokens.reshape(n, k, grid[0] * grid[1]),
                       mask=pack_masks(masks).reshape(n, k, -1))
    stem = Path(shard["name"]).stem
    name = f"tokens/{token_id}/{options.split}/{stem}.parquet"
    data = write_sidecar(Path(root) / name, rows, {"image_shard": shard["name"], "count": n, "views": k,
                                                    "grid": list(grid)})
    record = {"name": name, "image_shard": shard["name"], "image_sha256": shard["sha256"], "count": n,
              "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_json(_state_dir(Path(root), token_id, options.split) / f"{stem}.json", record)
    return record


_prepare = ray.remote(num_cpus=1, max_retries=3, num_returns=2)(prepare_shard)
_write = ray.remote(num_cpus=1, max_retries=3)(write_sidecar_task)


def _state_dir(root: Path, token_id: str, split: str) -> Path:
    return root / ".state" / "tokens" / token_id / split


def _header(identity: dict[str, Any], options: TokenizeOptions, input_size: int, grid: tuple[int, int]) -> dict:
    return {"format": TOKENS_FORMAT, "version": TOKENS_VERSION,
            "tokenizer": {**identity, "input_size": input_size, "interpolation": options.token_interpolation},
            "resolution": options.resolution, "grid": list(grid), "views": options.views, "seed": options.seed,
            "view_policy": options.view_policy.to_dict(), "mask_policy": options.masks().to_dict()}


def default_token_id(identity: dict[str, Any], resolution: int) -> str:
    """``<kind>-<resolution>-<first 8 hex of the weights' sha256>``."""
    return f"{identity['kind']}-{resolution}-{identity['weights_sha256'][:8]}"


def run_tokenize_job(root: Path, spec: TokenizerSpec, options: TokenizeOptions, *, token_id: str | None = None,
                     actors: int | None = None, gpus_per_actor: float | None = None, window: int | None = None,
                     overwrite: bool = False, quiet: bool = False,
                     jitter_on_actor: bool | None = None) -> dict[str, Any]:
    """Tokenize ``options.split`` of ``root`` (Ray must be connected); returns a summary of the run.

    ``jitter_on_actor`` (default: when the actors have GPUs) leaves the colour jitter of the tokenizer inputs
    to the actors, on their device (:func:`beit_data.color.jitter_batch`, the same bytes): about a quarter of
    the CPU cost of a view."""
    root = Path(root)
    image_manifest = load_manifest(root)
    if options.split not in image_manifest["splits"]:
        raise BeitDataError(f"split {options.split!r} is not in {root}/manifest.json "
                            f"(has: {', '.join(image_manifest['splits'])})")
    shards = image_manifest["splits"][options.split]["shards"]
    if options.views < 1 or options.resolution % 16:
        raise BeitDataError("--views must be >= 1 and --resolution a multiple of 16 (224 or 384)")
    load_tokenizer(spec.weights, trust_pickle=spec.trust_pickle)  # a bad weights file fails here, in one line
    gpus = ray.cluster_resources().get("GPU", 0)
    gpus_per_actor = (1.0 if gpus else 0.0) if gpus_per_actor is None else gpus_per_actor
    n_actors = actors or (int(gpus // gpus_per_actor) if gpus_per_actor else 1)
    # A CPU actor reserves a CPU only when one is left for the read/render and write tasks
    # (reserving all of them, e.g. --actors 2 on 2 CPUs, would leave those tasks waiting forever).
    actor_cpus = 0 if gpus_per_actor or cluster_cpus() <= max(1, n_actors) else 1
    # CPU actors share the CPUs between them as torch threads (Ray alone would give a 1-CPU actor
    # one thread; the read/render and write tasks are a few percent of the work next to a CPU
    # encoder). Their OpenMP threads sleep rather than spin while they wait, so a busy core
    # (those tasks, or anything else on the machine) slows them down instead of stalling them.
    threads, runtime_env = None, None
    if not gpus_per_actor:
        threads = max(1, cluster_cpus() // max(1, n_actors))
        if "OMP_WAIT_POLICY" not in os.environ:
            runtime_env = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
    jitter_on_actor = bool(gpus_per_actor) if jitter_on_actor is None else jitter_on_actor
    actor_cls = ray.remote(num_gpus=gpus_per_actor, num_cpus=actor_cpus, runtime_env=runtime_env)(TokenizerActor)
    pool = [actor_cls.remote(spec, threads) for _ in range(max(1, n_actors))]
    identity = ray.get(pool[0].identity.remote())  # as the actors run it (device precision included)
    input_size = options.resolution // 2
    grid = (input_size // identity.get("downsample", 8),) * 2
    token_id = token_id or default_token_id(identity, options.resolution)
    header = _header(identity, options, input_size, grid)
    out = token_dir(root, token_id)
    claim(out, root / ".state" / "tokens" / token_id, hashlib.sha256(dump_json(header).encode()).hexdigest(),
          overwrite, f"{out} holds tokens made with another tokenizer or options: give --id NAME for a second "
          "token set beside it, rerun with the same options to resume, or --overwrite")

    records: dict[int, dict[str, Any]] = {}
    progress = Progress(f"tokenize {options.split}", sum(s["count"] for s in shards), quiet=quiet)
    for i, shard in enumerate(shards):
        done = committed(root, _state_dir(root, token_id, options.split) / f"{Path(shard['name']).stem}.json")
        if done is not None and done["image_sha256"] == shard["sha256"]:
            records[i] = done
            progress.skip(done["count"])
    resumed = len(records)
    todo = [i for i in range(len(shards)) if i not in records]
    window = window or max(2, cluster_cpus()) + 2 * len(pool)
    pending: dict[Any, int] = {}
    failures: list[str] = []
    turn = 0
    while todo or pending:
        while todo and len(pending) < window:
            i = todo.pop(0)
            prepared, inputs = _prepare.remote(str(root), shards[i]["name"], options, input_size, not jitter_on_actor)
            tokens = pool[turn % len(pool)].encode.remote(inputs, prepared if jitter_on_actor else None)
            turn += 1
            pending[_write.remote(str(root), token_id, shards[i], prepared, tokens, options, grid)] = i
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            records[i] = ray.get(ready[0])
        except Exception as e:  # report the shard, let the others finish
            cause = getattr(e, "cause", None) or e
            failures.append(f"{shards[i]['name']}: {cause}")
            continue
        progress.update(records[i]["count"])
    progress.close()
    if failures:
        raise BeitDataError(f"{len(failures)} shard(s) could not be tokenized; the others are committed, "
                            "fix these and rerun the same command:\n  " + "\n  ".join(failures))
    sidecars = [records[i] for i in range(len(shards))]
    manifest_path = token_dir(root, token_id) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {**header, "splits": {}}
    manifest["splits"][options.split] = {"count": sum(r["count"] for r in sidecars), "sidecars": sidecars}
    write_json(manifest_path, manifest)
    return {"token_id": token_id, "split": options.split, "count": manifest["splits"][options.split]["count"],
            "sidecars": len(sidecars), "resumed": resumed, "actors": len(pool), "gpus_per_actor": gpus_per_actor,
            "seconds": round(progress.elapsed, 2), "images_per_s": round(progress.done / max(progress.elapsed, 1e-9))}
