"""BEiT masked-image-modeling pretraining from image shards + a token set.

Runs as one process, or under `torchrun --nproc-per-node N -m jobs.pretrain ...`
(DDP; each rank reads its own share of the shards). Checkpoints resume exactly
(model, optimiser, schedule, step and loader position).
"""
from __future__ import annotations

import argparse
import sys

from jobs.train_args import add_common, common_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, epochs=800, lr=1.5e-3, warmup=10, batch=128)
    p.add_argument("--tokens", help="token-set id under ROOT/tokens (default: the only one)")
    p.add_argument("--model", default="base", help="tiny | base | large | path to a BeitConfig JSON")
    p.add_argument("--split", default="train")


def run(args: argparse.Namespace) -> int:
    from beit_data import pretraining_loader
    from beit_data.errors import BeitDataError
    from beit_data.inspect import token_sets
    from beit_data.loader import HALF
    from beit_data.loader.storage import Storage
    from beit_data.train import PretrainConfig, run_pretrain
    from beit_data.train.dist import default_device

    token_id = args.tokens
    if token_id is None:
        found = token_sets(args.root) if "://" not in args.root else []
        if len(found) != 1:
            raise BeitDataError(f"give --tokens ID (token sets under {args.root}/tokens: {', '.join(found) or 'none'})")
        token_id = found[0]
    # colour jitter and normalisation on the accelerator; when training on the CPU the workers jitter
    on_accelerator = default_device(args.device).type != "cpu"
    loader = pretraining_loader(args.root, tokens=token_id, split=args.split, batch_size=args.batch_size,
                                seed=args.seed, num_workers=args.num_workers, uint8=True,
                                jitter_on_device=on_accelerator)
    manifest = Storage(args.root).read_json(f"tokens/{token_id}/manifest.json", "run 'beit-data tokenize'")
    cfg = PretrainConfig(**common_config(args), model=args.model, image_size=int(manifest["resolution"]),
                         vocab_size=int(manifest["tokenizer"]["vocab_size"]), pixel_mean=HALF, pixel_std=HALF)
    run_pretrain(cfg, loader)
    return 0


if __name__ == "__main__":
    from jobs.cli import run_module
    sys.exit(run_module("jobs.pretrain"))
