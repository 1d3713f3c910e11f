"""Fine-tuning at 384 from a 224 MIM checkpoint: init, layer decay, loss, evaluation, HF export."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, BeitForImageClassification, BeitForMaskedImageModeling

from beit_data.train import (FinetuneConfig, PretrainConfig, classifier_from_pretrained, evaluate, model_folder,
                             resize_relative_position_table, run_finetune, run_pretrain)
from beit_data.train.finetune import classification_step
from beit_data.train.optim import cosine_factor, param_groups

NUM_LABELS = 5
TABLE = "relative_position_bias.relative_position_bias_table"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny 224 MIM run (3 steps) whose relative position bias has moved off zero."""
    out = tmp_path_factory.mktemp("pretrain")

    def batches(epoch):
        g = torch.Generator().manual_seed(epoch)
        for _ in range(3):
            yield {"pixel_values": torch.randn(2, 3, 224, 224, generator=g),
                   "bool_masked_pos": torch.rand(2, 196, generator=g) < 0.4,
                   "visual_tokens": torch.randint(0, 16, (2, 196), generator=g)}

    run_pretrain(PretrainConfig(out_dir=str(out), model="tiny", vocab_size=16, epochs=1, steps_per_epoch=3,
                                lr=1e-2, warmup_epochs=0, log_every=100), batches)
    return out


def _train_batches(epoch):
    g = torch.Generator().manual_seed(100 + epoch)
    for _ in range(2):
        yield {"pixel_values": torch.randn(2, 3, 384, 384, generator=g),
               "labels": torch.softmax(3 * torch.randn(2, NUM_LABELS, generator=g), dim=-1)}


def test_classifier_init_copies_and_resamples_the_shared_bias(pretrained):
    folder = model_folder(pretrained)
    mim = BeitForMaskedImageModeling.from_pretrained(folder)
    shared = mim.beit.shared_position_bias.relative_position_bias_table.detach()
    assert shared.abs().max() > 0
    model = classifier_from_pretrained(folder, num_labels=NUM_LABELS, image_size=384)
    cfg = model.config
    assert (cfg.image_size, cfg.num_labels, cfg.use_relative_position_bias,
            cfg.use_shared_relative_position_bias, cfg.use_mask_token) == (384, NUM_LABELS, True, False, False)
    expected = resize_relative_position_table(shared, (14, 14), (24, 24))
    state = model.beit.state_dict()
    for i in range(cfg.num_hidden_layers):
        assert torch.equal(state[f"layers.{i}.{TABLE}"], expected)
    for key in ("layers.1.attention.q_proj.weight", "layers.0.lambda_1", "embeddings.cls_token"):
        assert torch.equal(state[key], mim.beit.state_dict()[key])


def test_finetune_exports_a_384_model_that_transformers_reloads(pretrained, tmp_path):
    val = [{"pixel_values": torch.randn(3, 3, 384, 384), "labels": torch.tensor([0, 1, 4])}]
    cfg = FinetuneConfig(out_dir=str(tmp_path), init=str(pretrained), num_labels=NUM_LABELS, epochs=1,
                         steps_per_epoch=2, lr=1e-3, warmup_epochs=0, log_every=1,
                         labels=[f"c{i}" for i in range(NUM_LABELS)])
    model = run_finetune(cfg, _train_batches, val).eval()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert records[-1]["val_count"] == 3 and {"val_top1", "val_top5", "val_loss"} <= records[-1].keys()

    reloaded = BeitForImageClassification.from_pretrained(tmp_path / "final").eval()
    assert reloaded.config.image_size == 384 and reloaded.config.id2label[4] == "c4"
    pixels = torch.randn(2, 3, 384, 384)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).logits, reloaded(pixel_values=pixels).logits)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "final")
    assert (processor.size["height"], processor.size["width"]) == (384, 384)
    assert int(processor.resample) == 3 and not processor.do_center_crop  # bicubic
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.5] * 3


def test_soft_and_hard_labels():
    logits = torch.randn(4, NUM_LABELS)
    model = lambda pixel_values: SimpleNamespace(logits=logits)  # noqa: E731
    hard = torch.tensor([0, 3, 1, 4])
    loss_hard, _ = classification_step(model, {"pixel_values": None, "labels": hard})
    loss_onehot, _ = classification_step(model, {"pixel_values": None,
                                                 "labels": F.one_hot(hard, NUM_LABELS).float()})
    torch.testing.assert_close(loss_hard, F.cross_entropy(logits, hard))
    torch.testing.assert_close(loss_onehot, loss_hard)
    soft = torch.softmax(torch.randn(4, NUM_LABELS), -1)
    loss_soft, _ = classification_step(model, {"pixel_values": None, "labels": soft})
    torch.testing.assert_close(loss_soft, -(soft * logits.log_softmax(-1)).sum(-1).mean())


def test_evaluate_counts_top1_and_top5():
    class Fixed(torch.nn.Module):
        def forward(self, pixel_values):
            scores = torch.arange(7, 0, -1, dtype=torch.float32)  # class 0 ranks first, class 6 last
            return SimpleNamespace(logits=scores.expand(len(pixel_values), 7))

    labels = torch.tensor([0, 4, 5, 6])  # top-1: 1, top-5: 2 (classes 0..4)
    batches = [{"pixel_values": torch.zeros(2, 3, 8, 8), "labels": labels[:2]},
               {"pixel_values": torch.zeros(2, 3, 8, 8), "labels": F.one_hot(labels[2:], 7).float()}]
    out = evaluate(Fixed(), batches, FinetuneConfig(out_dir="unused", device="cpu"))
    assert (out["val_top1"], out["val_top5"], out["val_count"]) == (25.0, 50.0, 4)


def test_layer_decay_and_no_decay_groups(pretrained):
    model = classifier_from_pretrained(model_folder(pretrained), num_labels=NUM_LABELS, image_size=224)
    groups = param_groups(model, lr=1.0, weight_decay=0.05, num_layers=2, layer_decay=0.65)
    where = {name: g for g in groups for name in g["names"]}
    assert len(where) == sum(1 for p in model.parameters() if p.requires_grad)
    assert where["beit.embeddings.patch_embeddings.projection.weight"]["lr_scale"] == pytest.approx(0.65 ** 3)
    assert where["beit.layers.0.attention.q_proj.weight"]["lr_scale"] == pytest.approx(0.65 ** 2)
    assert where["beit.layers.1.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.65)
    assert where["classifier.weight"]["lr_scale"] == 1.0
    for name in ("beit.embeddings.cls_token", f"beit.layers.0.{TABLE}", "beit.layers.0.lambda_1",
                 "beit.layers.1.layernorm_before.weight", "beit.pooler.layernorm.weight", "classifier.bias",
                 "beit.layers.0.attention.q_proj.bias"):
        assert where[name]["weight_decay"] == 0.0, name
    for name in ("beit.layers.0.attention.k_proj.weight", "beit.layers.1.mlp.fc2.weight", "classifier.weight",
                 "beit.embeddings.patch_embeddings.projection.weight"):
        assert where[name]["weight_decay"] == 0.05, name


def test_cosine_schedule_with_warmup():
    f = lambda step: cosine_factor(step, total_steps=110, warmup_steps=10, min_ratio=0.01)  # noqa: E731
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.01)
