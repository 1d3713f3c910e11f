"""Summarise a dataset root, or draw one sample's views, masks and tokens to a PNG.

Without --png: splits, classes, counts, bytes, repaired and quarantined inputs,
token sets with their views and mask policy. With --png: per view, the source
with its crop box, the view's picture, the mask overlay, the token grid as a
colour map and (with --decoder) the dVAE reconstruction from the tokens.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path)
    p.add_argument("--split", default="train")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--key", help="sample key")
    which.add_argument("--index", type=int, default=0, help="sample position in the split (default 0)")
    p.add_argument("--tokens", help="token-set id (default: the first)")
    p.add_argument("--png", type=Path, help="write the sample picture here")
    p.add_argument("--decoder", type=Path, help="OpenAI's decoder.pkl, to draw reconstructions from the tokens")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling --decoder")


def run(args: argparse.Namespace) -> int:
    from beit_data.inspect import dalle_decoder, sample_picture, summary

    if args.png is None:
        print(summary(args.root))
        return 0
    decode = dalle_decoder(args.decoder, args.trust_pickle) if args.decoder else None
    sheet = sample_picture(args.root, args.split, args.key, None if args.key else args.index, args.tokens, decode)
    sheet.save(args.png)
    print(f"wrote {args.png} ({sheet.width}x{sheet.height})")
    return 0


if __name__ == "__main__":
    from jobs.cli import run_module
    sys.exit(run_module("jobs.inspect"))
