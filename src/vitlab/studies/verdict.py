"""A study's verdict, computed from its numbers: does the lecture's claim "A > B" hold over seeds?

    reproduced       the mean difference has the claim's sign and exceeds twice its standard error
    not reproduced   the mean difference has the opposite sign and exceeds twice its standard error
    inconclusive     otherwise (including a single seed: one run has no standard error)

Paired runs (A and B trained with the same seeds on the same data) use the standard error of the per-seed
differences; unpaired ones sqrt(sa²/na + sb²/nb). A quick (smoke-test) run gets no verdict at all, and a
comparison of models that are not past chance by a wide margin (`undertrained`) is inconclusive whatever its
numbers: a model near chance keeps its (near-constant) predictions under any perturbation, which says nothing.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, SMOKE_TEST = ("reproduced", "not reproduced", "inconclusive",
                                                        "none (quick mode is a smoke test)")


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def compare(a: Sequence[float], b: Sequence[float], *, paired: bool, higher_is_claimed: bool = True,
            quick: bool = False, undertrained: str | None = None) -> dict[str, Any]:
    """The verdict on the claim "A > B" (or "A < B" when higher_is_claimed is False) from per-seed values.

    undertrained: why the compared models cannot decide the claim (see `undertrained`); the verdict is then
    inconclusive and the reason is kept in the result."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        raise ValueError("compare needs at least one value on each side")
    if paired and len(a) != len(b):
        raise ValueError(f"paired comparison needs as many A as B values ({len(a)} vs {len(b)})")
    diff = statistics.fmean(a) - statistics.fmean(b)
    if paired:
        diffs = [x - y for x, y in zip(a, b)]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    else:
        se = (math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
              if len(a) > 1 and len(b) > 1 else None)
    signed = diff if higher_is_claimed else -diff
    if quick:
        label = SMOKE_TEST
    elif se is None or undertrained:
        label = INCONCLUSIVE
    elif signed > 2 * se:
        label = REPRODUCED
    elif signed < -2 * se:
        label = NOT_REPRODUCED
    else:
        label = INCONCLUSIVE
    result = {"difference": diff, "standard_error": se, "paired": paired, "n": [len(a), len(b)], "verdict": label}
    if undertrained and not quick:
        result["undertrained"] = undertrained
    return result


def undertrained(top1: dict[str, Sequence[float]], num_classes: int) -> str | None:
    """None when every model's mean accuracy (percent, per seed) is at least halfway from chance to 100%;
    otherwise the reason, naming the models below that floor ("past chance by a wide margin" made a number)."""
    chance = 100.0 / num_classes
    floor = chance + (100.0 - chance) / 2
    low = {name: statistics.fmean(float(v) for v in values) for name, values in top1.items()}
    low = {name: mean for name, mean in low.items() if mean < floor}
    if not low:
        return None
    named = ", ".join(f"{name} {mean:.1f}%" for name, mean in low.items())
    return f"not past chance by a wide margin (floor {floor:.1f}%, chance {chance:.1f}%): {named}"


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
    """'0.812 ± 0.014' (or '0.812' for one value)."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
