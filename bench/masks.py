"""Benchmark: masks/s of the batched BEiT mask generators vs the per-mask loop, same run.

Baseline: ``beit_data.masks.reference_mask``, the plain per-mask Python loop written the way
BEiT's ``MaskingGenerator`` is: Python ``random``, a numpy sum per try, and patches painted
one at a time. Measured:

* ``generate_masks`` (numpy, one thread) on batches of ``--batch`` masks. Goal: ratio >= 50,
  at 14×14 / 75 and at 24×24 / 220;
* ``masks_for`` (one seeded stream per row, as the tokenize job calls it), for information;
* ``generate_masks_torch`` on CUDA when a GPU is present, for information.

CPU rates count process CPU time (``time.process_time``): on an idle machine that is the
wall time of these one-thread runs, and on a busy one it stays steady. The loop and the
batched generator take turns, and each rate is the best of ``--repeats`` turns. CUDA
rates count wall time.

    python -m bench.masks [--batch 16384] [--loop 2000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def gpu_rate(count: int, repeats: int, fn: Callable[[], object]) -> float:
    """Items per wall second of the fastest of ``repeats`` calls of ``fn``, after one warm-up."""
    import torch

    fn()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16384, help="masks per batched call")
    parser.add_argument("--loop", type=int, default=2000, help="masks per timed run of the per-mask loop")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    import torch

    from beit_data.masks import MaskPolicy, generate_masks, generate_masks_torch, masks_for, reference_mask
    from bench.report import best_rates, report

    torch.set_num_threads(1)
    for resolution in (224, 384):
        policy = MaskPolicy.for_resolution(resolution)
        label = f"{policy.grid[0]}x{policy.grid[1]}/{policy.num_masking}"
        loop_rng, rng = random.Random(0), np.random.default_rng(0)
        keys = [f"n01440764_{i}" for i in range(args.loop)]
        rates = best_rates(args.repeats, {
            "loop": (args.loop, lambda: [reference_mask(policy, loop_rng) for _ in range(args.loop)]),
            "batched": (args.batch, lambda: generate_masks(policy, args.batch, rng)),
            "masks_for": (args.loop, lambda: masks_for(policy, 0, keys, [0] * len(keys))),
        })
        baseline = "per-mask loop (BEiT's algorithm)"
        report(f"generate_masks {label}, batch {args.batch}", rates["batched"], baseline, rates["loop"], "masks/s", goal=50)
        report(f"masks_for {label} (seeded stream per row)", rates["masks_for"], baseline, rates["loop"], "masks/s")
        if torch.cuda.is_available():
            generator = torch.Generator(device="cuda").manual_seed(0)
            on_gpu = gpu_rate(args.batch, args.repeats, lambda: generate_masks_torch(policy, args.batch, generator))
            report(f"generate_masks_torch {label} on CUDA, batch {args.batch}", on_gpu, baseline, rates["loop"], "masks/s")


if __name__ == "__main__":
    main()
