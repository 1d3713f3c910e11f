"""Precompute DALL-E visual tokens, views and blockwise masks into per-shard sidecars on Ray.

Reads ROOT/manifest.json and ROOT/images/<split>/*.tar; writes
ROOT/tokens/<id>/<split>/*.parquet and ROOT/tokens/<id>/manifest.json. GPU
actors when the cluster has GPUs, CPU actors otherwise. Also runs as
`python -m jobs.tokenize ROOT ...` (e.g. under `ray job submit`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="dataset root made by 'beit-data shard'")
    p.add_argument("--weights", type=Path, required=True,
                   help="encoder.safetensors (from 'beit-data convert-tokenizer') or OpenAI's encoder.pkl")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling --weights (only for a file you trust; convert it once instead)")
    p.add_argument("--split", default="train")
    p.add_argument("--resolution", type=int, default=224, choices=[224, 384])
    p.add_argument("--views", type=int, default=2, help="views per image (K, default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-jitter", action="store_true", help="switch colour jitter off")
    p.add_argument("--mask-patches", type=int, help="patches to mask (default 75 at 224, 220 at 384)")
    p.add_argument("--mask-min", type=int, default=16, help="minimum patches per mask block (default 16)")
    p.add_argument("--mask-exact", action="store_true", help="top up or trim every mask to exactly N (BEiT v2)")
    p.add_argument("--id", dest="token_id", help="token-set id (default <kind>-<resolution>-<weights sha8>)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--batch-size", type=int, default=256, help="encoder batch size per actor")
    p.add_argument("--actors", type=int, help="tokenizer actors (default: one per GPU, else 1)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from beit_data.masks import MaskPolicy
    from beit_data.views import ViewPolicy
    from pipelines.ray_session import ensure_ray
    from pipelines.tokenize import TokenizeOptions, TokenizerSpec, run_tokenize_job

    base = MaskPolicy.for_resolution(args.resolution)
    masks = MaskPolicy(grid=base.grid, num_masking=args.mask_patches or base.num_masking,
                       min_patches=args.mask_min, exact=args.mask_exact)
    options = TokenizeOptions(split=args.split, resolution=args.resolution, views=args.views, seed=args.seed,
                              view_policy=ViewPolicy(jitter=0.0) if args.no_jitter else ViewPolicy(),
                              mask_policy=masks)
    spec = TokenizerSpec(str(args.weights.resolve()), args.trust_pickle, args.precision, args.batch_size)
    ensure_ray(args.address, args.num_cpus)
    s = run_tokenize_job(args.root, spec, options, token_id=args.token_id, actors=args.actors,
                         overwrite=args.overwrite, quiet=args.quiet)
    where = "GPU" if s["gpus_per_actor"] else "CPU"
    print(f"tokenize {s['split']}: {s['count']} images x {args.views} views -> {s['sidecars']} sidecars "
          f"({s['resumed']} kept from an earlier run) with {s['actors']} {where} actor(s), "
          f"{s['images_per_s']} images/s, {s['seconds']:.1f} s -> {args.root}/tokens/{s['token_id']}")
    return 0


if __name__ == "__main__":
    from jobs.cli import run_module
    sys.exit(run_module("jobs.tokenize"))
