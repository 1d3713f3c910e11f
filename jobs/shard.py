"""Shard an ImageNet source into WebDataset tars + manifest.json on Ray.

SRC is an ImageFolder tree (SRC/<synset>/*.JPEG), ILSVRC2012_img_train.tar, or,
with --labels, a flat validation folder or ILSVRC2012_img_val.tar. Also runs as
`python -m jobs.shard SRC OUT ...` (e.g. under `ray job submit`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from beit_data.classes import ClassIndex, read_synset_file
from beit_data.imagecheck import DEFAULT_MAX_PIXELS
from beit_data.sources import read_labels


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="ImageFolder tree or ILSVRC tar")
    p.add_argument("out", type=Path, help="dataset root to write (images/, manifest.json)")
    p.add_argument("--split", default="train", help="split name, e.g. train or val (default train)")
    p.add_argument("--labels", type=Path, help="validation labels: LOC_val_solution.csv or one synset per line")
    p.add_argument("--classes", type=Path, help="class order: one synset per line (optionally with its name)")
    p.add_argument("--names", type=Path, help="synset -> name file (LOC_synset_mapping.txt or imagenet_class_index.json)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--max-shard-bytes", type=int, default=1 << 30, help="cap on source bytes per shard (default 1 GiB)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb limit")
    p.add_argument("--check", choices=["decode", "structure"], default="decode",
                   help="decode: decode every JPEG at 1/8 scale (default); structure: headers + end marker, ~15x cheaper")
    p.add_argument("--overwrite", action="store_true", help="replace shards made with other inputs or options")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress lines, summary only")


def run(args: argparse.Namespace) -> int:
    from pipelines.ray_session import ensure_ray
    from pipelines.shard import ShardOptions, run_shard_job

    options = ShardOptions(split=args.split, seed=args.seed, samples_per_shard=args.samples_per_shard,
                           max_shard_bytes=args.max_shard_bytes, max_pixels=args.max_pixels,
                           decode_check=args.check == "decode")
    classes = names = None
    if args.classes:
        synsets, names = read_synset_file(args.classes)
        classes = ClassIndex(tuple(synsets), names)
    if args.names:
        names = {**(names or {}), **read_synset_file(args.names)[1]}
    labels = read_labels(args.labels) if args.labels else None
    ensure_ray(args.address, args.num_cpus)
    s = run_shard_job(args.src, args.out, options, labels=labels, classes=classes, names=names,
                      overwrite=args.overwrite, quiet=args.quiet)
    print(f"shard {s['split']}: {s['written']} written ({s['repaired']} repaired), {s['quarantined']} quarantined "
          f"of {s['inputs']} inputs; {s['shards']} shards ({s['resumed_shards']} kept from an earlier run), "
          f"{s['bytes'] / 1e6:,.1f} MB in {s['seconds']:.1f} s -> {args.out}/manifest.json")
    if s["quarantined"]:
        print(f"  quarantined inputs and reasons: {args.out}/manifest.json splits.{s['split']}.quarantine",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    from jobs.cli import run_module
    sys.exit(run_module("jobs.shard"))
