"""The DALL-E dVAE encoder as a visual tokenizer (BEiT v1's MIM target).

Preprocessing is BEiT's: uint8 pixels / 255 through ``dall_e.map_pixels``
(x * 0.8 + 0.1), and a token is the argmax of the encoder's vocabulary logits.
Pictures arrive already rendered at the tokenizer input size
(:meth:`DalleTokenizer.input_size_for`: 112 for 224 views, 192 for 384).

Precisions, all under ``torch.inference_mode``:

* ``fp32`` (the CPU path): the exact float32 graph.
* ``fp16`` (the CUDA default): DALL-E's own mixed precision. ``dall_e.Conv2d``
  casts to half on CUDA for every conv but the output one, whatever the
  Encoder's ``use_mixed_precision`` says (that flag is never read); the output
  conv stays float32, here on TF32 tensor cores. Weights are cast once and kept
  channels_last.
* ``bf16``: the same with bfloat16.

On CUDA every chunk is padded to ``batch_size``, so a picture's tokens never
depend on how many pictures came with it.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from dall_e import Encoder, map_pixels
from dall_e.encoder import EncoderBlock
from dall_e.utils import Conv2d

from tokenizer.weights import load_encoder

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_Conv = tuple[torch.Tensor, torch.Tensor]


class DalleTokenizer:
    """Batched DALL-E tokens; implements :class:`tokenizer.base.VisualTokenizer`.

    ``encoder`` (float32) is kept as given and is the reference for
    :meth:`agreement`; the graph that runs is built from it on ``device`` in
    ``precision`` ('auto' is fp16 on CUDA, fp32 elsewhere). ``encode`` works
    in chunks of ``batch_size`` (default 256 on CUDA, 16 on the CPU); on CUDA
    a short last chunk is padded, so calls with multiples of it waste nothing.
    """

    kind = "dalle"
    downsample = 8

    def __init__(self, encoder: Encoder, weights_sha256: str, *, source_sha256: str | None = None,
                 device: str | torch.device = "cpu", precision: str = "auto",
                 batch_size: int | None = None) -> None:
        self.device = _resolve_device(device)
        self.precision = _resolve_precision(precision, self.device)
        self.encoder = encoder
        self.vocab_size = int(encoder.vocab_size)
        self.weights_sha256 = weights_sha256
        self.source_sha256 = source_sha256
        cuda = self.device.type == "cuda"
        self.batch_size = batch_size or (256 if cuda else 16)
        self._runner = _Runner(encoder, self.device, _DTYPES[self.precision], channels_last=cuda,
                               tf32=self.precision != "fp32")
        self._reference: _Runner | None = None

    def identity(self) -> dict[str, Any]:
        """Tokenizer identity for token-set manifests."""
        return {"kind": self.kind, "weights_sha256": self.weights_sha256, "source_sha256": self.source_sha256,
                "vocab_size": self.vocab_size, "downsample": self.downsample, "precision": self.precision}

    def input_size_for(self, resolution: int) -> int:
        """112 for 224 views, 192 for 384: DALL-E sees the view at half resolution."""
        if resolution <= 0 or resolution % (2 * self.downsample):
            raise ValueError(f"resolution {resolution} must be a positive multiple of {2 * self.downsample} "
                             f"so that the DALL-E input ({resolution}/2) splits into {self.downsample}-pixel tokens")
        return resolution // 2

    def encode(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 pictures (any device) -> (B, H/8, W/8) uint16 tokens on the CPU."""
        self._check(images_uint8)
        return self._encode(self._runner, images_uint8)

    def agreement(self, images_uint8: torch.Tensor) -> float:
        """Fraction of tokens where this precision equals the exact float32 graph on the same device."""
        self._check(images_uint8)
        if self.precision == "fp32":
            return 1.0
        if self._reference is None:
            self._reference = _Runner(self.encoder, self.device, torch.float32, channels_last=False, tf32=False)
        fast = self._encode(self._runner, images_uint8)
        exact = self._encode(self._reference, images_uint8)
        return float((fast == exact).float().mean())

    def compile(self, **options: Any) -> None:
        """Run the graph through ``torch.compile(**options)`` from the next batch on (CUDA paths)."""
        self._runner.run = torch.compile(self._runner.forward, **options)

    def _check(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"encode expects a (B, 3, H, W) uint8 tensor, got {got}")
        _, channels, height, width = images.shape
        if channels != self.encoder.input_channels or height % self.downsample or width % self.downsample:
            raise ValueError(f"encode expects (B, {self.encoder.input_channels}, H, W) with H and W multiples of "
                             f"{self.downsample}, got {tuple(images.shape)}")

    def _encode(self, runner: _Runner, images: torch.Tensor) -> torch.Tensor:
        count, _, height, width = images.shape
        step, pad = self.batch_size, self.device.type == "cuda"
        parts = []
        with torch.inference_mode(), _cudnn_tf32(runner.tf32):
            for start in range(0, count, step):
                chunk = images[start:start + step].to(self.device, non_blocking=True)
                real = chunk.shape[0]
                if pad and real < step:
                    chunk = torch.cat([chunk, chunk.new_zeros((step - real, *chunk.shape[1:]))])
                logits = runner.run(map_pixels(chunk.float() / 255))
                parts.append(logits[:real].argmax(dim=1).to(torch.int32))
        if not parts:
            return torch.empty((0, height // self.downsample, width // self.downsample), dtype=torch.uint16)
        return torch.cat(parts).cpu().to(torch.uint16)


def load_tokenizer(path: str | os.PathLike, trust_pickle: bool = False, device: str | torch.device = "cpu",
                   precision: str = "auto", *, vocab_size: int | None = None,
                   batch_size: int | None = None) -> DalleTokenizer:
    """A :class:`DalleTokenizer` from a .safetensors file, or from a pickle when ``trust_pickle``.

    ``precision`` is 'auto' (fp16 on CUDA, fp32 elsewhere), 'fp32', 'fp16' or
    'bf16'; ``vocab_size``, when given, is checked against the file.
    """
    weights = load_encoder(path, trust_pickle=trust_pickle, vocab_size=vocab_size)
    return DalleTokenizer(weights.encoder, weights.sha256, source_sha256=weights.source_sha256,
                          device=device, precision=precision, batch_size=batch_size)


class _Runner:
    """dall_e.Encoder's graph over weights cast once: convs in ``dtype``, the output conv in float32."""

    def __init__(self, encoder: Encoder, device: torch.device, dtype: torch.dtype, *,
                 channels_last: bool, tf32: bool) -> None:
        self.dtype, self.tf32 = dtype, tf32
        self.layout = torch.channels_last if channels_last else torch.contiguous_format

        def cast(conv: Conv2d, to: torch.dtype = dtype) -> _Conv:
            return (conv.w.detach().to(device, to, memory_format=self.layout), conv.b.detach().to(device, to))

        blocks = encoder.blocks
        self.stem = cast(blocks.input)
        self.groups: list[tuple[list[tuple[_Conv | None, list[_Conv], float]], bool]] = []
        for name, group in blocks.named_children():
            if name.startswith("group_"):
                stages = [(cast(b.id_path) if isinstance(b.id_path, Conv2d) else None,
                           [cast(m) for m in b.res_path if isinstance(m, Conv2d)], float(b.post_gain))
                          for b in group if isinstance(b, EncoderBlock)]
                self.groups.append((stages, any(isinstance(m, torch.nn.MaxPool2d) for m in group)))
        self.head = cast(blocks.output.conv, torch.float32)
        self.run: Callable[[torch.Tensor], torch.Tensor] = self.forward  # or its torch.compile'd form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mapped float32 pixels (B, C, H, W) -> float32 vocabulary logits (B, V, H/8, W/8)."""
        x = _conv(x.to(self.dtype, memory_format=self.layout), self.stem)
        for stages, pooled in self.groups:
            for skip_conv, res_convs, gain in stages:
                skip, h = (x if skip_conv is None else _conv(x, skip_conv)), x
                for conv in res_convs:
                    h = _conv(F.relu(h), conv)
                x = torch.add(skip, h, alpha=gain)
            if pooled:
                x = F.max_pool2d(x, 2)
        return _conv(F.relu(x).float(), self.head)


def _conv(x: torch.Tensor, conv: _Conv) -> torch.Tensor:
    weight, bias = conv
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)


@contextmanager
def _cudnn_tf32(enabled: bool) -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def _resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use device='cpu'")
    return device


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in _DTYPES:
        raise ValueError(f"precision {precision!r} is not one of auto, fp32, fp16, bf16")
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device; on {device} use fp32")
    return precision
