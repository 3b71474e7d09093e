"""Intervals for shares: Wilson score intervals, win rates with ties counted as half, and cells over several
training seeds (seed_interval)."""

from __future__ import annotations

import math
from typing import Sequence


def win_rate(scores: Sequence[float], z: float = 1.96) -> dict[str, float]:
    """Mean score (ties count half) with a 95 % Wilson interval, the share of ties, and the number of comparisons.

    The interval treats each comparison as a win or a loss with the observed rate (a tie as half of each), which
    is the widest variance a 0/0.5/1 score can have: it does not shrink to zero width when every comparison ties
    (a normal interval from the scores' own spread did), and it stays inside [0, 1].
    """
    n = len(scores)
    if n == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "ties": float("nan"), "n": 0}
    return {**wilson(sum(scores) / n, n, z), "ties": sum(score == 0.5 for score in scores) / n}


def wilson(mean: float, n: int, z: float = 1.96) -> dict[str, float]:
    """{mean, low, high, n}: the Wilson score interval for a rate `mean` observed over `n` comparisons."""
    center = (mean + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"mean": mean, "low": max(0.0, center - half), "high": min(1.0, center + half), "n": n}


def seed_interval(pooled: dict[str, float], seed_means: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """A cell's interval that covers training noise as well as prompt sampling.

    `pooled`: the Wilson interval over the prompts of all seeds (wilson / win_rate); `seed_means`: each seed's own
    value. With two or more seeds the interval is the union of `pooled` and the Student t interval over the seed
    means (each seed one observation: its value already carries its prompts' sampling noise, and the spread
    between seeds adds what training noise does). The union keeps the prompt interval when seeds agree by chance.
    With one seed: `pooled`, marked `seeds: 1` (a verdict from it is indicative only).
    """
    values = [float(v) for v in seed_means if v is not None and not math.isnan(v)]
    result = {**pooled, "seeds": len(values)}
    if len(values) < 2:
        return result
    from scipy.stats import t  # the Student quantile; scipy comes with the kit's scientific stack

    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = t.ppf(0.5 + level / 2, len(values) - 1) * sd / math.sqrt(len(values))
    low, high = max(0.0, mean - half), min(1.0, mean + half)
    result.update(low=min(pooled["low"], low), high=max(pooled["high"], high), seed_low=low, seed_high=high)
    return result
