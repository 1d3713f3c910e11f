"""Verify shards and token sidecars against their manifests; exit 0 if clean, 1 otherwise.

Full mode checks sha256 of every file, sample counts, keys aligned between
shards and sidecars, tokens inside the vocabulary and mask sizes; --quick checks
presence and sizes only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path)
    p.add_argument("--quick", action="store_true", help="presence and sizes only (no hashing or reading)")


def run(args: argparse.Namespace) -> int:
    from beit_data.verify import verify

    problems = 0
    for line in verify(args.root, quick=args.quick):
        print(line)
        problems += 1
    print(f"verify {args.root}: {'OK' if not problems else f'{problems} problem(s)'}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    from jobs.cli import run_module
    sys.exit(run_module("jobs.verify"))
