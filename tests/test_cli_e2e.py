"""The CLI end to end: demo, inspect, verify, pretrain resume and the 384 model in transformers."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def beit_data(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = beit_data("demo", "--out", str(out), "--per-class", "6", "--steps", "1", "--num-cpus", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_demo_summary_accounts_for_every_step(demo):
    out, stdout = demo
    for step in ("corpus", "shard train", "tokenize", "verify", "pretrain", "finetune 384"):
        assert f"\n{step} " in stdout
    assert "4 quarantined" in stdout and "verify        OK" in stdout


def test_finetuned_model_loads_in_transformers_at_384(demo):
    from transformers import BeitForImageClassification

    out, _ = demo
    model = BeitForImageClassification.from_pretrained(out / "finetune" / "final").eval()
    assert model.config.image_size == 384 and model.config.num_labels == 4
    processor = json.loads((out / "finetune" / "final" / "preprocessor_config.json").read_text())
    assert processor["size"]["height"] == 384
    with torch.no_grad():
        logits = model(pixel_values=torch.zeros(1, 3, 384, 384)).logits
    assert logits.shape == (1, 4) and torch.isfinite(logits).all()


def test_inspect_text_and_png(demo, tmp_path):
    out, _ = demo
    text = beit_data("inspect", str(out / "data"))
    assert text.returncode == 0 and "quarantined" in text.stdout and "tokens demo" in text.stdout
    png = tmp_path / "sample.png"
    proc = beit_data("inspect", str(out / "data"), "--index", "2", "--png", str(png))
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    with Image.open(png) as im:
        assert im.width >= 4 * 224 and im.height >= 2 * 224


def test_verify_catches_a_flipped_byte_in_a_sidecar(demo, tmp_path):
    out, _ = demo
    root = tmp_path / "data"
    shutil.copytree(out / "data", root)
    assert beit_data("verify", str(root)).returncode == 0
    sidecar = sorted((root / "tokens" / "demo" / "train").glob("*.parquet"))[1]
    data = bytearray(sidecar.read_bytes())
    data[len(data) // 2] ^= 0x01
    sidecar.write_bytes(bytes(data))
    proc = beit_data("verify", str(root))
    assert proc.returncode == 1 and sidecar.name in proc.stdout and "sha256" in proc.stdout


def test_pretrain_cli_resumes_exactly_after_kill_9(demo, tmp_path):
    out, _ = demo
    args = ["pretrain", str(out / "data"), "--tokens", "demo", "--model", "tiny", "--epochs", "3",
            "--batch-size", "4", "--num-workers", "0", "--warmup-epochs", "0", "--log-every", "1",
            "--save-every", "3", "--lr", "1e-3"]
    full = beit_data(*args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    victim = subprocess.Popen([sys.executable, "-m", "jobs.cli", *args, "--out", str(tmp_path / "cut")], cwd=REPO,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = tmp_path / "cut" / "checkpoints" / "step-00000003" / "trainer.pt"
    deadline = time.monotonic() + 300
    while not first.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()

    def losses(run: Path) -> dict[int, float]:  # the last value logged for each step
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    total = max(losses(tmp_path / "full"))
    assert first.exists() and max(losses(tmp_path / "cut")) < total, "the kill must land mid-run"
    resumed = beit_data(*args, "--out", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
