"""The tokenize job: stored tokens equal an independent recomputation from the stored view."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from beit_data.errors import BeitDataError
from beit_data.masks import MaskPolicy, masks_for, unpack_masks
from beit_data.shards import iter_samples
from beit_data.sidecars import load_token_manifest, read_sidecar
from beit_data.verify import verify
from beit_data.views import View, ViewPolicy, render_views, sample_view, to_tensor_uint8
from pipelines.shard import ShardOptions, run_shard_job
from pipelines.tokenize import TokenizeOptions, TokenizerSpec, run_tokenize_job
from tests.tokenizer_fixtures import make_encoder_pkl, reference_tokens

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sharded(ray_session, corpora, tmp_path_factory):
    base = tmp_path_factory.mktemp("tokenize")
    run_shard_job(corpora["folder"].src, base / "root", ShardOptions(samples_per_shard=8), quiet=True)
    return base


@pytest.fixture(scope="module")
def encoder_pkl(sharded):
    return make_encoder_pkl(sharded / "encoder.pkl", n_hid=32, vocab_size=512, seed=3)


def _copy(sharded: Path, name: str) -> Path:
    root = sharded / name
    shutil.copytree(sharded / "root", root)
    return root


def _check_against_reference(root: Path, token_id: str, pkl: Path, input_size: int) -> int:
    manifest = load_token_manifest(root, token_id)
    encoder = torch.load(pkl, weights_only=False).float().eval()
    grid = tuple(manifest["grid"])
    policy = MaskPolicy.from_dict(manifest["mask_policy"])
    checked = 0
    for car in manifest["splits"]["train"]["sidecars"]:
        rows = read_sidecar(root / car["name"])
        with open(root / car["image_shard"], "rb") as f:
            samples = list(iter_samples(f))
        assert rows.keys == [k for k, _ in samples]
        for i, (key, parts) in enumerate(samples):
            meta = json.loads(parts["json"])
            for v in range(rows.views):
                view = View(tuple(int(x) for x in rows.box[i, v]), bool(rows.flip[i, v]),
                            tuple(float(x) for x in rows.jitter[i, v]), tuple(int(x) for x in rows.jitter_order[i, v]))
                assert view == sample_view(manifest["seed"], key, v, meta["width"], meta["height"],
                                           ViewPolicy.from_dict(manifest["view_policy"]))
                (picture,) = render_views(parts["jpg"], view, [(input_size, "lanczos")])
                expected = reference_tokens(encoder, to_tensor_uint8(picture)[None])[0]
                np.testing.assert_array_equal(rows.tokens[i, v].reshape(grid), expected)
                checked += 1
        masks = unpack_masks(rows.mask, grid)
        keys = [k for k in rows.keys for _ in range(rows.views)]
        np.testing.assert_array_equal(masks.reshape(-1, *grid),
                                      masks_for(policy, manifest["seed"], keys, [v for _ in rows.keys
                                                                                  for v in range(rows.views)]))
    return checked


@pytest.mark.parametrize("jitter_on_actor", [False, True], ids=["jitter-in-render", "jitter-on-actor"])
def test_tokens_equal_independent_recomputation_at_224(sharded, encoder_pkl, jitter_on_actor):
    root = _copy(sharded, f"t224-{jitter_on_actor}")
    s = run_tokenize_job(root, TokenizerSpec(str(encoder_pkl), trust_pickle=True, batch_size=16),
                         TokenizeOptions(views=2, seed=5), quiet=True, jitter_on_actor=jitter_on_actor)
    manifest = load_token_manifest(root, s["token_id"])
    assert manifest["grid"] == [14, 14] and manifest["tokenizer"]["vocab_size"] == 512
    assert manifest["mask_policy"]["num_masking"] == 75
    assert _check_against_reference(root, s["token_id"], encoder_pkl, 112) == 2 * s["count"]
    rows = read_sidecar(root / manifest["splits"]["train"]["sidecars"][0]["name"])
    assert (rows.box[:, 0] != rows.box[:, 1]).any(axis=1).all()  # K views differ
    assert list(verify(root)) == []


def test_384_gives_24x24_grids(sharded, encoder_pkl):
    root = _copy(sharded, "t384")
    s = run_tokenize_job(root, TokenizerSpec(str(encoder_pkl), trust_pickle=True),
                         TokenizeOptions(views=1, resolution=384), quiet=True)
    manifest = load_token_manifest(root, s["token_id"])
    assert manifest["grid"] == [24, 24] and manifest["mask_policy"]["num_masking"] == 220
    first = manifest["splits"]["train"]["sidecars"][0]
    rows = read_sidecar(root / first["name"])
    assert rows.tokens.shape[2] == 576
    with open(root / first["image_shard"], "rb") as f:
        key, parts = next(iter(iter_samples(f)))
    view = View(tuple(int(x) for x in rows.box[0, 0]), bool(rows.flip[0, 0]),
                tuple(float(x) for x in rows.jitter[0, 0]), tuple(int(x) for x in rows.jitter_order[0, 0]))
    (picture,) = render_views(parts["jpg"], view, [(192, "lanczos")])
    encoder = torch.load(encoder_pkl, weights_only=False).float().eval()
    np.testing.assert_array_equal(rows.tokens[0, 0].reshape(24, 24),
                                  reference_tokens(encoder, to_tensor_uint8(picture)[None])[0])


def test_pickle_is_refused_without_trust(sharded, encoder_pkl):
    root = _copy(sharded, "untrusted")
    with pytest.raises(ValueError, match="trust"):
        run_tokenize_job(root, TokenizerSpec(str(encoder_pkl)), TokenizeOptions(), quiet=True)
    assert not (root / "tokens").exists()


def test_converted_weights_need_no_trust_and_give_same_tokens(sharded, encoder_pkl):
    from tokenizer import convert_tokenizer

    st = convert_tokenizer(encoder_pkl, sharded / "encoder.safetensors")
    a, b = _copy(sharded, "conv_a"), _copy(sharded, "conv_b")
    sa = run_tokenize_job(a, TokenizerSpec(str(encoder_pkl), trust_pickle=True), TokenizeOptions(views=1),
                          token_id="x", quiet=True)
    sb = run_tokenize_job(b, TokenizerSpec(str(st)), TokenizeOptions(views=1), token_id="x", quiet=True)
    for ca, cb in zip(*(load_token_manifest(r, "x")["splits"]["train"]["sidecars"] for r in (a, b))):
        np.testing.assert_array_equal(read_sidecar(a / ca["name"]).tokens, read_sidecar(b / cb["name"]).tokens)
    assert sa["count"] == sb["count"]


def test_other_options_into_same_token_set_are_refused(sharded, encoder_pkl):
    root = _copy(sharded, "refuse")
    spec = TokenizerSpec(str(encoder_pkl), trust_pickle=True)
    run_tokenize_job(root, spec, TokenizeOptions(views=1), token_id="t", quiet=True)
    with pytest.raises(BeitDataError, match="--id"):
        run_tokenize_job(root, spec, TokenizeOptions(views=2), token_id="t", quiet=True)


def test_kill_9_then_rerun_gives_identical_sidecars(sharded, encoder_pkl):
    ref, out = _copy(sharded, "kill_ref"), _copy(sharded, "kill_out")
    spec = TokenizerSpec(str(encoder_pkl), trust_pickle=True, batch_size=8)
    run_tokenize_job(ref, spec, TokenizeOptions(views=2), token_id="t", window=2, quiet=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.tokenize", str(out), "--weights", str(encoder_pkl), "--trust-pickle",
           "--id", "t", "--views", "2", "--num-cpus", "1", "--batch-size", "8", "--quiet"]
    victim = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    records = out / ".state" / "tokens" / "t" / "train"
    deadline = time.monotonic() + 120
    while not list(records.glob("*.json")) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    total = len(load_token_manifest(ref, "t")["splits"]["train"]["sidecars"])
    assert 1 <= len(list(records.glob("*.json"))) < total, "the kill must land mid-run"
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert load_token_manifest(out, "t") == load_token_manifest(ref, "t")
    for car in load_token_manifest(ref, "t")["splits"]["train"]["sidecars"]:
        assert (out / car["name"]).read_bytes() == (ref / car["name"]).read_bytes()
