"""The pretraining loop unchanged under ``torchrun --nproc-per-node 2`` (Gloo on CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent('''
    import os, sys, torch
    from beit_data.train import PretrainConfig, run_pretrain

    class Shard:
        """Each rank's share of the batches: same count on every rank, different data."""
        def __init__(self, rank):
            self.rank, self.epoch, self.pos = rank, 0, 0
        def __len__(self):
            return 3
        def set_epoch(self, epoch):
            self.epoch, self.pos = epoch, 0
        def state_dict(self):
            return {"rank": self.rank, "epoch": self.epoch, "pos": self.pos}
        def load_state_dict(self, state):
            self.epoch, self.pos = state["epoch"], state["pos"]
        def __iter__(self):
            while self.pos < 3:
                g = torch.Generator().manual_seed(100 * self.rank + 10 * self.epoch + self.pos)
                self.pos += 1
                yield {"pixel_values": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g),
                       "bool_masked_pos": torch.rand(2, 4, generator=g) < 0.5,
                       "visual_tokens": torch.randint(0, 8, (2, 4), generator=g)}

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    cfg = PretrainConfig(out_dir=out, model="tiny", image_size=32, vocab_size=8, epochs=2, lr=1e-3,
                         warmup_epochs=0, log_every=1, save_every=4)
    model = run_pretrain(cfg, Shard(rank))
    torch.save(model.state_dict(), f"{out}/rank{rank}.pt")
''')


def test_torchrun_two_ranks(tmp_path):
    script = tmp_path / "ddp_pretrain.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    states = [torch.load(run / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in states[0].items():  # DDP kept the replicas identical
        assert torch.equal(value, states[1][key]), key
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # one writer: rank 0
    mid = torch.load(run / "checkpoints" / "step-00000004" / "trainer.pt", weights_only=True)
    assert (mid["epoch"], mid["in_epoch"]) == (1, 1)
    assert [s["rank"] for s in mid["loader"]] == [0, 1] and all(s["pos"] == 1 for s in mid["loader"])
