"""tokenizer/: safe weight loading and conversion, clear errors, BEiT-exact tokens on the CPU."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from dall_e import Decoder
from safetensors.torch import load_file, save_file

from beit_data.errors import BeitDataError
from tests.tokenizer_fixtures import make_encoder_pkl, reference_tokens
from tokenizer import DalleTokenizer, TokenizerError, VisualTokenizer, convert_tokenizer, load_tokenizer
from tokenizer.dalle import _Runner


def _images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def _smooth_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Photo-like pictures (low-frequency colour fields): fewer near-tied logits than pure noise."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(count, 3, size // 8, size // 8, generator=generator)
    return torch.nn.functional.interpolate(low, size=size, mode="bicubic").clamp(0, 1).mul(255).round().to(torch.uint8)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.fixture(scope="module")
def pkl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_encoder_pkl(tmp_path_factory.mktemp("weights") / "encoder.pkl")


@pytest.fixture(scope="module")
def converted(pkl: Path) -> Path:
    return convert_tokenizer(pkl, pkl.with_suffix(".safetensors"))


@pytest.fixture(scope="module")
def original(pkl: Path) -> torch.nn.Module:
    return torch.load(pkl, map_location="cpu", weights_only=False)


def test_bare_torch_load_fails_on_the_pickle(pkl: Path) -> None:
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(pkl)


def test_pickle_refused_without_trust(pkl: Path) -> None:
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(pkl)
    message = _one_line_naming(err, pkl)
    assert "convert-tokenizer" in message and "trust_pickle=True" in message and "--trust-pickle" in message


def test_convert_refuses_pickle_without_trust(pkl: Path, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="unpickling runs code"):
        convert_tokenizer(pkl, tmp_path / "out.safetensors", trust_pickle=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_trusted_pickle_matches_reference(tmp_path: Path, legacy: bool) -> None:
    path = make_encoder_pkl(tmp_path / "encoder.pkl", legacy_format=legacy)
    tokenizer = load_tokenizer(path, trust_pickle=True)
    images = _images(2, 112)
    tokens = tokenizer.encode(images)
    assert tokens.dtype == torch.uint16 and tokens.shape == (2, 14, 14)
    assert np.array_equal(tokens.numpy(), reference_tokens(torch.load(path, weights_only=False), images))
    assert tokenizer.weights_sha256 == _sha256(path) and tokenizer.source_sha256 is None


def test_safetensors_loads_without_unpickling(pkl: Path, converted: Path, original: torch.nn.Module,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    images = _images(2, 112, seed=1)
    from_pickle = load_tokenizer(pkl, trust_pickle=True).encode(images)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("unpickling attempted")

    for owner, name in [(torch, "load"), (torch.serialization, "load"), (pickle, "load"), (pickle, "loads"),
                        (pickle, "Unpickler")]:
        monkeypatch.setattr(owner, name, refuse)
    tokenizer = load_tokenizer(converted)
    tokens = tokenizer.encode(images)
    monkeypatch.undo()
    assert torch.equal(tokens, from_pickle)
    assert np.array_equal(tokens.numpy(), reference_tokens(original, images))
    assert tokenizer.identity() == {"kind": "dalle", "weights_sha256": _sha256(converted),
                                    "source_sha256": _sha256(pkl), "vocab_size": 512, "downsample": 8,
                                    "precision": "fp32"}


def test_converted_file(pkl: Path, converted: Path, original: torch.nn.Module, tmp_path: Path) -> None:
    stored = load_file(converted)
    assert stored.keys() == original.state_dict().keys()
    assert all(torch.equal(stored[k], v) for k, v in original.state_dict().items())
    header_size = int.from_bytes(converted.read_bytes()[:8], "little")
    meta = json.loads(converted.read_bytes()[8:8 + header_size])["__metadata__"]
    assert {k: meta[k] for k in ("group_count", "n_hid", "n_blk_per_group", "input_channels", "vocab_size")} == {
        "group_count": "4", "n_hid": "64", "n_blk_per_group": "2", "input_channels": "3", "vocab_size": "512"}
    assert meta["source_sha256"] == _sha256(pkl)
    again = convert_tokenizer(pkl, tmp_path / "again.safetensors")
    assert again.read_bytes() == converted.read_bytes()


def test_shapes_at_both_resolutions(converted: Path, original: torch.nn.Module) -> None:
    tokenizer = load_tokenizer(converted)
    assert isinstance(tokenizer, VisualTokenizer)
    assert (tokenizer.downsample, tokenizer.input_size_for(224), tokenizer.input_size_for(384)) == (8, 112, 192)
    images = _smooth_images(2, 192)
    tokens = tokenizer.encode(images)
    assert tokens.shape == (2, 24, 24) and tokens.dtype == torch.uint16
    assert np.array_equal(tokens.numpy(), reference_tokens(original, images))
    assert tokenizer.encode(_images(0, 112)).shape == (0, 14, 14)
    with pytest.raises(ValueError, match="multiple of 16"):
        tokenizer.input_size_for(200)


def test_chunking_does_not_change_tokens(converted: Path) -> None:
    images = _images(5, 32, seed=2)
    whole = load_tokenizer(converted, batch_size=16).encode(images)
    assert torch.equal(load_tokenizer(converted, batch_size=2).encode(images), whole)


def test_encode_rejects_bad_input(converted: Path) -> None:
    tokenizer = load_tokenizer(converted)
    with pytest.raises(ValueError, match="uint8"):
        tokenizer.encode(_images(1, 32).float())
    with pytest.raises(ValueError, match="multiples of 8"):
        tokenizer.encode(_images(1, 36))


def test_precision_choices(converted: Path) -> None:
    tokenizer = load_tokenizer(converted, precision="auto")
    assert tokenizer.precision == "fp32" and tokenizer.agreement(_images(1, 32)) == 1.0
    with pytest.raises(ValueError, match="needs a CUDA device"):
        load_tokenizer(converted, precision="bf16")
    with pytest.raises(ValueError, match="not one of"):
        load_tokenizer(converted, precision="fp8")


@pytest.mark.parametrize(("dtype", "floor"), [(torch.bfloat16, 0.9), (torch.float16, 0.97)])
def test_low_precision_graph_agrees_with_fp32(converted: Path, dtype: torch.dtype, floor: float) -> None:
    """The CUDA fast graph (cast weights, channels_last, fp32 head) run on the CPU: nearly the fp32 tokens."""
    tokenizer = load_tokenizer(converted)
    images = _smooth_images(4, 64, seed=3)
    fast = _Runner(tokenizer.encoder, torch.device("cpu"), dtype, channels_last=True, tf32=True)
    agreement = (tokenizer._encode(fast, images) == tokenizer.encode(images)).float().mean().item()
    assert agreement >= floor


def test_vocab_size_expected_by_caller(converted: Path) -> None:
    assert load_tokenizer(converted, vocab_size=512).vocab_size == 512
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(converted, vocab_size=8192)
    assert "512 codes, expected 8192" in _one_line_naming(err, converted)


def _rewrite(src: Path, dst: Path, meta_update: dict[str, str], tensor_update: dict[str, torch.Tensor]) -> Path:
    header_size = int.from_bytes(src.read_bytes()[:8], "little")
    meta = json.loads(src.read_bytes()[8:8 + header_size])["__metadata__"]
    save_file({**load_file(src), **tensor_update}, dst, metadata={**meta, **meta_update})
    return dst


def test_vocab_mismatch_between_metadata_and_weights(converted: Path, tmp_path: Path) -> None:
    bad = _rewrite(converted, tmp_path / "vocab.safetensors", {"vocab_size": "8192"}, {})
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(bad)
    assert "vocab_size=8192" in _one_line_naming(err, bad) and "vocabulary of 512" in str(err.value)


def test_wrong_tensor_shape(converted: Path, tmp_path: Path) -> None:
    key = "blocks.group_2.block_1.res_path.conv_2.w"
    bad = _rewrite(converted, tmp_path / "shape.safetensors", {}, {key: torch.zeros(16, 32, 3, 3)})
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(bad)
    assert key in _one_line_naming(err, bad)


def _decoder_pkl(path: Path) -> Path:
    torch.save(Decoder(n_init=8, n_hid=64, vocab_size=512), path)
    return path


BAD_FILES = {
    "missing": (lambda d, pkl: d / "encoder.pkl", "no such file"),
    "empty": (lambda d, pkl: _write(d / "encoder.pkl", b""), "truncated"),
    "truncated-zip": (lambda d, pkl: _write(d / "encoder.pkl", pkl.read_bytes()[:60_000]), "truncated"),
    "truncated-legacy": (lambda d, pkl: _write(d / "encoder.pkl", _legacy_bytes(d)[:20_000]), "truncated"),
    "truncated-safetensors": (lambda d, pkl: _write(d / "encoder.safetensors", _safetensors_bytes(d, pkl)[:-5000]),
                              "truncated"),
    "wget-log": (lambda d, pkl: _write(d / "encoder.pkl", b"--2024-05-01 10:00:00--  https://cdn.openai.com/dall-e/"
                                       b"encoder.pkl\nResolving cdn.openai.com... 1.2.3.4\n"), "wget -O"),
    "html": (lambda d, pkl: _write(d / "encoder.pkl", b"<!DOCTYPE html>\n<html><body>Access denied</body></html>\n"),
             "HTML page"),
    "decoder": (lambda d, pkl: _decoder_pkl(d / "encoder.pkl"), "decoder"),
    "random-bytes": (lambda d, pkl: _write(d / "encoder.pkl", bytes(range(7, 256)) * 10), "neither safetensors"),
    "plain-pickle": (lambda d, pkl: _write(d / "encoder.pkl", pickle.dumps({"w": 1}, protocol=2)), "torch.save"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _legacy_bytes(folder: Path) -> bytes:
    return make_encoder_pkl(folder / "legacy.pkl", legacy_format=True).read_bytes()


def _safetensors_bytes(folder: Path, pkl: Path) -> bytes:
    return convert_tokenizer(pkl, folder / "whole.safetensors").read_bytes()


@pytest.mark.parametrize("trust", [False, True], ids=["untrusted", "trusted"])
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_errors(case: str, trust: bool, pkl: Path, tmp_path: Path) -> None:
    make, expected = BAD_FILES[case]
    path = make(tmp_path, pkl)
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(path, trust_pickle=trust)
    assert expected in _one_line_naming(err, path)
    assert isinstance(err.value, ValueError) and isinstance(err.value, BeitDataError)


def test_legacy_pickle_truncated_in_its_data(tmp_path: Path) -> None:
    path = _write(tmp_path / "encoder.pkl", _legacy_bytes(tmp_path)[:-1000])
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(path, trust_pickle=True)
    assert "truncated" in _one_line_naming(err, path)


def test_direct_construction_is_a_visual_tokenizer(original: torch.nn.Module) -> None:
    tokenizer = DalleTokenizer(original, "0" * 64)
    assert isinstance(tokenizer, VisualTokenizer) and tokenizer.identity()["weights_sha256"] == "0" * 64
