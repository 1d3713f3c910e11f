"""One line per measured ratio, in a form ``python -m bench`` collects into a table."""
from __future__ import annotations

import json
import time
from collections.abc import Callable

PREFIX = "BENCH-RESULT "


def report(name: str, value: float, baseline: str, baseline_value: float, unit: str,
           goal: float | None = None, higher_is_better: bool = True) -> float:
    """Print ``name`` vs ``baseline`` (both in ``unit``, measured in the same run) and return the ratio.

    The ratio is value / baseline_value when higher is better (throughput), else
    baseline_value / value (times), so a ratio above 1 always means faster.
    """
    ratio = value / baseline_value if higher_is_better else baseline_value / value
    verdict = "" if goal is None else (" (goal >= %.2f: %s)" % (goal, "met" if ratio >= goal else "NOT met"))
    print(f"{name}: {value:,.4g} {unit} vs {baseline}: {baseline_value:,.4g} {unit} -> ratio {ratio:.2f}{verdict}")
    print(PREFIX + json.dumps({"name": name, "value": value, "baseline": baseline, "baseline_value": baseline_value,
                               "unit": unit, "ratio": ratio, "goal": goal}))
    return ratio


def best_rates(repeats: int, timed: dict[str, tuple[int, Callable[[], object]]]) -> dict[str, float]:
    """Items per CPU second of each ``name: (items, fn)``, best of ``repeats`` turns taken in rotation."""
    best = dict.fromkeys(timed, float("inf"))
    for _ in range(repeats):
        for name, (_, fn) in timed.items():
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
    return {name: count / best[name] for name, (count, _) in timed.items()}
