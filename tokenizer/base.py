"""The contract between visual tokenizers and the tokenize job.

The job only sees :class:`VisualTokenizer`, so another tokenizer (BEiT v2's
VQ-KD, say) plugs in by implementing it; :class:`TokenizerError` is what every
tokenizer raises for a weights file it cannot use.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from beit_data.errors import BeitDataError


class TokenizerError(BeitDataError, ValueError):
    """A weights file cannot be used; the message is one line naming the file and the fix.

    A :class:`BeitDataError`, so the ``beit-data`` command prints it as its one error line.
    """


@runtime_checkable
class VisualTokenizer(Protocol):
    """Turns rendered uint8 pictures into a grid of visual tokens.

    ``kind`` names the tokenizer family ("dalle", ...), ``vocab_size`` its number
    of codes (tokens are stored as uint16, so at most 65536), ``weights_sha256``
    the sha256 of the weights file it was loaded from and ``downsample`` the
    input pixels per token along each side.
    """

    kind: str
    vocab_size: int
    weights_sha256: str
    downsample: int

    def identity(self) -> dict[str, Any]:
        """JSON-ready description of the tokenizer for token-set manifests."""
        ...

    def input_size_for(self, resolution: int) -> int:
        """Side in pixels of the tokenizer input for views rendered at ``resolution``."""
        ...

    def encode(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 pictures -> (B, H // downsample, W // downsample) uint16 tokens on the CPU."""
        ...
