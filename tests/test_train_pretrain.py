"""MIM pretraining loop on a tiny BEiT: learning, exact resume, uint8 pixels."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from beit_data.errors import BeitDataError
from beit_data.train import PretrainConfig, latest_checkpoint, mim_config, run_pretrain
from beit_data.train.pretrain import pretrain_model

GRID, VOCAB = 4, 16  # 64 px images, 16 px patches


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fixed noise images, each with its own visual token on every patch.

    A masked patch's token can only be told from the visible patches of the
    same image, so accuracy above 1/n means the model learned the images.
    """
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(n, 3, 64, 64, generator=g)
    tokens = torch.randperm(VOCAB, generator=g)[:n, None].expand(n, GRID * GRID)
    return pixels, tokens.contiguous()


def _batch(epoch: int, i: int, pixels: torch.Tensor, tokens: torch.Tensor) -> dict:
    g = torch.Generator().manual_seed(1000 * epoch + i)
    return {"pixel_values": pixels + 0.05 * torch.randn(pixels.shape, generator=g),
            "bool_masked_pos": torch.rand(tokens.shape, generator=g) < 0.4, "visual_tokens": tokens}


def _config(out: Path, **kw) -> PretrainConfig:
    base = dict(out_dir=str(out), model="tiny", image_size=64, vocab_size=VOCAB, lr=5e-3, min_lr=1e-5,
                warmup_epochs=1, log_every=1, resume="auto")
    return PretrainConfig(**{**base, **kw})


def _losses(out: Path) -> dict[int, float]:
    """Step -> loss from the run log (a resumed run's lines replace the crashed run's)."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


class _Loader:
    """A re-iterable loader with set_epoch/state_dict/load_state_dict, like the streaming loader."""

    def __init__(self, steps: int, crash_at: int | None = None):
        self.pixels, self.tokens = _images()
        self.steps, self.crash_at = steps, crash_at
        self.epoch = self.pos = self.served = 0

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.pos = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]

    def __iter__(self):
        while self.pos < self.steps:
            if self.served == self.crash_at:
                raise RuntimeError("simulated crash")
            self.served += 1
            self.pos += 1
            yield _batch(self.epoch, self.pos - 1, self.pixels, self.tokens)


def _factory(steps: int, crash_at: int | None = None):
    """A callable epoch -> generator without any state support."""
    pixels, tokens = _images()
    served = [0]

    def batches(epoch: int):
        for i in range(steps):
            if served[0] == crash_at:
                raise RuntimeError("simulated crash")
            served[0] += 1
            yield _batch(epoch, i, pixels, tokens)

    return batches


def test_tiny_model_learns_masked_tokens(tmp_path):
    cfg = _config(tmp_path, epochs=10, steps_per_epoch=10, log_every=10, save_every=10_000, drop_path=0.0)
    model = run_pretrain(cfg, _factory(10))
    losses = _losses(tmp_path)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert losses[100] < 0.1 * losses[10]
    assert records[-1]["mim_acc"] > 0.9  # chance is 1/16; ignoring the image content caps it at 1/4
    assert {"images_per_s", "data_wait", "lr"} <= records[-1].keys()
    assert 0.0 <= records[-1]["data_wait"] < 1.0
    # the final checkpoint is a Hugging Face folder holding the trained weights
    from transformers import BeitForMaskedImageModeling
    reloaded = BeitForMaskedImageModeling.from_pretrained(latest_checkpoint(tmp_path) / "model")
    assert reloaded.config.use_shared_relative_position_bias and reloaded.config.vocab_size == VOCAB
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


@pytest.mark.parametrize("stateful", [True, False], ids=["loader-state", "replay"])
def test_resume_reproduces_uninterrupted_losses(tmp_path, stateful):
    kw = dict(epochs=3, steps_per_epoch=4, save_every=5, drop_path=0.1)  # step 5 = epoch 1, batch 1
    make = (lambda crash=None: _Loader(4, crash)) if stateful else (lambda crash=None: _factory(4, crash))
    run_pretrain(_config(tmp_path / "straight", **kw), make())
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pretrain(_config(tmp_path / "crashed", **kw), make(crash=7))
    assert latest_checkpoint(tmp_path / "crashed").name == "step-00000005"
    resumed_source = make()
    run_pretrain(_config(tmp_path / "crashed", **kw), resumed_source)
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "crashed")
    assert sorted(straight) == list(range(1, 13)) == sorted(resumed)
    assert resumed == straight  # bit-for-bit the same curve
    if stateful:  # restored through load_state_dict: only the 7 remaining batches were produced
        assert resumed_source.served == 7


def test_uint8_pixels_train_like_pixels_normalised_by_the_loader(tmp_path):
    g = torch.Generator().manual_seed(3)
    raw = [torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g) for _ in range(3)]
    masks = [torch.rand(2, 16, generator=g) < 0.5 for _ in range(3)]
    tokens = torch.randint(0, VOCAB, (2, 16), generator=g)

    def batches(pixels):
        return lambda epoch: [{"pixel_values": p, "bool_masked_pos": m, "visual_tokens": tokens}
                              for p, m in zip(pixels, masks)]

    run_pretrain(_config(tmp_path / "uint8", epochs=1), batches(raw))
    run_pretrain(_config(tmp_path / "float", epochs=1), batches([p.float() / 127.5 - 1.0 for p in raw]))
    uint8, floats = _losses(tmp_path / "uint8"), _losses(tmp_path / "float")
    assert sorted(uint8) == [1, 2, 3]
    assert uint8 == pytest.approx(floats, rel=1e-5)


def test_vocabulary_and_grid_come_from_the_token_manifest(tmp_path):
    folder = tmp_path / "tokens" / "dalle-test"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({
        "format": "beit-data/tokens", "version": 1, "resolution": 64, "grid": [GRID, GRID],
        "tokenizer": {"kind": "dalle", "vocab_size": 24}}))
    model = pretrain_model(_config(tmp_path, epochs=1, vocab_size=None, tokens_manifest=str(folder)))
    assert model.config.vocab_size == 24 and model.lm_head.out_features == 24
    assert model.config.use_mask_token and model.config.layer_scale_init_value == 0.1
    with pytest.raises(BeitDataError, match="token grid"):
        pretrain_model(_config(tmp_path, epochs=1, image_size=224, tokens_manifest=str(folder / "manifest.json")))


def test_model_size_from_a_config_json(tmp_path):
    mim_config("tiny", vocab_size=VOCAB, image_size=64).to_json_file(tmp_path / "CONFIG.json")
    config = mim_config(str(tmp_path / "CONFIG.json"), vocab_size=32, image_size=224)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size, config.image_size) == (64, 2, 32, 224)
    assert config.use_shared_relative_position_bias and config.use_mask_token
    with pytest.raises(BeitDataError, match="neither"):
        mim_config(str(tmp_path / "missing.json"))
