"""DALL-E encoder weight files: safe reading, validation and one-time conversion.

Two kinds of file hold the same weights:

* ``encoder.pkl`` as OpenAI publishes it: a whole ``dall_e.Encoder`` saved with
  ``torch.save(model)``. Reading it unpickles, which runs code named by the file,
  so it is read only when the caller says the file is trusted.
* ``*.safetensors`` written by :func:`convert_tokenizer`: the state dict plus
  metadata with the Encoder's hyper-parameters. It loads into a freshly built
  ``dall_e.Encoder`` without unpickling anything.

Files are recognised by content, not by name. Pickles are inspected with
``pickletools`` (which never executes them) before any decision, so a decoder
or a truncated file is reported even without trust. Every problem is a
:class:`TokenizerError` with one line naming the file and the fix.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from dall_e import Encoder
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes

from tokenizer.base import TokenizerError

ENCODER_URL = "https://cdn.openai.com/dall-e/encoder.pkl"
HPARAMS = ("group_count", "n_hid", "n_blk_per_group", "input_channels", "vocab_size")
FORMAT_TAG = "beit-data/dalle-encoder/1"
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_MAX_TOKEN = 1 << 16  # tokens are stored as uint16
_RECONVERT = "convert the original encoder.pkl again with `beit-data convert-tokenizer encoder.pkl encoder.safetensors`"


@dataclass(frozen=True)
class EncoderWeights:
    """A validated float32 ``dall_e.Encoder`` on the CPU and the files behind it.

    ``sha256`` is the digest of the file read; ``source_sha256`` that of the
    pickle a safetensors file was converted from (None for a pickle).
    """

    encoder: Encoder
    sha256: str
    source_sha256: str | None


def load_encoder(path: str | os.PathLike, trust_pickle: bool = False,
                 vocab_size: int | None = None) -> EncoderWeights:
    """Read ``path`` (safetensors, or a pickle when ``trust_pickle``) into a fresh Encoder.

    ``vocab_size``, when given, is the vocabulary the caller expects.
    """
    path = Path(path)
    data = _read(path)
    kind = _sniff(path, data)
    if kind == "safetensors":
        state, meta = _read_safetensors(path, data)
    else:
        state, meta = _read_pickle(path, data, kind, trust_pickle), {}
    encoder = _build_encoder(path, state, meta, vocab_size)
    return EncoderWeights(encoder, hashlib.sha256(data).hexdigest(), meta.get("source_sha256"))


def convert_tokenizer(src: str | os.PathLike, dst: str | os.PathLike,
                      trust_pickle: bool = True) -> Path:
    """Convert ``src`` (OpenAI's ``encoder.pkl``) once into a safetensors file at ``dst``.

    The metadata records the Encoder's hyper-parameters and the sha256 of
    ``src``; the same input always gives the same bytes. Returns ``dst``.
    """
    src, dst = Path(src), Path(dst)
    if not dst.parent.is_dir():
        raise TokenizerError(f"{dst}: folder {dst.parent} does not exist; create it or choose another output path")
    weights = load_encoder(src, trust_pickle=trust_pickle)
    return save_encoder(weights.encoder, dst, weights.source_sha256 or weights.sha256)


def save_encoder(encoder: Encoder, dst: str | os.PathLike, source: str) -> Path:
    """Write ``encoder`` as safetensors with its hyper-parameters; ``source`` names where it came from."""
    dst = Path(dst)
    meta = {"format": "pt", "beit_data": FORMAT_TAG, "source_sha256": source,
            **{name: str(getattr(encoder, name)) for name in HPARAMS}}
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    tmp.write_bytes(_safetensors_bytes(encoder.state_dict(), meta))
    os.replace(tmp, dst)
    return dst


def seeded_encoder(dst: str | os.PathLike, n_hid: int = 64, vocab_size: int = 8192, seed: int = 0) -> Path:
    """A randomly initialised ``dall_e.Encoder`` from ``seed``, saved as safetensors (for demos and benchmarks)."""
    torch.manual_seed(seed)
    encoder = Encoder(n_hid=n_hid, vocab_size=vocab_size, requires_grad=False)
    return save_encoder(encoder, dst, f"seeded:n_hid={n_hid},vocab_size={vocab_size},seed={seed}")


def _safetensors_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """float32 tensors in safetensors encoding with a sorted header, so equal weights give equal bytes
    (the safetensors writer orders its metadata differently from call to call)."""
    header: dict[str, object] = {"__metadata__": meta}
    blobs, offset = [], 0
    for name in sorted(tensors):
        blob = tensors[name].detach().float().contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def _read(path: Path) -> bytes:
    if not path.exists():
        raise TokenizerError(f"{path}: no such file; download the DALL-E encoder with "
                             f"`wget -O {path.name} {ENCODER_URL}` or fix the path")
    if path.is_dir():
        raise TokenizerError(f"{path}: is a folder; give the encoder weights file inside it (e.g. {path}/encoder.pkl)")
    return path.read_bytes()


def _truncated(path: Path, detail: str, fix: str = f"download it again from {ENCODER_URL}") -> TokenizerError:
    return TokenizerError(f"{path}: truncated or corrupt ({detail}); the download or copy was probably "
                          f"interrupted — {fix}")


def _sniff(path: Path, data: bytes) -> str:
    """'safetensors', 'torch-zip' or 'torch-legacy'; raises for anything else."""
    if not data:
        raise _truncated(path, "the file is empty")
    if data.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if data.startswith(b"\x80"):
        return "torch-legacy"
    if data[8:9] == b"{" and int.from_bytes(data[:8], "little") < 100_000_000:
        return "safetensors"
    text = _as_text(data[:4096])
    if text is not None:
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        if text.lstrip().startswith("<"):
            raise TokenizerError(f"{path}: is an HTML page, not weights (starts with {first!r}); the server sent a "
                                 f"web page instead of the file — download it again from {ENCODER_URL}")
        raise TokenizerError(f"{path}: is a text file, not weights (starts with {first!r}); `wget -o FILE` writes "
                             f"wget's log to FILE — download with `wget -O {path.name} {ENCODER_URL}`")
    raise TokenizerError(f"{path}: neither safetensors nor a torch pickle ({len(data)} bytes starting {data[:8]!r}); "
                         f"give OpenAI's encoder.pkl ({ENCODER_URL}) or a .safetensors made by convert-tokenizer")


def _as_text(head: bytes) -> str | None:
    """The decoded text if ``head`` looks like UTF-8 text, else None."""
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as err:  # a character cut at the end of the sample is still text
        return head[:err.start].decode("utf-8") if err.start >= len(head) - 3 else None


def _read_safetensors(path: Path, data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    size = int.from_bytes(data[:8], "little")
    if 8 + size > len(data):
        raise _truncated(path, f"{len(data)} bytes, shorter than its {size}-byte header", _RECONVERT)
    try:
        header = json.loads(data[8:8 + size])
        meta = header.pop("__metadata__", None) or {}
        end = 8 + size + max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise TokenizerError(f"{path}: safetensors header is unreadable ({err}); {_RECONVERT}") from None
    if end > len(data):
        raise _truncated(path, f"{len(data)} bytes, the header describes {end}", _RECONVERT)
    try:
        return load_safetensors_bytes(data), meta
    except SafetensorError as err:
        raise TokenizerError(f"{path}: safetensors data is corrupt ({err}); {_RECONVERT}") from None


def _pickled_names(path: Path, data: bytes, kind: str) -> set[str]:
    """Every string among the pickle's opcodes (module and class names included), read without executing it."""
    if kind == "torch-zip":
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            member = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            stream, count = io.BytesIO(archive.read(member)), 1
        except StopIteration:
            raise TokenizerError(f"{path}: a zip archive without data.pkl, not a torch.save file; give OpenAI's "
                                 f"encoder.pkl ({ENCODER_URL}) or a .safetensors made by convert-tokenizer") from None
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise _truncated(path, f"{len(data)} bytes, {type(err).__name__}: {err}") from None
    else:  # legacy torch.save: pickles of the magic number, protocol version, system info, then the object
        stream, count = io.BytesIO(data), 4
    names: set[str] = set()
    for index in range(count):
        try:
            ops = [(op.name, arg) for op, arg, _pos in pickletools.genops(stream)]
        except ValueError as err:
            raise _truncated(path, f"{len(data)} bytes, {err}") from None
        if kind == "torch-legacy" and index == 0 and (len(ops) < 2 or ops[1][1] != _TORCH_LEGACY_MAGIC):
            raise TokenizerError(f"{path}: a pickle, but not one written by torch.save; give OpenAI's encoder.pkl "
                                 f"({ENCODER_URL}) or a .safetensors made by convert-tokenizer")
        names.update(arg for _name, arg in ops if isinstance(arg, str))
    return names


def _read_pickle(path: Path, data: bytes, kind: str, trust_pickle: bool) -> dict[str, torch.Tensor]:
    modules = {name.split(" ")[0] for name in _pickled_names(path, data, kind)}
    if "dall_e.decoder" in modules:
        raise _decoder(path)
    if not trust_pickle:
        raise TokenizerError(f"{path}: is a pickle, and unpickling runs code from the file; if you trust it, convert "
                             f"it once with `beit-data convert-tokenizer {path} {path.with_suffix('.safetensors')}` "
                             f"and use the .safetensors, or pass trust_pickle=True / --trust-pickle")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:  # unpickling can fail in any way; all of them mean a bad file here
        detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise _truncated(path, f"unpickling failed: {type(err).__name__}: {detail}") from None
    if not isinstance(obj, Encoder):
        raise TokenizerError(f"{path}: holds a {type(obj).__module__}.{type(obj).__qualname__}, not a "
                             f"dall_e.Encoder; give OpenAI's encoder.pkl ({ENCODER_URL})")
    return obj.state_dict()


def _decoder(path: Path) -> TokenizerError:
    return TokenizerError(f"{path}: is the DALL-E decoder, not the encoder; tokens come from encoder.pkl "
                          f"— download it with `wget -O encoder.pkl {ENCODER_URL}`")


def _infer_hparams(path: Path, state: dict[str, torch.Tensor]) -> dict[str, int]:
    w_in, w_out = state.get("blocks.input.w"), state.get("blocks.output.conv.w")
    if w_in is None or w_out is None or w_in.ndim != 4 or w_out.ndim != 4:
        raise TokenizerError(f"{path}: has no DALL-E encoder input/output convolutions; give OpenAI's encoder.pkl "
                             f"({ENCODER_URL}) or a .safetensors made from it by convert-tokenizer")
    if w_in.shape[-1] == 1:  # the decoder starts with a 1x1 conv over the vocabulary, the encoder with a 7x7
        raise _decoder(path)
    return {
        "group_count": len({k.split(".")[1] for k in state if k.startswith("blocks.group_")}),
        "n_hid": int(w_in.shape[0]),
        "n_blk_per_group": len({k.split(".")[2] for k in state if k.startswith("blocks.group_1.")}),
        "input_channels": int(w_in.shape[1]),
        "vocab_size": int(w_out.shape[0]),
    }


def _build_encoder(path: Path, state: dict[str, torch.Tensor], meta: dict[str, str],
                   vocab_size: int | None) -> Encoder:
    found = _infer_hparams(path, state)
    for name in HPARAMS:
        if name in meta and meta[name] != str(found[name]):
            what = "vocabulary" if name == "vocab_size" else name
            raise TokenizerError(f"{path}: metadata says {name}={meta[name]} but the weights have a {what} of "
                                 f"{found[name]}; the file was altered — {_RECONVERT}")
    if vocab_size is not None and found["vocab_size"] != vocab_size:
        raise TokenizerError(f"{path}: vocabulary has {found['vocab_size']} codes, expected {vocab_size}; "
                             f"give the tokenizer weights these tokens are meant for")
    if not 0 < found["vocab_size"] <= _MAX_TOKEN:
        raise TokenizerError(f"{path}: vocabulary of {found['vocab_size']} codes does not fit uint16 tokens; "
                             f"use a tokenizer with at most {_MAX_TOKEN} codes")
    if found["group_count"] != Encoder.group_count:
        raise TokenizerError(f"{path}: has {found['group_count']} groups, dall_e.Encoder has "
                             f"{Encoder.group_count}; give OpenAI's encoder.pkl ({ENCODER_URL})")
    encoder = Encoder(n_hid=found["n_hid"], n_blk_per_group=found["n_blk_per_group"],
                      input_channels=found["input_channels"], vocab_size=found["vocab_size"],
                      device=torch.device("cpu"), requires_grad=False)
    expected = encoder.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise TokenizerError(f"{path}: not a dall_e.Encoder state dict (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}); give OpenAI's encoder.pkl ({ENCODER_URL}) or its conversion")
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape or not got.is_floating_point():
            raise TokenizerError(f"{path}: tensor {key} is {got.dtype} {tuple(got.shape)}, expected float "
                                 f"{tuple(want.shape)}; the file is not an intact DALL-E encoder — download it again")
    encoder.load_state_dict({k: v.float() for k, v in state.items()})
    return encoder.eval()
