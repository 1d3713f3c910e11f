"""The loader's epoch arithmetic, without I/O: every rank the same batch count, the epoch covered within
the stated bound, resume = the rest of the uninterrupted epoch, for uneven shards and any world/workers."""
from __future__ import annotations

from collections import Counter
from itertools import product

import numpy as np
import pytest

from beit_data.loader.plan import Layout
from beit_data.loader.stream import batched, shuffled
from beit_data.rng import rng_for

COUNTS = (7, 3, 11, 1, 0, 9, 5)  # uneven, one empty shard; 36 samples


def round_robin(per_slot: list[list[list]]) -> list[list]:
    """What torch's DataLoader yields from workers' batch lists: one from each live worker in turn."""
    its, out = [iter(b) for b in per_slot], []
    live = list(range(len(its)))
    while live:
        for slot in list(live):
            batch = next(its[slot], None)
            if batch is None:
                live.remove(slot)
            else:
                out.append(batch)
    return out


def rank_batches(layout: Layout, order: np.ndarray, rank: int, done: int = 0) -> list[list]:
    per_slot = []
    for slot in range(layout.workers):
        task = layout.task(order, rank, slot, done)
        samples = [(s.shard, i) for s in task.segments for i in range(s.start, s.stop)][task.skip:]
        per_slot.append(list(batched(samples, task.batch_sizes)))
        assert len(per_slot[-1]) == len(task.batch_sizes)
    return round_robin(per_slot)


@pytest.mark.parametrize("drop_last", [True, False])
def test_equal_batches_and_coverage(drop_last):
    for world, workers, batch in product(range(1, 5), range(1, 5), (1, 2, 4, 5)):
        layout = Layout(COUNTS, world, batch, workers, drop_last)
        order = layout.shard_order(seed=3, split="train", epoch=1, shuffle=True)
        ranks = [rank_batches(layout, order, r) for r in range(world)]
        assert {len(b) for b in ranks} == {layout.batches}, (world, workers, batch)
        sizes = {len(x) for b in ranks for x in b[:-1]}
        assert sizes <= {batch}
        seen = Counter(s for b in ranks for x in b for s in x)
        everything = {(j, i) for j, n in enumerate(COUNTS) for i in range(n)}
        assert set(seen) <= everything
        if drop_last:
            assert max(seen.values()) == 1
            assert 0 <= len(everything) - len(seen) < world * batch
        else:
            assert set(seen) == everything
            assert sum(seen.values()) - len(everything) <= world - 1


def test_order_changes_with_epoch_but_not_with_reruns():
    layout = Layout(COUNTS, 2, 3, 2, True)
    a = [rank_batches(layout, layout.shard_order(0, "train", e, True), 1) for e in (0, 1)]
    b = rank_batches(layout, layout.shard_order(0, "train", 0, True), 1)
    assert a[0] == b and a[0] != a[1]


def test_resume_yields_the_rest():
    for world, workers, batch, drop_last in product((1, 3), (1, 2, 3), (2, 3), (True, False)):
        layout = Layout(COUNTS, world, batch, workers, drop_last)
        order = layout.shard_order(5, "train", 2, True)
        for rank in range(world):
            full = rank_batches(layout, order, rank)
            for done in range(len(full) + 1):
                assert rank_batches(layout, order, rank, done) == full[done:], (world, workers, batch, rank, done)


def test_resume_outside_the_epoch_is_refused():
    layout = Layout(COUNTS, 1, 4, 1, True)
    with pytest.raises(ValueError):
        layout.task(np.arange(len(COUNTS)), 0, 0, layout.batches + 1)


def test_shuffle_buffer_is_a_seeded_permutation():
    items = list(range(50))
    a = list(shuffled(items, rng_for(0, "t"), 8))
    assert sorted(a) == items and a != items
    assert a == list(shuffled(items, rng_for(0, "t"), 8))
    assert list(shuffled(items, rng_for(0, "t"), 1)) == items
