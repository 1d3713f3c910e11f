"""The fine-tuning stream: image shards → ``pixel_values`` and ``labels`` at 384 (or any) resolution.

Training follows BEiT's fine-tuning recipe with torchvision's v2 transforms: RandomResizedCrop
(bicubic, scale 0.08–1), horizontal flip, RandAugment, normalisation, RandomErasing (p 0.25, per-pixel
normal values as timm's ``mode="pixel"``), then per batch MixUp (alpha 0.8) or CutMix (alpha 1.0),
chosen 50/50, and label smoothing 0.1 → soft labels (B, num_classes) float32. Evaluation: bicubic resize
of the shorter side to ``resolution / crop_pct`` and a centre crop (``crop_pct`` 1.0 from 384 up, 224/256
below), hard labels int64.

RandAugment: timm's ``rand-m9-mstd0.5-inc1`` has no exact torchvision twin. We use ``v2.RandAugment(
num_ops=2, magnitude=9, num_magnitude_bins=11)`` so magnitude 9 is 9/10 of each op's range as in timm
(with torchvision's default 31 bins, 9 would be 30 %), with its "increasing" posterize and solarize,
bicubic resampling and the mean pixel as fill. Not reproduced: timm's per-op probability 0.5, the
magnitude noise (std 0.5) and its op set and ranges (torchvision adds Identity, lacks SolarizeAdd);
MixUp/CutMix pair each image with its neighbour (``roll``) where timm uses the reversed batch.

Randomness: each sample's augmentation draws from torch's RNG seeded from ``(seed, epoch, key)`` and each
batch's MixUp/CutMix from ``(seed, epoch, rank, batch index)``, so a run is reproducible whatever the
worker count and a resumed epoch repeats the uninterrupted one; the caller's RNG state is restored.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from ..rng import rng_for
from ..views import open_image
from .core import HALF, Batch, Recipe, StreamLoader, open_stream
from .manifests import image_manifest, image_shards
from .storage import Storage
from .stream import Record


@contextmanager
def _seeded(seed: int, *parts: object) -> Iterator[None]:
    """Torch's CPU RNG seeded from ``rng_for(seed, *parts)`` inside, the caller's state restored after
    (accelerator RNGs are never touched)."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(rng_for(seed, *parts).integers(2**63)))
        yield


class ClassifyRecipe(Recipe):
    """Decode and augment (or centre-crop) one sample; MixUp/CutMix and label smoothing per batch."""

    def __init__(self, *, resolution: int, train: bool, num_classes: int, seed: int, mean: Sequence[float],
                 std: Sequence[float], crop_pct: float | None, rand_augment: tuple[int, int] | None,
                 erase: float, mixup: float, cutmix: float, smoothing: float, keys: bool) -> None:
        bicubic = InterpolationMode.BICUBIC
        if train:
            steps: list[Any] = [v2.RandomResizedCrop(resolution, scale=(0.08, 1.0), interpolation=bicubic),
                                v2.RandomHorizontalFlip()]
            if rand_augment is not None:
                steps.append(v2.RandAugment(num_ops=rand_augment[0], magnitude=rand_augment[1], num_magnitude_bins=11,
                                            interpolation=bicubic, fill=[round(255 * m) for m in mean]))
        else:
            crop_pct = crop_pct or (1.0 if resolution >= 384 else 224 / 256)
            steps = [v2.Resize(int(resolution / crop_pct), interpolation=bicubic), v2.CenterCrop(resolution)]
        steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        if train and erase > 0:
            steps.append(v2.RandomErasing(p=erase, value="random"))
        self.transform = v2.Compose(steps)
        mixers = [kind(alpha=alpha, num_classes=num_classes)
                  for alpha, kind in ((mixup, v2.MixUp), (cutmix, v2.CutMix)) if alpha > 0]
        self.mix = v2.RandomChoice(mixers) if mixers else None
        self.train, self.seed, self.keys = train, seed, keys
        self.num_classes, self.smoothing = num_classes, smoothing

    def sample(self, record: Record, epoch: int) -> Batch:
        image = open_image(record.parts["jpg"])
        if self.train:
            with _seeded(self.seed, "finetune-sample", epoch, record.key):
                pixels = self.transform(image)
        else:
            pixels = self.transform(image)
        out: Batch = {"pixel_values": pixels, "labels": torch.tensor(int(record.parts["cls"]))}
        if self.keys:
            out["key"] = record.key
        return out

    def finish(self, batch: Batch, epoch: int, rank: int, index: int) -> Batch:
        if not self.train:
            return batch
        labels = batch["labels"]
        if self.mix is not None:
            with _seeded(self.seed, "finetune-batch", epoch, rank, index):
                batch["pixel_values"], labels = self.mix(batch["pixel_values"], labels)
        else:
            labels = torch.nn.functional.one_hot(labels, self.num_classes).float()
        batch["labels"] = labels * (1 - self.smoothing) + self.smoothing / self.num_classes
        return batch


def finetuning_loader(root: str | os.PathLike, split: str = "train", resolution: int = 384, batch_size: int = 64, *,
                      train: bool | None = None, seed: int = 0, num_workers: int = 0, rank: int | None = None,
                      world_size: int | None = None, mean: Sequence[float] = HALF, std: Sequence[float] = HALF,
                      crop_pct: float | None = None, rand_augment: tuple[int, int] | None = (2, 9),
                      erase: float = 0.25, mixup: float = 0.8, cutmix: float = 1.0, smoothing: float = 0.1,
                      shuffle_buffer: int = 1000, drop_last: bool | None = None, on_error: str = "raise",
                      keys: bool = False, filesystem: Any = None, pin_memory: bool = False,
                      prefetch_factor: int | None = None, timeout: float = 0) -> StreamLoader:
    """Fine-tuning (``train``, default for split "train") or evaluation batches of ``split`` for this rank.

    Yields ``{"pixel_values": float32 (B, 3, R, R) normalised, "labels": ...}``: soft float32
    (B, num_classes) when training, int64 (B,) otherwise. Training shuffles (shards and a buffer of
    ``shuffle_buffer``) and drops the epoch's remainder (``drop_last``); evaluation reads in manifest order
    and pads the last rank's share with at most ``world_size - 1`` repeats. ``root`` is a path or URL,
    ``filesystem`` an optional fsspec or pyarrow filesystem; see :class:`StreamLoader` for the rest.
    """
    storage = Storage(root, filesystem)
    manifest = image_manifest(storage)
    train = split == "train" if train is None else train
    recipe = ClassifyRecipe(resolution=resolution, train=train, num_classes=len(manifest["classes"]), seed=seed,
                            mean=mean, std=std, crop_pct=crop_pct, rand_augment=rand_augment, erase=erase,
                            mixup=mixup, cutmix=cutmix, smoothing=smoothing, keys=keys)
    return open_stream(storage, image_shards(storage, manifest, split), recipe, split=split, batch_size=batch_size,
                       seed=seed, rank=rank, world_size=world_size, num_workers=num_workers, shuffle=train,
                       shuffle_buffer=shuffle_buffer, drop_last=train if drop_last is None else drop_last,
                       on_error=on_error, pin_memory=pin_memory, prefetch_factor=prefetch_factor, timeout=timeout)
