"""Arguments shared by `beit-data pretrain` and `beit-data finetune`."""
from __future__ import annotations

import argparse
from typing import Any


def add_common(p: argparse.ArgumentParser, *, epochs: int, lr: float, warmup: float, batch: int) -> None:
    p.add_argument("root", help="dataset root (path, or URL such as s3://bucket/imagenet)")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, log.jsonl, final model")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch, help=f"per process (default {batch})")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--warmup-epochs", type=float, default=warmup)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--steps-per-epoch", type=int, help="cap on steps per epoch (default: the whole split)")
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=1000, help="checkpoint every N steps (and at the end)")
    p.add_argument("--resume", default="auto", help="auto (latest checkpoint in --out), none, or a checkpoint path")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")


def common_config(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields from the shared arguments."""
    return {"out_dir": args.out, "epochs": args.epochs, "lr": args.lr, "min_lr": args.min_lr,
            "warmup_epochs": args.warmup_epochs, "weight_decay": args.weight_decay,
            "steps_per_epoch": args.steps_per_epoch, "seed": args.seed, "log_every": args.log_every,
            "save_every": args.save_every, "resume": None if args.resume == "none" else args.resume,
            "device": args.device, "drop_path": args.drop_path}
