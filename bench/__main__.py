"""Run every benchmark and write one Markdown table of ratios vs their baselines.

    python -m bench [--out bench-report.md] [--only shard,masks]

Each benchmark runs in its own process (so one's Ray or threads do not
disturb the next) and reports through bench.report.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from bench.report import PREFIX

BENCHMARKS = ["shard", "masks", "views", "tokenize", "loader", "train_step", "tokenize_gpu"]
LIBRARIES = ["torch", "torchvision", "ray", "webdataset", "pyarrow", "transformers", "numpy", "pillow-simd", "pillow"]


def _versions() -> str:
    found = []
    for lib in LIBRARIES:
        try:
            found.append(f"{lib} {metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            continue
    import PIL

    return ", ".join(found) + f"; PIL in use: {PIL.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-report.md"))
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else BENCHMARKS
    rows, failures = [], []
    for name in chosen:
        print(f"== bench.{name}", file=sys.stderr, flush=True)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}"], capture_output=True, text=True,
                              env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        sys.stderr.write(proc.stdout)
        results = [json.loads(line[len(PREFIX):]) for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
        if proc.returncode != 0:
            failures.append(f"| {name} | failed (exit {proc.returncode}): "
                            f"{(proc.stderr.strip().splitlines() or ['?'])[-1][:120]} |")
        elif not results:
            failures.append(f"| {name} | skipped: {(proc.stdout.strip().splitlines() or ['no output'])[-1][:120]} |")
        for r in results:
            goal = "" if r["goal"] is None else f"≥ {r['goal']:g} {'✓' if r['ratio'] >= r['goal'] else '✗'}"
            rows.append(f"| {name} | {r['name']} | {r['value']:,.4g} {r['unit']} | {r['baseline']} | "
                        f"{r['baseline_value']:,.4g} {r['unit']} | **{r['ratio']:.2f}** | {goal} | "
                        f"{time.monotonic() - start:.0f} s |")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    text = "\n".join([
        "# beit-data benchmarks", "",
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"{platform.platform()}", "", f"Libraries: {_versions()}", "",
        "| bench | measured | value | baseline | baseline value | ratio | goal | wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows, "",
        *(["| bench | note |", "| --- | --- |", *failures, ""] if failures else []),
    ])
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
