"""Timing that a busy machine cannot bias: variants interleaved over rounds, medians and spreads, paired ratios.

Background load lands on whichever variant runs at that moment. Run once each in a fixed order, one noisy minute
can make the kit look 2x faster or 2x slower (a run of bench/train_step.py gave 0.48x, another 1.83x). So every
variant runs once per round, the order rotated each round (no variant always first or last), and a ratio is taken
within each round, between runs minutes apart at most, then summarised by its median and range over the rounds.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Sequence


def run_rounds(variants: Sequence[str], rounds: int, run_one: Callable[[str], Any],
               log: Callable[[str], None] = lambda message: None) -> dict[str, list[Any]]:
    """{variant: [result of round 1, round 2, ...]}; round r runs the variants rotated by r."""
    results: dict[str, list[Any]] = {variant: [] for variant in variants}
    for r in range(rounds):
        order = list(variants[r % len(variants):]) + list(variants[:r % len(variants)])
        for variant in order:
            results[variant].append(run_one(variant))
            log(f"round {r + 1}/{rounds}: {variant} done")
    return results


def spread(values: Sequence[float]) -> str:
    """`median [min-max]` of a list of numbers."""
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def paired_ratios(ours: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """ours / theirs within each round."""
    return [a / b for a, b in zip(ours, theirs)]
