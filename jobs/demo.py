"""End-to-end demo on the bundled photos: mini-ImageNet -> shards -> tokens -> summary.

Builds a small ImageNet-shaped corpus (ImageFolder train with the real oddities,
flat val with LOC_val_solution.csv) from the public-domain photos shipped in
beit_data/photos, then runs the same jobs a user runs on ImageNet.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="where everything goes (default ./demo-out)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--per-class", type=int, default=16)
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")


def run(args: argparse.Namespace) -> int:
    from beit_data.corpus import build_train, build_val
    from beit_data.sources import read_labels
    from pipelines.ray_session import ensure_ray
    from pipelines.shard import ShardOptions, run_shard_job

    out: Path = args.out
    rows: list[tuple[str, str, str]] = []
    start = time.monotonic()
    print(f"[1/2] building mini-ImageNet from bundled photos in {out}/src", file=sys.stderr)
    train = build_train(out / "src" / "train", classes=args.classes, per_class=args.per_class)
    val = build_val(out / "src" / "val", classes=args.classes, count=4 * args.classes)
    rows.append(("corpus", f"{train.inputs} train + {val.inputs} val inputs "
                 f"({len(train.broken)} broken, {len(train.repaired)} to repair)", str(out / "src")))
    ensure_ray(num_cpus=args.num_cpus)
    print("[2/2] shard job (Ray)", file=sys.stderr)
    root = out / "data"
    for split, corpus, labels in (("train", train, None), ("val", val, read_labels(val.labels))):
        s = run_shard_job(corpus.src, root, ShardOptions(split=split, samples_per_shard=16), labels=labels,
                          names=None, overwrite=True)
        rows.append((f"shard {split}", f"{s['written']} written, {s['repaired']} repaired, "
                     f"{s['quarantined']} quarantined, {s['shards']} shards, "
                     f"{s['written'] / max(s['seconds'], 1e-9):,.0f} images/s", str(root / "images" / split)))
    _table(rows, time.monotonic() - start)
    return 0


def _table(rows: list[tuple[str, str, str]], seconds: float) -> None:
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"\n{'step':{width[0]}}  {'result':{width[1]}}  output")
    for step, result, where in rows:
        print(f"{step:{width[0]}}  {result:{width[1]}}  {where}")
    print(f"\ndemo finished in {seconds:.0f} s")
