"""Fine-tune BEiT for classification (384 by default) from a pretraining run or a HF BEiT folder.

224 -> 384 rewrites the relative-position bias tables with BEiT's
geometric-progression cubic interpolation. Evaluates top-1/top-5 on the
validation split after each epoch and saves the result with save_pretrained
(OUT/final loads with BeitForImageClassification.from_pretrained). Also runs
under `torchrun --nproc-per-node N -m jobs.finetune ...`.
"""
from __future__ import annotations

import argparse
import sys

from jobs.train_args import add_common, common_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, epochs=100, lr=4e-3, warmup=20, batch=64)
    p.add_argument("--init", help="pretraining run folder or checkpoint, or a local HF BEiT folder (default: random)")
    p.add_argument("--model", default="base", help="size for a random init: tiny | base | large | CONFIG.json")
    p.add_argument("--resolution", type=int, default=384)
    p.add_argument("--layer-decay", type=float, default=0.65)
    p.add_argument("--mixup", type=float, default=0.8)
    p.add_argument("--cutmix", type=float, default=1.0)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--split", default="train")
    p.add_argument("--val-split", default="val", help="evaluated after each epoch when present ('' for none)")


def run(args: argparse.Namespace) -> int:
    from beit_data import finetuning_loader
    from beit_data.loader import HALF
    from beit_data.loader.storage import Storage
    from beit_data.train import FinetuneConfig, run_finetune

    manifest = Storage(args.root).read_json("manifest.json", "run 'beit-data shard'")
    common = {"resolution": args.resolution, "seed": args.seed, "num_workers": args.num_workers,
              "mean": HALF, "std": HALF}
    train = finetuning_loader(args.root, split=args.split, batch_size=args.batch_size, train=True,
                              mixup=args.mixup, cutmix=args.cutmix, smoothing=args.smoothing, **common)
    val = (finetuning_loader(args.root, split=args.val_split, batch_size=args.batch_size, train=False, **common)
           if args.val_split and args.val_split in manifest["splits"] else None)
    classes = sorted(manifest["classes"], key=lambda c: c["id"])
    cfg = FinetuneConfig(**common_config(args), init=args.init, model=args.model, num_labels=len(classes),
                         labels=[c.get("name") or c["synset"] for c in classes], image_size=args.resolution,
                         layer_decay=args.layer_decay, pixel_mean=HALF, pixel_std=HALF)
    run_finetune(cfg, train, val)
    return 0


if __name__ == "__main__":
    from jobs.cli import run_module
    sys.exit(run_module("jobs.finetune"))
