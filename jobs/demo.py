"""End-to-end demo on the bundled photos: mini-ImageNet -> shards -> tokens -> pretrain -> 384 fine-tune.

Builds a small ImageNet-shaped corpus (ImageFolder train with the real
oddities, flat val with LOC_val_solution.csv) from the public-domain photos in
beit_data/photos, then runs the same jobs a user runs on ImageNet: the shard
job and the tokenize job on a local Ray, a few MIM pretraining steps of a tiny
BEiT and a short 384 fine-tune from that checkpoint. The tokenizer is a seeded
small DALL-E encoder unless --weights gives OpenAI's (converted or, with
--trust-pickle, the original encoder.pkl).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="where everything goes (default ./demo-out)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--per-class", type=int, default=16)
    p.add_argument("--weights", type=Path, help="DALL-E encoder (.safetensors, or encoder.pkl with --trust-pickle)")
    p.add_argument("--trust-pickle", action="store_true")
    p.add_argument("--steps", type=int, default=2, help="epochs of pretraining and of fine-tuning (default 2)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")


def _step(n: int, text: str) -> None:
    print(f"[{n}/6] {text}", file=sys.stderr, flush=True)


def _last_log(run: Path, key: str) -> dict:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return next(r for r in reversed(rows) if key in r)


def run(args: argparse.Namespace) -> int:
    from beit_data.corpus import build_train, build_val
    from beit_data.sources import read_labels
    from beit_data.verify import verify
    from jobs.cli import main as cli
    from pipelines.ray_session import ensure_ray
    from pipelines.shard import ShardOptions, run_shard_job
    from pipelines.tokenize import TokenizeOptions, TokenizerSpec, run_tokenize_job
    from tokenizer import seeded_encoder

    out: Path = args.out.resolve()
    root = out / "data"
    rows: list[tuple[str, str, str]] = []
    start = time.monotonic()
    _step(1, f"building mini-ImageNet from the bundled photos in {out}/src")
    train = build_train(out / "src" / "train", classes=args.classes, per_class=args.per_class)
    val = build_val(out / "src" / "val", classes=args.classes, count=4 * args.classes)
    rows.append(("corpus", f"{train.inputs} train + {val.inputs} val inputs "
                 f"({len(train.broken)} broken, {len(train.repaired)} to repair)", str(out / "src")))

    _step(2, "shard job on a local Ray")
    ensure_ray(num_cpus=args.num_cpus)
    for split, corpus, labels in (("train", train, None), ("val", val, read_labels(val.labels))):
        s = run_shard_job(corpus.src, root, ShardOptions(split=split, samples_per_shard=16), labels=labels,
                          names=None, overwrite=True)
        rows.append((f"shard {split}", f"{s['written']} written, {s['repaired']} repaired, {s['quarantined']} "
                     f"quarantined, {s['shards']} shards, {s['written'] / max(s['seconds'], 1e-9):,.0f} img/s",
                     str(root / "images" / split)))

    _step(3, "tokenize job: 2 views per image, DALL-E tokens + blockwise masks")
    weights = args.weights or seeded_encoder(out / "seeded-encoder.safetensors", n_hid=64, vocab_size=8192)
    t = run_tokenize_job(root, TokenizerSpec(str(weights), trust_pickle=args.trust_pickle, batch_size=64),
                         TokenizeOptions(views=2), token_id="demo", overwrite=True)
    rows.append(("tokenize", f"{t['count']} images x 2 views, {t['sidecars']} sidecars, "
                 f"{t['images_per_s']} img/s ({'given' if args.weights else 'seeded small'} encoder)",
                 str(root / "tokens" / "demo")))
    problems = list(verify(root))
    rows.append(("verify", "OK" if not problems else f"{len(problems)} problems: {problems[0]}", str(root)))

    common = ["--epochs", str(args.steps), "--batch-size", "8", "--num-workers", "0", "--warmup-epochs", "0",
              "--log-every", "1", "--resume", "none"]
    _step(4, "MIM pretraining of a tiny BEiT at 224 on the stream")
    if cli(["pretrain", str(root), "--tokens", "demo", "--model", "tiny", "--out", str(out / "pretrain"),
            "--lr", "1e-3", *common]):
        return 1
    log = _last_log(out / "pretrain", "mim_acc")
    rows.append(("pretrain", f"step {log['step']}: loss {log['loss']:.3f}, masked-token acc {log['mim_acc']:.3f}, "
                 f"{log['images_per_s']:.0f} img/s", str(out / "pretrain")))

    _step(5, "fine-tuning at 384 from the pretraining checkpoint")
    if cli(["finetune", str(root), "--init", str(out / "pretrain"), "--resolution", "384",
            "--out", str(out / "finetune"), "--lr", "1e-3", *common]):
        return 1
    val_log = _last_log(out / "finetune", "val_top1")
    rows.append(("finetune 384", f"val top-1 {val_log['val_top1']:.1f}%, top-5 {val_log['val_top5']:.1f}% "
                 f"on {val_log['val_count']} images", str(out / "finetune" / "final")))
    _step(6, "summary")
    _table(rows, time.monotonic() - start)
    print(f"look at a sample: beit-data inspect {root} --png sample.png")
    return 0


def _table(rows: list[tuple[str, str, str]], seconds: float) -> None:
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    print(f"\n{'step':{width[0]}}  {'result':{width[1]}}  output")
    for step, result, where in rows:
        print(f"{step:{width[0]}}  {result:{width[1]}}  {where}")
    print(f"\ndemo finished in {seconds:.0f} s")
