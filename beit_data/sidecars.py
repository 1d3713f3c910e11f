"""Token sidecars: one Parquet file of views, tokens and masks per image shard (FORMAT.md).

A sidecar row holds, for one sample and each of its K views, the crop box,
flip, colour-jitter factors and order, the visual-token grid and the packed
blockwise mask. Arrays travel as nested fixed-size lists so a whole shard
converts to numpy without a Python loop.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import write_bytes
from .errors import BeitDataError

TOKENS_FORMAT = "beit-data/tokens"
TOKENS_VERSION = 1


@dataclass
class SidecarRows:
    """The columns of one sidecar as numpy arrays (n samples, K views)."""

    keys: list[str]
    box: np.ndarray           # int32 (n, K, 4): top, left, height, width
    flip: np.ndarray          # bool (n, K)
    jitter: np.ndarray        # float32 (n, K, 3): brightness, contrast, saturation
    jitter_order: np.ndarray  # int8 (n, K, 3)
    tokens: np.ndarray        # uint16 (n, K, gh*gw)
    mask: np.ndarray          # uint8 (n, K, ceil(gh*gw/8)), numpy.packbits of the row-major grid

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def views(self) -> int:
        return self.tokens.shape[1]


def _nested(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """(n, K, m) or (n, K) numpy -> fixed_size_list<fixed_size_list<T, m>, K> (or <T, K>)."""
    flat = pa.array(values.reshape(-1), type=arrow_type)
    inner = flat if values.ndim == 2 else pa.FixedSizeListArray.from_arrays(flat, values.shape[2])
    return pa.FixedSizeListArray.from_arrays(inner, values.shape[1])


def _unnest(column: pa.ChunkedArray, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    array = column.combine_chunks()
    while pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    return array.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(shape)


def encode_sidecar(rows: SidecarRows, metadata: dict[str, Any]) -> bytes:
    """The Parquet bytes of ``rows`` (deterministic for equal inputs and pyarrow version)."""
    table = pa.table({
        "key": pa.array(rows.keys, type=pa.string()),
        "box": _nested(rows.box.astype(np.int32), pa.int32()),
        "flip": _nested(rows.flip.astype(bool), pa.bool_()),
        "jitter": _nested(rows.jitter.astype(np.float32), pa.float32()),
        "jitter_order": _nested(rows.jitter_order.astype(np.int8), pa.int8()),
        "tokens": _nested(rows.tokens.astype(np.uint16), pa.uint16()),
        "mask": _nested(rows.mask.astype(np.uint8), pa.uint8()),
    })
    table = table.replace_schema_metadata({"beit_data": json.dumps(metadata, sort_keys=True)})
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd", use_dictionary=["key"], write_statistics=False)
    return out.getvalue()


def write_sidecar(path: Path, rows: SidecarRows, metadata: dict[str, Any]) -> bytes:
    """Write ``rows`` to ``path`` atomically; returns the bytes written."""
    data = encode_sidecar(rows, metadata)
    write_bytes(Path(path), data)
    return data


def decode_sidecar(data: bytes | Any, source: str = "sidecar") -> SidecarRows:
    """Read a sidecar from bytes or a file-like object."""
    try:
        table = pq.read_table(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
    except Exception as e:
        raise BeitDataError(f"cannot read token sidecar {source}: {e}; rerun 'beit-data tokenize' to rewrite it") \
            from None
    n = table.num_rows
    k = table.schema.field("flip").type.list_size
    grid_len = table.schema.field("tokens").type.value_type.list_size
    mask_len = table.schema.field("mask").type.value_type.list_size
    return SidecarRows(
        keys=table.column("key").to_pylist(),
        box=_unnest(table.column("box"), (n, k, 4), np.int32),
        flip=_unnest(table.column("flip"), (n, k), bool),
        jitter=_unnest(table.column("jitter"), (n, k, 3), np.float32),
        jitter_order=_unnest(table.column("jitter_order"), (n, k, 3), np.int8),
        tokens=_unnest(table.column("tokens"), (n, k, grid_len), np.uint16),
        mask=_unnest(table.column("mask"), (n, k, mask_len), np.uint8),
    )


def read_sidecar(path: Path) -> SidecarRows:
    """Read a sidecar file."""
    return decode_sidecar(Path(path).read_bytes(), str(path))


def token_dir(root: Path, token_id: str) -> Path:
    return Path(root) / "tokens" / token_id


def load_token_manifest(root: Path, token_id: str) -> dict[str, Any]:
    """Read ``tokens/<id>/manifest.json`` with a clear error when it is missing."""
    path = token_dir(root, token_id) / "manifest.json"
    if not path.exists():
        have = sorted(p.name for p in (Path(root) / "tokens").glob("*") if (p / "manifest.json").exists())
        raise BeitDataError(f"no token set {token_id!r} under {root}/tokens (found: {', '.join(have) or 'none'}): "
                            "run 'beit-data tokenize' or pass one of those ids")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != TOKENS_FORMAT or manifest.get("version") != TOKENS_VERSION:
        raise BeitDataError(f"{path} is not a beit-data token manifest of version {TOKENS_VERSION}")
    return manifest
