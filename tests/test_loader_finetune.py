"""The fine-tuning stream: augmented training batches with soft labels, evaluation batches, determinism."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from beit_data import finetuning_loader
from tests.loader_fixtures import shard_samples, sharded_root


@pytest.fixture(scope="module")
def root(ray_session, corpora, tmp_path_factory):
    return sharded_root(tmp_path_factory.getbasetemp(), corpora["folder"].src)


@pytest.fixture(scope="module")
def labels(root):
    manifest = json.loads((root / "manifest.json").read_text())
    return {k: int(p["cls"]) for s in manifest["splits"]["train"]["shards"] for k, p in shard_samples(root, s["name"])}


def test_training_batches_are_augmented_with_mixed_smoothed_labels(root):
    loader = finetuning_loader(root, "train", resolution=384, batch_size=4)
    num_classes = len(json.loads((root / "manifest.json").read_text())["classes"])
    batches = list(loader)
    assert len(batches) == len(loader) == sum(1 for _ in shard_samples_all(root)) // 4
    for batch in batches:
        assert batch["pixel_values"].shape == (4, 3, 384, 384) and batch["pixel_values"].dtype == torch.float32
        labels = batch["labels"]
        assert labels.shape == (4, num_classes) and labels.dtype == torch.float32
        torch.testing.assert_close(labels.sum(1), torch.ones(4))
        assert labels.min() >= 0.1 / num_classes - 1e-6
    top = torch.cat([b["labels"] for b in batches]).max(1).values
    assert (top < 1 - 0.1 + 0.1 / num_classes - 1e-3).any()  # some rows mix two classes


def shard_samples_all(root):
    manifest = json.loads((root / "manifest.json").read_text())
    for s in manifest["splits"]["train"]["shards"]:
        yield from shard_samples(root, s["name"])


def test_evaluation_covers_the_split_once_with_hard_labels(root, labels):
    world = 3
    ranks = [list(finetuning_loader(root, "train", train=False, resolution=224, batch_size=4, keys=True,
                                    rank=r, world_size=world, num_workers=1)) for r in range(world)]
    assert len({len(b) for b in ranks}) == 1
    seen = Counter()
    for batches in ranks:
        for batch in batches:
            assert batch["pixel_values"].shape[1:] == (3, 224, 224)
            assert batch["labels"].dtype == torch.int64
            assert batch["labels"].tolist() == [labels[k] for k in batch["key"]]
            seen.update(batch["key"])
    assert set(seen) == set(labels)
    assert sum(seen.values()) - len(labels) <= world - 1


def test_training_stream_is_reproducible_and_resumes_exactly(root):
    def make():
        loader = finetuning_loader(root, "train", resolution=96, batch_size=3, num_workers=2, keys=True, seed=4)
        loader.set_epoch(1)
        return loader

    full = list(make())
    again = list(make())
    first = make()
    it = iter(first)
    next(it), next(it), next(it)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert len(rest) == len(full) - 3
    for a, b, c in zip(full, again, full[3:]):
        assert a["key"] == b["key"] and torch.equal(a["pixel_values"], b["pixel_values"])
    for a, c in zip(rest, full[3:]):
        assert a["key"] == c["key"]
        assert torch.equal(a["pixel_values"], c["pixel_values"]) and torch.equal(a["labels"], c["labels"])
    state = torch.random.get_rng_state()
    list(finetuning_loader(root, "train", resolution=64, batch_size=3))
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
