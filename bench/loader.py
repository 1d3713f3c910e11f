"""Benchmark: images/s per core of the MIM pretraining loader vs BEiT's online pipeline, same photos, same run.

Photos: the bundled public-domain photos as ImageNet-sized JPEGs (longer side 500, e.g. 500x375, q90),
sharded by the shard job, with a token set laid out as the tokenize job writes it (token values do not
affect the loader's speed). Everything runs in this one process on one thread (``num_workers=0``,
``torch.set_num_threads(1)``) and is timed in CPU seconds of this process, so each rate is per core and
other load on the machine does not skew the ratios. The loader yields uint8 pixels before their colour
jitter, with each view's jitter factors (``uint8=True, jitter_on_device=True``); the jitter and the
normalisation run on the accelerator (``beit_data.normalize``, byte for byte the CPU render), which is how it
is meant to be used. Also printed,
without a goal: the same loader with the colour jitter done in the worker (``jitter_on_device=False``, the
default).

Baselines, measured in the same run on the same JPEG bytes:
* BEiT's online pipeline (unilm/beit ``DataAugmentationForBEiT``): decode, ColorJitter(0.4, 0.4, 0.4) on
  the full image, flip, one RandomResizedCrop box rendered twice (224 bicubic, 112 lanczos), ToTensor,
  ImageNet normalisation, DALL-E ``map_pixels``, the per-mask Python loop of BEiT's MaskingGenerator
  (``beit_data.masks.reference_mask``), then batch collation. Goal: ratio >= 2.0.
* decode + RandomResizedCrop(224, bicubic) alone, collated to the loader's (B, 3, 224, 224) uint8.
  Goal: ratio >= 0.8.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_root(work: Path, n: int) -> Path:
    """A sharded root of ``n`` ImageNet-sized photos with the token set "fixture"."""
    from beit_data.corpus import SYNSETS, photo_variant
    from pipelines.ray_session import ensure_ray
    from tests.loader_fixtures import make_token_set, sharded_root

    import ray

    src = work / "src"
    for i in range(n):
        synset = SYNSETS[i % len(SYNSETS)][0]
        out = src / synset / f"{synset}_{i}.JPEG"
        out.parent.mkdir(parents=True, exist_ok=True)
        photo_variant(0, i, size_range=(500, 501)).save(out, format="JPEG", quality=90)
    ensure_ray(num_cpus=os.cpu_count() or 1)
    root = sharded_root(work, src, samples_per_shard=100)
    ray.shutdown()
    make_token_set(root)
    return root


def jpegs(root: Path) -> list[bytes]:
    from tests.loader_fixtures import shard_samples

    import json

    manifest = json.loads((root / "manifest.json").read_text())
    return [parts["jpg"] for s in manifest["splits"]["train"]["shards"] for _, parts in shard_samples(root, s["name"])]


def beit_online(datas: list[bytes], batch: int) -> None:
    """BEiT's DataAugmentationForBEiT + MaskingGenerator per image, collated per batch."""
    import torch
    from dall_e import map_pixels
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import functional as F

    from beit_data.masks import MaskPolicy, reference_mask

    jitter, flip = T.ColorJitter(0.4, 0.4, 0.4), T.RandomHorizontalFlip(0.5)
    crop = T.RandomResizedCrop(224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    normalize = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    policy, rng = MaskPolicy(), random.Random(0)
    samples = []
    for data in datas:
        img = flip(jitter(Image.open(io.BytesIO(data)).convert("RGB")))
        box = crop.get_params(img, crop.scale, crop.ratio)
        pixels = normalize(F.to_tensor(F.resized_crop(img, *box, [224, 224], T.InterpolationMode.BICUBIC)))
        small = F.to_tensor(F.resized_crop(img, *box, [112, 112], T.InterpolationMode.LANCZOS))
        tokenizer_input = map_pixels(small[None])[0]
        samples.append((pixels, tokenizer_input, torch.from_numpy(reference_mask(policy, rng).reshape(-1))))
        if len(samples) == batch:
            [torch.stack(x) for x in zip(*samples)]
            samples = []


def decode_and_crop(datas: list[bytes], batch: int) -> None:
    """Decode + RandomResizedCrop(224, bicubic) per image, collated per batch into the loader's output
    format, (B, 3, 224, 224) uint8."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms as T

    crop = T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC)
    pictures = []
    for data in datas:
        pictures.append(torch.from_numpy(np.array(crop(Image.open(io.BytesIO(data)).convert("RGB")))).permute(2, 0, 1))
        if len(pictures) == batch:
            torch.stack(pictures)
            pictures = []


def loader_epoch(root: Path, batch: int, uint8: bool, jitter_on_device: bool = False) -> int:
    from beit_data import pretraining_loader

    loader = pretraining_loader(root, "fixture", batch_size=batch, uint8=uint8, jitter_on_device=jitter_on_device)
    return sum(len(b["pixel_values"]) for b in loader)


def accelerator_cost(root: Path, batch: int) -> float | None:
    """Seconds per image a CUDA device spends on the colour jitter and normalisation the loader leaves to it
    (``normalize`` on batches already on the device), or None without CUDA."""
    import torch

    from beit_data import normalize, pretraining_loader

    if not torch.cuda.is_available():
        return None
    loader = pretraining_loader(root, "fixture", batch_size=batch, uint8=True, jitter_on_device=True)
    on_device = [{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in loader]
    normalize(on_device[0])  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for b in on_device:
        normalize(b)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / sum(len(b["pixel_values"]) for b in on_device)


def rates(n: int, pipelines: dict, repeats: int) -> dict[str, float]:
    """Images per CPU-second of each pipeline, best of ``repeats`` rounds taken in turn (robust to other load)."""
    best = dict.fromkeys(pipelines, float("inf"))
    for _ in range(repeats):
        for name, fn in pipelines.items():
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
    return {name: n / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import PIL
    import torch

    from bench.report import report

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        root = make_root(work, args.images)
        datas = jpegs(root)
        n = args.images // args.batch * args.batch
        datas = datas[:n]
        mean_size = sum(len(d) for d in datas) / len(datas) / 1e3
        build = "pillow-simd" if "post" in PIL.__version__ else "Pillow"
        print(f"PIL {PIL.__version__} ({build}); {n} JPEGs of {mean_size:.0f} kB, longer side 500; batch {args.batch}; "
              f"one process, one thread")
        r = rates(n, {"ours": lambda: loader_epoch(root, args.batch, uint8=True, jitter_on_device=True),
                      "ours_float": lambda: loader_epoch(root, args.batch, uint8=False),
                      "ours_cpu_jitter": lambda: loader_epoch(root, args.batch, uint8=True),
                      "beit": lambda: beit_online(datas, args.batch),
                      "crop": lambda: decode_and_crop(datas, args.batch)}, args.repeats)
        print(f"pretraining loader, float32 normalised on the CPU instead: {r['ours_float']:,.0f} images/s per core")
        ours = "pretraining loader (uint8, jitter on the accelerator)"
        report(ours, r["ours"], "BEiT online pipeline", r["beit"], "images/s per core", goal=2.0)
        report(ours, r["ours"], "decode + RandomResizedCrop", r["crop"], "images/s per core", goal=0.8)
        cpu = "pretraining loader (uint8, jitter in the worker)"
        report(cpu, r["ours_cpu_jitter"], "BEiT online pipeline", r["beit"], "images/s per core")
        report(cpu, r["ours_cpu_jitter"], "decode + RandomResizedCrop", r["crop"], "images/s per core")
        device = accelerator_cost(root, args.batch)
        if device is None:
            print("no CUDA device: the accelerator's share (colour jitter + normalisation per batch) is not measured")
        else:
            print(f"accelerator's share on {torch.cuda.get_device_name()}: {device * 1e6:.1f} us per image for colour "
                  f"jitter + normalisation, vs {1e6 / r['ours']:.0f} us of CPU per image in the loader")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
