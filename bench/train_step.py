"""Benchmark: a BEiT MIM training step on stored tokens vs the same step tokenizing online.

Both arms run the trainer's own update (``beit_data.train.engine.train_step``:
forward, masked-token loss, backward, clip 3.0, AdamW) on a ViT-B-size
``BeitForMaskedImageModeling`` with the same batch. The baseline first runs the
full-size DALL-E encoder (``dall_e.Encoder(n_hid=256, vocab_size=8192)``,
random weights, fp32) on the 112-px tokenizer input under ``torch.no_grad``
and takes the argmax, as BEiT's training loop does; stored tokens skip that.
Goal: ratio (online step time / stored step time) >= 1.8.

    python -m bench.train_step [--quick] [--batch 2] [--steps 5]

``--quick`` is a smoke run (tiny BEiT, smallest encoder): its ratio is not the goal's.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny BEiT and n_hid=64 encoder (smoke run)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per arm (after one warm-up each)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from dall_e import Encoder

    from bench.report import report
    from beit_data.train import PretrainConfig
    from beit_data.train.engine import train_step
    from beit_data.train.optim import build_optimizer
    from beit_data.train.pretrain import mim_step, pretrain_model

    device = torch.device(args.device)
    cfg = PretrainConfig(out_dir=tempfile.gettempdir(), model="tiny" if args.quick else "base", vocab_size=8192)
    model = pretrain_model(cfg).to(device).train()
    optimizer, scheduler = build_optimizer(
        model, lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay, betas=cfg.betas, total_steps=10_000,
        warmup_steps=0, num_layers=model.config.num_hidden_layers)
    encoder = Encoder(n_hid=64 if args.quick else 256, vocab_size=8192, device=device).eval()

    g = torch.Generator().manual_seed(0)
    grid = cfg.image_size // model.config.patch_size
    pixels = torch.randn(args.batch, 3, cfg.image_size, cfg.image_size, generator=g).to(device)
    tokenizer_input = torch.rand(args.batch, 3, 112, 112, generator=g).mul(0.8).add(0.1).to(device)  # map_pixels range
    mask = (torch.rand(args.batch, grid * grid, generator=g) < 0.4).to(device)
    stored = torch.randint(0, 8192, (args.batch, grid * grid), generator=g).to(device)

    def stored_step() -> None:
        train_step(model, {"pixel_values": pixels, "bool_masked_pos": mask, "visual_tokens": stored},
                   mim_step, optimizer, scheduler, cfg, device)

    def online_step() -> None:
        with torch.no_grad():
            tokens = encoder(tokenizer_input).argmax(dim=1).flatten(1)
        train_step(model, {"pixel_values": pixels, "bool_masked_pos": mask, "visual_tokens": tokens},
                   mim_step, optimizer, scheduler, cfg, device)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    stored_step()  # warm-up
    online_step()
    times: dict[str, list[float]] = {"stored": [], "online": []}
    for _ in range(args.steps):  # interleaved, so background load hits both arms alike
        times["stored"].append(timed(stored_step))
        times["online"].append(timed(online_step))
    t_stored, t_online = min(times["stored"]), min(times["online"])  # best of: robust to background load
    size = "tiny BEiT (quick)" if args.quick else "ViT-B BEiT"
    print(f"{size}, batch {args.batch} at {cfg.image_size} px, {device}, {torch.get_num_threads()} threads; "
          f"best of {args.steps} steps per arm")
    report(f"MIM train step, stored tokens ({size})", t_stored, "same step + DALL-E encoder online", t_online,
           "s/step", goal=None if args.quick else 1.8, higher_is_better=False)


if __name__ == "__main__":
    main()
