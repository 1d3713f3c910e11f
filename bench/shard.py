"""Benchmark: images/s of the shard job vs `tar cf` over the same files, same run.

Goal: ratio >= 0.8 (sharding costs at most 25% over a plain copy). Ray start-up
is excluded (it is paid once per job, not per image); listing, checking,
repairing, writing, hashing and committing are included.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from bench.report import report
    from beit_data.corpus import build_train
    from beit_data.imagecheck import check_image
    from pipelines.ray_session import ensure_ray
    from pipelines.shard import ShardOptions, run_shard_job
    import PIL

    work = Path(tempfile.mkdtemp(prefix="bench-shard-"))
    corpus = build_train(work / "src", classes=args.classes, per_class=args.per_class, oddities=False)
    files = sorted(p for p in (work / "src").rglob("*.JPEG"))
    n = len(files)
    mb = sum(p.stat().st_size for p in files) / 1e6

    def tar_copy() -> None:
        subprocess.run(["tar", "cf", str(work / "copy.tar"), "-C", str(corpus.src), "."], check=True)

    ensure_ray(num_cpus=args.cpus)

    def shard_job(decode: bool) -> None:
        shutil.rmtree(work / "out", ignore_errors=True)
        run_shard_job(corpus.src, work / "out", ShardOptions(samples_per_shard=100, decode_check=decode),
                      quiet=True)

    datas = [p.read_bytes() for p in files]
    t_tar = best_of(args.repeats, tar_copy)
    t_job = best_of(args.repeats, lambda: shard_job(True))
    t_fast = best_of(args.repeats, lambda: shard_job(False))
    t_check = best_of(args.repeats, lambda: [check_image(d) for d in datas])
    print(f"PIL {PIL.__version__}; {n} JPEGs, {mb:.1f} MB, {args.cpus} CPUs")
    for label, t in (("--check decode (default)", t_job), ("--check structure", t_fast)):
        report(f"shard job {label}", n / t, "tar cf", n / t_tar, "images/s", goal=0.8)
        print(f"  {n / t / args.cpus:.0f} images/s per core")
    print(f"decode check alone, 1 core: {n / t_check:9.0f} images/s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
