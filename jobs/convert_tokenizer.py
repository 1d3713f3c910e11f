"""Convert OpenAI's pickled DALL-E encoder.pkl once into encoder.safetensors.

Unpickling runs code from the file, so do it once, on a file you trust; the
safetensors result loads with no unpickling (`beit-data tokenize --weights
encoder.safetensors`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="encoder.pkl from OpenAI's DALL-E release")
    p.add_argument("dst", type=Path, help="where to write encoder.safetensors")


def run(args: argparse.Namespace) -> int:
    from tokenizer import convert_tokenizer, load_encoder

    dst = convert_tokenizer(args.src, args.dst, trust_pickle=True)
    weights = load_encoder(dst)
    enc = weights.encoder
    print(f"converted {args.src} -> {dst}: vocabulary {enc.vocab_size}, n_hid {enc.n_hid}, "
          f"sha256 {weights.sha256[:16]}… (source {weights.source_sha256[:16]}…)")
    return 0


if __name__ == "__main__":
    from jobs.cli import run_module
    sys.exit(run_module("jobs.convert_tokenizer"))
