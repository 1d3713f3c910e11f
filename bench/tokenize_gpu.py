"""GPU throughput of the DALL-E tokenizer against dall_e's own forward, measured in the same run.

A full-size ``dall_e.Encoder`` (n_hid=256, vocab 8192) with random weights, so
nothing is downloaded. At 112 px (224 views) and 192 px (384 views) it prints
images/s for

* ``dall_e``: the baseline, ``Encoder.forward`` on CUDA (its own fp16 convs, NCHW)
* ``fp16`` / ``bf16``: ``DalleTokenizer`` (weights cast once, channels_last,
  float32 output conv on TF32) at each ``--batches`` size, GPU-resident input
* ``fp16 host``: the same fed from pinned host memory, as the tokenize job is

with the ratio to the baseline, the fraction of tokens equal to the exact
float32 graph, and achieved TFLOP/s against the dense bf16 peak (989 TFLOP/s
on H200; FLOPs counted from the model's conv shapes, ~52 GFLOP per 112 px
image). Goal: 7,500 img/s at 112 on one H200. Runs in under 5 minutes; exits
0 with a message when CUDA is absent.

    python bench/tokenize_gpu.py [--batches 128,256,512] [--seconds 4] [--compile] [--cudnn-benchmark]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from dall_e import Encoder, map_pixels
from dall_e.utils import Conv2d

from tokenizer import DalleTokenizer

GOAL_112 = 7500.0


def conv_flops(encoder: Encoder, size: int) -> int:
    """Multiply-adds x 2 of every conv for one size x size picture (group k runs at size / 2**(k-1))."""
    total = 0
    for name, module in encoder.blocks.named_modules():
        if isinstance(module, Conv2d):
            stage = name.split(".")[0]  # input, group_1 .. group_4 or output
            if stage == "input":
                side = size
            elif stage == "output":
                side = size // 8
            else:
                side = size >> (int(stage.removeprefix("group_")) - 1)
            total += 2 * module.n_out * module.n_in * module.kw ** 2 * side * side
    return total


def photo_like(count: int, size: int, device: str, seed: int = 0) -> torch.Tensor:
    """Smooth colour fields with some grain: closer to photos than uniform noise."""
    generator = torch.Generator(device).manual_seed(seed)
    low = torch.rand(count, 3, size // 8, size // 8, generator=generator, device=device)
    grain = torch.randn(count, 3, size, size, generator=generator, device=device) * 0.03
    return (F.interpolate(low, size=size, mode="bicubic") + grain).clamp(0, 1).mul(255).round().to(torch.uint8)


def throughput(encode: Callable[[torch.Tensor], object], images: torch.Tensor, seconds: float) -> float:
    """Images per second of ``encode`` on ``images``, after two warm-up calls."""
    for _ in range(2):
        encode(images)
    torch.cuda.synchronize()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        encode(images)
        done += images.shape[0]
    torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="128,256,512", help="batch sizes to try for fp16/bf16")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per measurement")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H200: 989)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd fp16/bf16 graphs (at the middle batch size)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its algorithms (faster, but tokens may then vary between runs)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("tokenize_gpu: skipped, no CUDA device (this benchmark needs a GPU)")
        return 0
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    batches = [int(b) for b in args.batches.split(",")]
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  cudnn {torch.backends.cudnn.version()}"
          f"  cudnn.benchmark={args.cudnn_benchmark}")

    torch.manual_seed(0)
    encoder = Encoder().eval()  # n_hid=256, vocab 8192, as OpenAI's encoder.pkl
    native = copy.deepcopy(encoder).cuda()

    def dall_e_forward(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return native(map_pixels(images.float() / 255)).argmax(dim=1)

    best_112 = 0.0
    for size in (112, 192):
        flops = conv_flops(encoder, size)
        print(f"\n{size} px -> {size // 8}x{size // 8} tokens: {flops / 1e9:.1f} GFLOP/img from conv shapes, "
              f"bf16 roofline {args.peak_tflops * 1e12 / flops:,.0f} img/s")
        print(f"{'path':<16}{'batch':>6}{'img/s':>10}{'x dall_e':>10}{'= fp32':>9}{'TFLOP/s':>9}{'roofline':>9}")
        check = photo_like(256, size, "cuda", seed=1)

        def row(label: str, batch: int, rate: float, baseline: float, agree: str) -> None:
            print(f"{label:<16}{batch:>6}{rate:>10,.0f}{rate / baseline:>10.2f}{agree:>9}"
                  f"{rate * flops / 1e12:>9.0f}{rate * flops / 1e12 / args.peak_tflops:>9.1%}")

        base_batch = batches[len(batches) // 2]
        baseline = throughput(dall_e_forward, photo_like(base_batch, size, "cuda"), args.seconds)
        reference = DalleTokenizer(encoder, "random-init", device="cuda", precision="fp32", batch_size=base_batch)
        exact = reference.encode(check).to(torch.int32)
        same = (dall_e_forward(check).cpu().to(torch.int32) == exact).float().mean().item()
        row("dall_e", base_batch, baseline, baseline, f"{same:.2%}")
        runs = [(p, b, False) for p in ("fp16", "bf16") for b in batches]
        runs += [(p, base_batch, True) for p in ("fp16", "bf16")] if args.compile else []
        for precision, batch, compiled in runs:
            tokenizer = DalleTokenizer(encoder, "random-init", device="cuda", precision=precision, batch_size=batch)
            if compiled:
                tokenizer.compile()
            rate = throughput(tokenizer.encode, photo_like(batch, size, "cuda"), args.seconds)
            row(f"{precision}{' compiled' if compiled else ''}", batch, rate, baseline,
                f"{tokenizer.agreement(check):.2%}")
            if size == 112:
                best_112 = max(best_112, rate)
        tokenizer = DalleTokenizer(encoder, "random-init", device="cuda", precision="fp16", batch_size=base_batch)
        host = photo_like(base_batch, size, "cuda").cpu().pin_memory()
        row("fp16 host", base_batch, throughput(tokenizer.encode, host, args.seconds), baseline, "")
        del tokenizer, reference
        torch.cuda.empty_cache()

    verdict = "met" if best_112 >= GOAL_112 else "NOT met"
    print(f"\nsummary: best {best_112:,.0f} img/s at 112 px (GPU-resident input); goal {GOAL_112:,.0f} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
