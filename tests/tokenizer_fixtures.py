"""Test helpers: a small DALL-E encoder pickled like OpenAI's encoder.pkl, and reference tokens.

``reference_tokens`` is written independently of ``tokenizer/`` (plain
``dall_e`` calls) so tests can cross-check the tokenizer against it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from dall_e import Encoder, map_pixels


def make_encoder_pkl(path: str | Path, n_hid: int = 64, vocab_size: int = 512, seed: int = 0,
                     legacy_format: bool = False) -> Path:
    """Save a randomly initialised ``dall_e.Encoder`` with ``torch.save(model)``, as OpenAI did.

    The module keeps dall_e's defaults, as in OpenAI's file: CPU device,
    ``requires_grad=False`` and ``use_mixed_precision=True`` (an attribute the
    Encoder stores but never reads; half precision on CUDA comes from each
    ``Conv2d``). It loads back with ``torch.load(path, weights_only=False)``
    or the tokenizer's trusted path. ``legacy_format`` writes the pre-zip
    torch.save format.
    """
    path = Path(path)
    torch.manual_seed(seed)
    model = Encoder(n_hid=n_hid, vocab_size=vocab_size)
    torch.save(model, path, _use_new_zipfile_serialization=not legacy_format)
    return path


def reference_tokens(encoder_module: Encoder, images_uint8: torch.Tensor) -> np.ndarray:
    """argmax(encoder(map_pixels(x / 255))) in float32 on the CPU, as uint16 (B, H/8, W/8)."""
    if next(encoder_module.parameters()).device.type != "cpu":
        raise ValueError("reference_tokens runs the encoder in float32 on the CPU; pass a CPU module")
    with torch.no_grad():
        logits = encoder_module(map_pixels(images_uint8.to(torch.float32) / 255.0))
    return logits.argmax(dim=1).numpy().astype(np.uint16)
