"""The MIM pretraining stream: image shards + a token set → pixels, visual tokens and masks.

Each epoch a sample shows one of its K stored views, ``(epoch + offset) mod K`` with ``offset`` drawn from
``stream_id(seed, "loader-view", key)`` (a hash), so K consecutive epochs use all K. The pixels are rendered from the
view's stored box, flip and colour jitter by :func:`beit_data.views.render_views`, the function the tokenize
job rendered the tokenizer input with, at the token set's resolution; the view's tokens and unpacked mask
ride along. With ``uint8=True, jitter_on_device=True`` the pixels leave the worker before their colour jitter,
with the view's factors and order, and :func:`normalize` (or :func:`apply_color_jitter`) applies it where the
batch goes, with the same bytes as a render on the CPU (:mod:`beit_data.color`): the jitter is most of a view's
CPU cost and next to nothing on an accelerator. On request the tokenizer's input
is rendered too (with its jitter), by its own call with the token manifest's ``[(input_size, interpolation)]``
exactly as the tokenize job made it (a picture depends on the sizes list it is rendered with: the JPEG draft
scale and the contrast grey).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch

from ..masks import unpack_masks
from ..rng import stream_id
from ..sidecars import SidecarRows
from ..views import View, render_views, to_tensor_uint8
from .core import IMAGENET_MEAN, IMAGENET_STD, JITTER, JITTER_ORDER, Batch, Recipe, StreamLoader, normalize, open_stream
from .manifests import image_manifest, token_manifest, token_shards
from .storage import Storage
from .stream import Record


class MimRecipe(Recipe):
    """One sample's view → ``pixel_values`` uint8, ``bool_masked_pos`` and ``visual_tokens``; normalised per batch."""

    def __init__(self, *, seed: int, views: int, grid: tuple[int, int], pixels: tuple[int, str],
                 tokenizer_input: tuple[int, str] | None, uint8: bool, jitter_on_device: bool,
                 mean: Sequence[float], std: Sequence[float], keys: bool) -> None:
        self.sidecar_shape = (views, grid[0] * grid[1])
        self.seed, self.views, self.grid = seed, views, grid
        self.pixels, self.tokenizer_input = pixels, tokenizer_input
        self.uint8, self.jitter_on_device = uint8, jitter_on_device
        self.mean, self.std, self.keys = tuple(mean), tuple(std), keys

    def view_index(self, key: str, epoch: int) -> int:
        """The stored view ``key`` shows in ``epoch``."""
        return (epoch + stream_id(self.seed, "loader-view", key)[0]) % self.views

    def sample(self, record: Record, epoch: int) -> Batch:
        rows, i = cast(SidecarRows, record.sidecar), record.row
        v = self.view_index(record.key, epoch)
        view = View(rows.box[i, v], rows.flip[i, v], rows.jitter[i, v], rows.jitter_order[i, v])
        jpeg = record.parts["jpg"]
        shown = View(view.box, view.flip) if self.jitter_on_device else view
        out: Batch = {"pixel_values": to_tensor_uint8(render_views(jpeg, shown, [self.pixels])[0]),
                      "bool_masked_pos": torch.from_numpy(unpack_masks(rows.mask[i, v], self.grid).reshape(-1)),
                      "visual_tokens": torch.from_numpy(rows.tokens[i, v].astype(np.int64))}
        if self.jitter_on_device:
            out[JITTER] = torch.tensor(view.jitter, dtype=torch.float32)
            out[JITTER_ORDER] = torch.tensor(view.jitter_order, dtype=torch.uint8)
        if self.tokenizer_input is not None:
            out["tokenizer_pixel_values"] = to_tensor_uint8(render_views(jpeg, view, [self.tokenizer_input])[0])
        if self.keys:
            out["key"] = record.key
        return out

    def finish(self, batch: Batch, epoch: int, rank: int, index: int) -> Batch:
        return batch if self.uint8 else normalize(batch, self.mean, self.std)


def pretraining_loader(root: str | os.PathLike, tokens: str, split: str = "train", batch_size: int = 256, *,
                       seed: int = 0, num_workers: int = 0, rank: int | None = None, world_size: int | None = None,
                       uint8: bool = False, jitter_on_device: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD, interpolation: str = "bicubic",
                       tokenizer_pixels: bool = False, shuffle_buffer: int = 1000, drop_last: bool = True,
                       on_error: str = "raise", keys: bool = False, filesystem: Any = None,
                       pin_memory: bool = False, prefetch_factor: int | None = None,
                       timeout: float = 0) -> StreamLoader:
    """MIM pretraining batches of ``split`` for this rank, from image shards and token set ``tokens``.

    Yields ``{"pixel_values": (B, 3, R, R), "bool_masked_pos": bool (B, N), "visual_tokens": int64 (B, N)}``
    with ``R`` the token set's resolution and ``N = gh * gw``. Pixels are float32 normalised with
    ``mean``/``std`` (ImageNet's by default; BEiT's 0.5 is ``beit_data.loader.HALF``) or, with ``uint8=True``,
    left for :func:`normalize` to do on the GPU. With ``uint8``, ``jitter_on_device=True`` leaves the colour
    jitter to :func:`normalize` too (the fastest way to feed a GPU): ``pixel_values`` are then the view before
    its jitter, and the batch carries ``color_jitter`` (B, 3) float32 and ``color_jitter_order`` (B, 3) uint8;
    :func:`apply_color_jitter` gives the finished uint8 pictures. ``tokenizer_pixels=True`` adds
    ``tokenizer_pixel_values`` uint8: the view rendered as the tokenize job rendered the tokenizer's input. ``keys=True`` adds the sample
    keys. Every rank yields ``len(loader)`` full batches; see :class:`StreamLoader` for epochs, resuming
    and ``on_error``, and :mod:`beit_data.loader.plan` for the order.
    """
    if jitter_on_device and not uint8:
        raise ValueError("jitter_on_device=True needs uint8=True: without it the workers normalise, so they jitter too")
    storage = Storage(root, filesystem)
    images = image_manifest(storage)
    manifest = token_manifest(storage, tokens)
    shards = token_shards(storage, images, manifest, tokens, split)
    tokenizer = manifest["tokenizer"]
    recipe = MimRecipe(seed=seed, views=int(manifest["views"]), grid=tuple(manifest["grid"]),
                       pixels=(int(manifest["resolution"]), interpolation),
                       tokenizer_input=(int(tokenizer["input_size"]), tokenizer["interpolation"]) if tokenizer_pixels
                       else None, uint8=uint8, jitter_on_device=jitter_on_device,
                       mean=mean, std=std, keys=keys)
    return open_stream(storage, shards, recipe, split=split, batch_size=batch_size, seed=seed, rank=rank,
                       world_size=world_size, num_workers=num_workers, shuffle=True, shuffle_buffer=shuffle_buffer,
                       drop_last=drop_last, on_error=on_error, pin_memory=pin_memory,
                       prefetch_factor=prefetch_factor, timeout=timeout)
