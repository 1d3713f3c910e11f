"""Relative position bias / position embedding resampling for 224 → 384 fine-tuning."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from beit_data.train.relpos import (adapt_backbone_state, geometric_offsets, resize_position_embeddings,
                                    resize_relative_position_table)


def _smooth(y: np.ndarray, x: np.ndarray, head: int) -> np.ndarray:
    """A smooth known function of the (dy, dx) offset, different per head."""
    return np.sin(x / (6.0 + head)) * np.cos(y / 8.0) + 0.02 * (head + 1) * x - 0.01 * y + 0.001 * x * y


def _reference_offsets(src_window: int, dst_window: int) -> np.ndarray:
    """Geometric-progression offsets from the polynomial root, independently of the bisection."""
    n, reach = src_window - 1, dst_window - 1
    # 1 + q + ... + q^(n-1) - reach = 0  ->  coefficients highest power first
    roots = np.roots([1.0] * (n - 1) + [1.0 - reach])
    q = max(r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 0)
    right = np.cumsum(q ** np.arange(n))
    return np.concatenate([-right[::-1], [0.0], right])


def _table(window: int, heads: int, coords: np.ndarray) -> torch.Tensor:
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    grid = np.stack([_smooth(yy, xx, h) for h in range(heads)], axis=-1).reshape(-1, heads)
    extra = np.arange(3 * heads, dtype=np.float64).reshape(3, heads) + 100.0
    return torch.from_numpy(np.concatenate([grid, extra])).float()


def test_identity_at_equal_sizes():
    table = torch.randn((2 * 14 - 1) ** 2 + 3, 12)
    assert torch.equal(resize_relative_position_table(table, (14, 14), (14, 14)), table)
    np.testing.assert_array_equal(geometric_offsets(27, 27), np.arange(-13, 14))
    pos = torch.randn(1, 197, 32)
    assert torch.equal(resize_position_embeddings(pos, (14, 14)), pos)


def test_beit_growth_ratio_for_224_to_384():
    offsets = geometric_offsets(27, 47)
    gaps = np.diff(offsets[13:])
    assert gaps[0] == pytest.approx(1.0)
    assert gaps[1] / gaps[0] == pytest.approx(1.090307, abs=2e-6)  # the ratio BEiT noted for 14 -> 24
    assert offsets[-1] == pytest.approx(23.0, abs=1e-3)
    np.testing.assert_allclose(offsets, _reference_offsets(14, 24), atol=1e-4)


def test_14_to_24_matches_smooth_function_at_target_offsets():
    heads = 3
    table = _table(14, heads, _reference_offsets(14, 24))
    out = resize_relative_position_table(table, (14, 14), (24, 24))
    assert out.shape == ((2 * 24 - 1) ** 2 + 3, heads)
    target = np.arange(-23, 24, dtype=np.float64)
    yy, xx = np.meshgrid(target, target, indexing="ij")
    expected = np.stack([_smooth(yy, xx, h) for h in range(heads)], axis=-1).reshape(-1, heads)
    np.testing.assert_allclose(out[:-3].numpy(), expected, atol=2e-3)
    assert torch.equal(out[-3:], table[-3:])  # cls rows untouched
    # row-major (dy, dx): the centre row is offset (0, 0)
    centre = 23 * 47 + 23
    np.testing.assert_allclose(out[centre].numpy(), [_smooth(0.0, 0.0, h) for h in range(heads)], atol=1e-6)


def test_shared_bias_is_copied_into_every_layer_and_resampled():
    shared = _table(14, 2, np.arange(-13, 14, dtype=np.float64))
    pos = torch.randn(1, 1 + 14 * 14, 8)
    state = {"shared_position_bias.relative_position_bias_table": shared,
             "embeddings.position_embeddings": pos, "layers.0.mlp.fc1.weight": torch.ones(2, 2)}
    out = adapt_backbone_state(state, src_window=(14, 14), dst_window=(24, 24), num_layers=3, per_layer_bias=True)
    assert "shared_position_bias.relative_position_bias_table" not in out
    expected = resize_relative_position_table(shared, (14, 14), (24, 24))
    for i in range(3):
        assert torch.equal(out[f"layers.{i}.relative_position_bias.relative_position_bias_table"], expected)
    assert out["embeddings.position_embeddings"].shape == (1, 1 + 24 * 24, 8)
    assert torch.equal(out["embeddings.position_embeddings"][:, 0], pos[:, 0])
    assert torch.equal(out["layers.0.mlp.fc1.weight"], state["layers.0.mlp.fc1.weight"])
