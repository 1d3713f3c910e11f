"""The MIM pretraining stream: content, simulated DDP (world 1–4 × workers 0–3), resume, storage, errors."""
from __future__ import annotations

import gc
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from beit_data import apply_color_jitter, normalize, pretraining_loader
from beit_data.atomic import write_json
from beit_data.errors import BeitDataError
from beit_data.loader import IMAGENET_MEAN, IMAGENET_STD
from beit_data.masks import unpack_masks
from beit_data.shards import Sample, write_shard
from beit_data.sidecars import read_sidecar, write_sidecar
from beit_data.views import View, to_tensor_uint8
from tests.loader_fixtures import fixture_tokens, make_token_set, rendered, shard_samples, sharded_root, stored_view

BATCH = 3
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 cores


@pytest.fixture(scope="module")
def root(ray_session, corpora, tmp_path_factory):
    root = sharded_root(tmp_path_factory.getbasetemp(), corpora["folder"].src)
    if not (root / "tokens" / "fixture").exists():
        make_token_set(root)
    return root


@pytest.fixture(scope="module")
def manifest(root):
    return json.loads((root / "tokens" / "fixture" / "manifest.json").read_text())


def keys_of(loader, epoch: int = 0) -> list[list[str]]:
    loader.set_epoch(epoch)
    return [batch["key"] for batch in loader]


def copy_root(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "root"
    shutil.copytree(root, out)
    return out


def test_batches_carry_the_stored_view_tokens_and_mask(root, manifest):
    loader = pretraining_loader(root, "fixture", batch_size=BATCH, keys=True, uint8=True, seed=7,
                                jitter_on_device=True)
    assert len(loader) == manifest["splits"]["train"]["count"] // BATCH
    loader.set_epoch(1)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (BATCH, 3, 224, 224) and batch["pixel_values"].dtype == torch.uint8
    assert batch["bool_masked_pos"].shape == (BATCH, 196) and batch["bool_masked_pos"].dtype == torch.bool
    assert batch["visual_tokens"].shape == (BATCH, 196) and batch["visual_tokens"].dtype == torch.int64
    recipe = loader.spec.recipe
    jittered = apply_color_jitter(batch)["pixel_values"]  # uint8: the jitter travels with the batch
    assert "color_jitter" in batch and jittered.dtype == torch.uint8
    for j, key in enumerate(batch["key"]):
        v = recipe.view_index(key, 1)
        view, jpeg, tokens, mask = stored_view(root, manifest, key, v)
        np.testing.assert_array_equal(batch["visual_tokens"][j].numpy(), fixture_tokens(0, key, v, 196))
        np.testing.assert_array_equal(batch["visual_tokens"][j].numpy(), tokens)
        np.testing.assert_array_equal(batch["bool_masked_pos"][j].numpy(), unpack_masks(mask, (14, 14)).reshape(-1))
        assert batch["color_jitter"][j].tolist() == list(view.jitter)
        assert batch["color_jitter_order"][j].tolist() == list(view.jitter_order)
        assert torch.equal(batch["pixel_values"][j], to_tensor_uint8(rendered(jpeg, View(view.box, view.flip), 224)))
        assert torch.equal(jittered[j], to_tensor_uint8(rendered(jpeg, view, 224)))
    # jittered in the worker instead: the same bytes
    other = pretraining_loader(root, "fixture", batch_size=BATCH, uint8=True, seed=7, num_workers=1)
    other.set_epoch(1)
    in_worker = next(iter(other))
    assert "color_jitter" not in in_worker and torch.equal(in_worker["pixel_values"], jittered)


def test_384_token_set_without_jitter(root, tmp_path):
    other = copy_root(root, tmp_path)
    manifest = make_token_set(other, "r384", resolution=384, jitter=False)
    loader = pretraining_loader(other, "r384", batch_size=2, keys=True, uint8=True)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (2, 3, 384, 384)
    assert batch["bool_masked_pos"].shape == batch["visual_tokens"].shape == (2, 24 * 24)
    for j, key in enumerate(batch["key"]):
        view, jpeg, _, _ = stored_view(other, manifest, key, loader.spec.recipe.view_index(key, 0))
        assert view.jitter == (1.0, 1.0, 1.0)
        assert torch.equal(batch["pixel_values"][j], to_tensor_uint8(rendered(jpeg, view, 384)))


def test_float_output_is_normalize_of_uint8(root):
    kw = dict(batch_size=BATCH, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    a = next(iter(pretraining_loader(root, "fixture", uint8=True, jitter_on_device=True, **kw)))
    b = next(iter(pretraining_loader(root, "fixture", **kw)))
    with pytest.raises(ValueError, match="needs uint8=True"):
        pretraining_loader(root, "fixture", jitter_on_device=True, **kw)
    assert b["pixel_values"].dtype == torch.float32 and "color_jitter" not in b
    normalized = normalize(a, (0.5,) * 3, (0.5,) * 3, device="cpu")
    assert "color_jitter" not in normalized and "color_jitter_order" not in normalized
    torch.testing.assert_close(normalized["pixel_values"], b["pixel_values"], rtol=0, atol=0)
    # the CPU path (picture by picture) gives the bytes of the one-formula batch path the GPU takes
    pixels = apply_color_jitter(a)["pixel_values"]
    m, s = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (IMAGENET_MEAN, IMAGENET_STD))
    assert torch.equal(normalize({"pixel_values": pixels})["pixel_values"], (pixels.float() - m) / s)


def test_each_sample_shows_all_its_views_over_k_epochs(root, manifest):
    loader = pretraining_loader(root, "fixture", batch_size=1, keys=True, drop_last=True)
    seen: dict[str, set] = {}
    for epoch in range(manifest["views"]):
        loader.set_epoch(epoch)
        for batch in loader:
            key = batch["key"][0]
            tokens = batch["visual_tokens"][0].numpy()
            v = next(v for v in range(manifest["views"]) if (fixture_tokens(0, key, v, 196) == tokens).all())
            seen.setdefault(key, set()).add(v)
    assert set(map(len, seen.values())) == {manifest["views"]}


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_simulated_ddp_equal_batches_and_coverage(root, manifest, workers):
    total = manifest["splits"]["train"]["count"]
    for world in range(1, 5):
        ranks = [keys_of(pretraining_loader(root, "fixture", batch_size=BATCH, keys=True, rank=r, world_size=world,
                                            num_workers=workers, shuffle_buffer=4), epoch=2)
                 for r in range(world)]
        expected = total // (world * BATCH)
        assert [len(b) for b in ranks] == [expected] * world, (world, workers)
        assert all(len(batch) == BATCH for b in ranks for batch in b)
        seen = Counter(k for b in ranks for batch in b for k in batch)
        assert max(seen.values()) == 1  # nothing repeated
        assert total - len(seen) < world * BATCH  # the stated bound on what an epoch leaves out


def test_order_depends_on_seed_epoch_and_workers_only_as_stated(root):
    def run(**kw):
        return keys_of(pretraining_loader(root, "fixture", batch_size=BATCH, keys=True, **kw))

    assert run(num_workers=2) == run(num_workers=2)
    assert run(num_workers=0) == run(num_workers=1)
    assert run(num_workers=0) != run(num_workers=0, seed=1)


@pytest.mark.parametrize("workers,done", [(0, 2), (2, 3), (3, 4)])
def test_resume_mid_epoch_equals_uninterrupted(root, workers, done):
    def make():
        loader = pretraining_loader(root, "fixture", batch_size=2, keys=True, rank=1, world_size=2,
                                    num_workers=workers, shuffle_buffer=5)
        loader.set_epoch(3)
        return loader

    full = list(make())
    first = make()
    it = iter(first)
    for _ in range(done):
        next(it)
    state = first.state_dict()
    assert state["epoch"] == 3 and state["batches"] == done
    resumed = make()
    resumed.set_epoch(3)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    rest = list(resumed)
    assert len(rest) == len(full) - done
    for a, b in zip(rest, full[done:]):
        assert a["key"] == b["key"]
        for name in ("pixel_values", "bool_masked_pos", "visual_tokens"):
            assert torch.equal(a[name], b[name])
    assert resumed.state_dict()["batches"] == len(full)
    with pytest.raises(BeitDataError, match="world_size saved 2 now 1"):
        pretraining_loader(root, "fixture", batch_size=2, world_size=1, rank=0).load_state_dict(state)


def test_remote_filesystems_give_the_same_stream(root):
    import pyarrow.fs

    local = keys_of(pretraining_loader(root, "fixture", batch_size=BATCH, keys=True))
    assert keys_of(pretraining_loader(f"file://{root}", "fixture", batch_size=BATCH, keys=True)) == local
    tree = pyarrow.fs.SubTreeFileSystem(str(root), pyarrow.fs.LocalFileSystem())
    assert keys_of(pretraining_loader("", "fixture", batch_size=BATCH, keys=True, filesystem=tree)) == local


@pytest.mark.parametrize("name", ["pipe:curl http://x/a.tar", "/etc/passwd", "images/../../x.tar", "s3://b/x.tar"])
def test_names_that_are_not_plain_relative_paths_are_refused(root, tmp_path, name):
    bad = copy_root(root, tmp_path)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["name"] = name
    write_json(bad / "manifest.json", manifest)
    with pytest.raises(BeitDataError, match="not a plain relative path"):
        pretraining_loader(bad, "fixture", batch_size=BATCH)


def _edit_token_manifest(root: Path, edit) -> None:
    path = root / "tokens" / "fixture" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest["splits"]["train"]["sidecars"])
    write_json(path, manifest)


def _drain(loader) -> None:
    for _ in loader:
        pass


def test_token_set_mismatches_are_clear_errors(root, tmp_path):
    bad = copy_root(root, tmp_path)
    cars = json.loads((bad / "tokens/fixture/manifest.json").read_text())["splits"]["train"]["sidecars"]
    car = cars[1]
    with pytest.raises(BeitDataError, match="no token set 'nope'|tokenize"):
        pretraining_loader(bad, "nope", batch_size=BATCH)

    # the image shard changed since tokenizing
    _edit_token_manifest(bad, lambda cs: cs[1].update(image_sha256="f" * 64))
    with pytest.raises(BeitDataError, match=f"{car['name']} was made from another version of {car['image_shard']}"):
        pretraining_loader(bad, "fixture", batch_size=BATCH)
    _edit_token_manifest(bad, lambda cs: cs[1].update(image_sha256=car["image_sha256"]))

    # a sidecar missing from the manifest, then from the disk
    _edit_token_manifest(bad, lambda cs: cs.pop(1))
    with pytest.raises(BeitDataError, match=f"has no sidecar for {car['image_shard']}"):
        pretraining_loader(bad, "fixture", batch_size=BATCH)
    _edit_token_manifest(bad, lambda cs: cs.insert(1, car))
    (bad / car["name"]).rename(bad / "moved.parquet")
    with pytest.raises(BeitDataError, match=f"{car['name']} .*is missing: rerun 'beit-data tokenize'"):
        _drain(pretraining_loader(bad, "fixture", batch_size=1, num_workers=2))
    (bad / "moved.parquet").rename(bad / car["name"])

    # bytes that differ from the manifest's sha256
    data = (bad / car["name"]).read_bytes()
    (bad / car["name"]).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BeitDataError, match=f"{car['name']}: sha256 differs from the token manifest") as e:
        _drain(pretraining_loader(bad, "fixture", batch_size=1, num_workers=1))
    assert "Traceback" not in str(e.value)
    (bad / car["name"]).write_bytes(data)

    # a sidecar (with a matching hash) whose rows do not line up with the shard
    rows = read_sidecar(bad / car["name"])
    for field in ("keys", "box", "flip", "jitter", "jitter_order", "tokens", "mask"):
        value = getattr(rows, field)
        setattr(rows, field, value[::-1] if isinstance(value, list) else value[::-1].copy())
    swapped = write_sidecar(bad / car["name"], rows, {})
    _edit_token_manifest(bad, lambda cs: cs[1].update(sha256=hashlib.sha256(swapped).hexdigest()))
    with pytest.raises(BeitDataError, match=f"sample 0 is .* but its token sidecar .*{car['name']}"):
        _drain(pretraining_loader(bad, "fixture", batch_size=1))

    # a sidecar with too few rows
    rows = read_sidecar(bad / car["name"])
    for field in ("keys", "box", "flip", "jitter", "jitter_order", "tokens", "mask"):
        setattr(rows, field, getattr(rows, field)[:-1])
    short = write_sidecar(bad / car["name"], rows, {})
    _edit_token_manifest(bad, lambda cs: cs[1].update(sha256=hashlib.sha256(short).hexdigest()))
    with pytest.raises(BeitDataError, match=f"{car['name']}: {car['count'] - 1} rows"):
        _drain(pretraining_loader(bad, "fixture", batch_size=1))


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_shard_raises_or_is_counted(root, tmp_path, workers):
    bad = copy_root(root, tmp_path)
    shard = json.loads((bad / "manifest.json").read_text())["splits"]["train"]["shards"][2]
    path = bad / shard["name"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    start = time.monotonic()
    with pytest.raises(BeitDataError, match=f"{shard['name']} is truncated or corrupt") as e:
        _drain(pretraining_loader(bad, "fixture", batch_size=BATCH, num_workers=workers))
    assert "\n" not in str(e.value)
    del e
    gc.collect()
    assert time.monotonic() - start < 4  # the workers shut down at once (a raising worker would stall 5 s)
    loader = pretraining_loader(bad, "fixture", batch_size=BATCH, num_workers=workers, on_error="skip", keys=True)
    batches = list(loader)
    assert len(batches) == len(loader)
    replaced = sum(int(b["replaced"].sum()) for b in batches)
    assert 0 < replaced == loader.replaced_total < shard["count"] + 1


def test_undecodable_image_raises_or_is_replaced(root, tmp_path):
    bad = copy_root(root, tmp_path)
    shard = json.loads((bad / "manifest.json").read_text())["splits"]["train"]["shards"][0]
    samples = shard_samples(bad, shard["name"])
    broken = samples[1][0]
    write_shard(bad / shard["name"], [
        Sample(key, b"\xff\xd8 not a jpeg" if key == broken else p["jpg"], int(p["cls"]), json.loads(p["json"]))
        for key, p in samples])
    with pytest.raises(BeitDataError, match=f"cannot decode sample '{broken}' of image shard {shard['name']}"):
        _drain(pretraining_loader(bad, "fixture", batch_size=1, drop_last=False))
    loader = pretraining_loader(bad, "fixture", batch_size=1, drop_last=False, on_error="skip", keys=True)
    batches = list(loader)
    assert loader.replaced_total == 1 and len(batches) == len(loader)
    assert [b["key"] for b in batches if b["replaced"].item()] != [[broken]]  # a good sample stands in


def test_import_beit_data_stays_light():
    code = "import sys, beit_data; assert 'torch' not in sys.modules and 'ray' not in sys.modules; " \
           "beit_data.pretraining_loader; assert 'ray' not in sys.modules and 'pipelines' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_tokens_recomputed_from_the_loaders_pixels_equal_the_stored_ones(root, tmp_path):
    """The real tokenize job's tokens, recomputed with the test encoder from what the loader renders."""
    from pipelines.tokenize import TokenizeOptions, TokenizerSpec, run_tokenize_job
    from tests.tokenizer_fixtures import make_encoder_pkl, reference_tokens

    real = copy_root(root, tmp_path)
    pkl = make_encoder_pkl(tmp_path / "encoder.pkl", n_hid=32, vocab_size=512, seed=3)
    token_id = run_tokenize_job(real, TokenizerSpec(str(pkl), trust_pickle=True, batch_size=16),
                                TokenizeOptions(), quiet=True)["token_id"]
    encoder = torch.load(pkl, weights_only=False).float().eval()
    loader = pretraining_loader(real, token_id, batch_size=8, uint8=True, tokenizer_pixels=True, num_workers=2)
    checked = 0
    for epoch in range(2):  # both stored views of every sample
        loader.set_epoch(epoch)
        for batch in loader:
            assert batch["tokenizer_pixel_values"].shape[-2:] == (112, 112)
            expected = reference_tokens(encoder, batch["tokenizer_pixel_values"])
            np.testing.assert_array_equal(batch["visual_tokens"].numpy().reshape(expected.shape), expected)
            checked += len(expected)
    assert checked == 2 * len(loader) * 8
