"""The report's counts of cells where a method beats SFT follow the intervals, and base rows have no data size."""

import pandas as pd

from clo_lib.analysis import collect, write_report
from clo_lib.evaluate import wilson, write_metrics


def run(grid, name, lang, method, size, seed=0, rate=None, n=42, ties=0.0):
    metrics = {"fidelity_tgt": 1.0}
    if rate is not None:
        interval = wilson(rate, n)
        metrics.update({"winrate_vs_sft_tgt": rate, "winrate_vs_sft_tgt_ci_low": interval["low"],
                        "winrate_vs_sft_tgt_ci_high": interval["high"], "winrate_vs_sft_tgt_ties": ties,
                        "winrate_vs_sft_tgt_n": n})
    facts = {"model": "toy", "lang": lang, "size": size, "method": method, "seed": seed, "name": name,
             "examples_used": size}
    write_metrics(grid / name, facts, metrics)


def test_better_and_worse_need_an_interval_that_excludes_one_half(tmp_path):
    grid = tmp_path / "grid"
    run(grid, "sw-clo", "sw", "clo", 64, rate=0.52, ties=0.3)  # above 0.5, but within noise: once "better"
    run(grid, "ko-clo", "ko", "clo", 64, rate=0.80)
    run(grid, "de-clo", "de", "clo", 64, rate=0.20)
    run(grid, "id-clo-s0", "id", "clo", 64, seed=0, rate=0.55)  # two seeds, pooled: 84 comparisons, still
    run(grid, "id-clo-s1", "id", "clo", 64, seed=1, rate=0.55)  # inconclusive at 0.55
    for lang in ("sw", "ko", "de", "id"):
        run(grid, f"{lang}-sft", lang, "sft", 64)
        run(grid, f"{lang}-base", lang, "base", None)
    report = (write_report(grid)["report"]).read_text()
    assert ("CLO against SFT on target-language prompts: better in 1, worse in 1, inconclusive in 2 of 4 cells "
            "(a cell counts only when its 95 % interval excludes 0.5") in report
    pooled = wilson(0.55, 84)
    assert f"toy, id, 64 examples: win rate 0.55 [{pooled['low']:.2f}, {pooled['high']:.2f}], 0% ties (target)" \
        in report
    assert "toy, sw, 64 examples: win rate 0.52 [" in report and ", 30% ties (target)" in report


def test_base_rows_show_no_size(tmp_path):
    grid = tmp_path / "grid"
    run(grid, "sw-base", "sw", "base", None)
    run(grid, "sw-sft", "sw", "sft", 64)
    frame = collect(grid)
    assert pd.isna(frame[frame["method"] == "base"]["size"]).all()
    assert "toy,sw,,base,0" in (grid / "results.csv").read_text()  # empty, not 0
    report = write_report(grid)["report"].read_text()
    assert "| toy | sw | – | base | 1 |" in report and "| toy | sw | 64 | sft | 1 |" in report
