"""Intervals for shares: Wilson score intervals, and win rates with ties counted as half."""

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
