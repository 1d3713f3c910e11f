"""The shard job: accounting, format, labels, determinism, refusal and crash-resume."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from beit_data.classes import ClassIndex
from beit_data.corpus import build_train
from beit_data.errors import BeitDataError
from beit_data.sources import read_labels
from pipelines.shard import ShardOptions, plan_shards, run_shard_job

REPO = Path(__file__).resolve().parents[1]


def shard(src, root, **kw):
    labels, overwrite = kw.pop("labels", None), kw.pop("overwrite", False)
    opts = ShardOptions(**{"samples_per_shard": 8, **kw})
    return run_shard_job(src, root, opts, labels=read_labels(labels) if labels else None,
                         overwrite=overwrite, quiet=True)


def read_split(root: Path, split: str) -> tuple[dict, list[dict]]:
    """The manifest entry and every sample read back with plain webdataset."""
    manifest = json.loads((root / "manifest.json").read_text())
    urls = [str(root / s["name"]) for s in manifest["splits"][split]["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    return manifest, samples


def check_accounting(root: Path, split: str, corpus) -> list[dict]:
    manifest, samples = read_split(root, split)
    entry = manifest["splits"][split]
    metas = [json.loads(s["json"]) for s in samples]
    written = {m["source"].replace(".tar/", "/"): m for m in metas}
    quarantined = {q["source"].replace(".tar/", "/"): q["reason"] for q in entry["quarantine"]}
    assert len(samples) == entry["count"] == len(written)
    assert entry["count"] + len(entry["quarantine"]) == entry["inputs"] == corpus.inputs
    assert set(written) == set(corpus.images)
    assert set(quarantined) == set(corpus.broken)
    for source, prefix in corpus.broken.items():
        assert quarantined[source].startswith(prefix), (source, quarantined[source])
    assert {s for s, m in written.items() if m["repaired"]} == corpus.repaired
    ids = {c["synset"]: c["id"] for c in manifest["classes"]}
    for s, m in zip(samples, metas):
        assert int(s["cls"]) == ids[corpus.images[m["source"].replace(".tar/", "/")]] == m["class"]
        assert "." not in s["__key__"] and s["__key__"] == m["key"]
        im = Image.open(io.BytesIO(s["jpg"]))
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (m["width"], m["height"]))
    return samples


def test_folder_layout_accounts_for_every_input(ray_session, corpora, tmp_path):
    corpus = corpora["folder"]
    summary = shard(corpus.src, tmp_path)
    assert summary["written"] + summary["quarantined"] == corpus.inputs
    samples = check_accounting(tmp_path, "train", corpus)
    for s in samples:  # good RGB JPEGs are stored byte for byte
        meta = json.loads(s["json"])
        if not meta["repaired"]:
            assert s["jpg"] == (corpus.src / meta["source"]).read_bytes()


def test_tar_layout_streams_and_refuses_unsafe_members(ray_session, corpora, tmp_path):
    corpus = corpora["tar"]
    shard(corpus.src, tmp_path)
    check_accounting(tmp_path, "train", corpus)
    assert not (tmp_path.parent / "etc").exists() and not (tmp_path.parent / "escape.JPEG").exists()


def test_shards_are_plain_tars_with_fixed_headers(ray_session, corpora, tmp_path):
    shard(corpora["folder"].src, tmp_path)
    first = sorted((tmp_path / "images" / "train").glob("*.tar"))[0]
    listing = subprocess.run(["tar", "tvf", str(first)], capture_output=True, text=True, check=True).stdout
    assert listing.count("\n") % 3 == 0 and "1970-01-01" in listing
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" and m.mode == 0o644 for m in members)
    assert [m.name.rsplit(".", 1)[1] for m in members[:3]] == ["jpg", "cls", "json"]


def test_global_shuffle_mixes_classes_and_depends_on_seed(ray_session, corpora, tmp_path):
    shard(corpora["folder"].src, tmp_path / "a", seed=1)
    shard(corpora["folder"].src, tmp_path / "b", seed=1)
    shard(corpora["folder"].src, tmp_path / "c", seed=2)
    sha = {k: [s["sha256"] for s in json.loads((tmp_path / k / "manifest.json").read_text())
               ["splits"]["train"]["shards"]] for k in "abc"}
    assert sha["a"] == sha["b"] and sha["a"] != sha["c"]
    _, samples = read_split(tmp_path / "a", "train")
    first_shard = {int(s["cls"]) for s in samples[:7]}
    assert len(first_shard) >= 3  # sorted input order would give one or two classes here


def test_validation_labels_share_the_train_class_index(ray_session, corpora, tmp_path):
    shard(corpora["tar"].src, tmp_path)
    for name in ("val", "val_tar"):
        corpus = corpora[name]
        shard(corpus.src, tmp_path, split=name, labels=corpus.labels)
        check_accounting(tmp_path, name, corpus)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "val", "val_tar"}


def test_unknown_synset_in_val_is_quarantined(ray_session, corpora, tmp_path):
    shard(corpora["folder"].src, tmp_path)
    corpus = corpora["val"]
    labels = tmp_path / "labels.csv"
    labels.write_text(corpus.labels.read_text().replace("n01440764", "n09999999"))
    shard(corpus.src, tmp_path, split="val", labels=labels)
    entry = json.loads((tmp_path / "manifest.json").read_text())["splits"]["val"]
    assert entry["quarantine"] and all("not in the class index" in q["reason"] for q in entry["quarantine"])
    assert entry["count"] + len(entry["quarantine"]) == corpus.inputs


def test_other_options_into_same_output_are_refused(ray_session, corpora, tmp_path):
    shard(corpora["folder"].src, tmp_path)
    with pytest.raises(BeitDataError, match="--overwrite"):
        shard(corpora["folder"].src, tmp_path, seed=5)
    shard(corpora["folder"].src, tmp_path, seed=5, overwrite=True)
    assert json.loads((tmp_path / "manifest.json").read_text())["splits"]["train"]["options"]["seed"] == 5


def test_byte_cap_cuts_shards(corpora):
    from beit_data.sources import list_source

    entries = list_source(corpora["folder"].src).entries
    cap = max(e.size for e in entries) * 2
    shards = plan_shards(entries, ShardOptions(samples_per_shard=1000, max_shard_bytes=cap))
    assert len(shards) > 1 and all(sum(e.size for e in s) <= cap for s in shards)
    assert sorted(e.key for s in shards for e in s) == sorted(e.key for e in entries)


def test_class_file_fixes_the_order(ray_session, corpora, tmp_path):
    order = ["n01491361", "n01484850", "n01443537", "n01440764"]
    run_shard_job(corpora["folder"].src, tmp_path, ShardOptions(samples_per_shard=8),
                  classes=ClassIndex(tuple(order)), quiet=True)
    manifest, samples = read_split(tmp_path, "train")
    assert [c["synset"] for c in manifest["classes"]] == order
    assert all(int(s["cls"]) == order.index(json.loads(s["json"])["synset"]) for s in samples)


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "jobs.shard", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_kill_9_then_rerun_gives_identical_shards(tmp_path):
    corpus = build_train(tmp_path / "src", classes=4, per_class=40)
    args = ["--samples-per-shard", "2", "--num-cpus", "1", "--quiet"]
    reference = _cli(str(corpus.src), str(tmp_path / "ref"), *args)
    victim = _cli(str(corpus.src), str(tmp_path / "out"), *args)
    records = tmp_path / "out" / ".state" / "images" / "train"
    deadline = time.monotonic() + 120
    while len(list(records.glob("*.tar.json"))) < 3 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    committed = len(list(records.glob("*.tar.json")))
    assert reference.wait() == 0, reference.stdout.read().decode()
    ref_manifest = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    total = len(ref_manifest["splits"]["train"]["shards"])
    assert 3 <= committed < total, "the kill must land mid-run"
    rerun = _cli(str(corpus.src), str(tmp_path / "out"), *args)
    out = rerun.communicate()[0].decode()
    assert rerun.returncode == 0, out
    kept = int(out.split(" kept from an earlier run")[0].rsplit("(", 1)[1])
    assert kept >= committed
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest == ref_manifest
    for s in manifest["splits"]["train"]["shards"]:
        assert (tmp_path / "out" / s["name"]).read_bytes() == (tmp_path / "ref" / s["name"]).read_bytes()
    assert not list((tmp_path / "out" / "images" / "train").glob(".*partial"))
