"""The report's counts of cells where a method beats SFT follow the intervals, and base rows have no data size."""

import pandas as pd
import pytest

from clo_lib.artifacts.runs import write_metrics
from clo_lib.common.stats import wilson
from clo_lib.stages.report import write_report
from clo_lib.stages.results import collect


def run(grid, name, lang, method, size, seed=0, rate=None, n=42, ties=0.0, extra=None):
    metrics = {"fidelity_tgt": 1.0, **(extra or {})}
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


def phrasing(fidelity, accuracy=0.1, n=208):
    return {"fidelity_tgt@new_phrasing": fidelity, "prompts@new_phrasing": n, "accuracy_tgt": accuracy, "prompts": n}


def test_premise_check_from_the_base_model_and_sft(tmp_path):
    from clo_lib.stages.claims import premise_check
    from clo_lib.stages.results import collect

    grid = tmp_path / "grid"
    run(grid, "sw-base", "sw", "base", None, extra=phrasing(0.02))
    run(grid, "sw-sft-32", "sw", "sft", 32, extra=phrasing(0.70))
    run(grid, "sw-sft-64", "sw", "sft", 64, extra=phrasing(0.90))
    run(grid, "ko-base", "ko", "base", None, extra=phrasing(0.0))
    run(grid, "ko-sft-32", "ko", "sft", 32, extra=phrasing(0.96))  # no English bias left to fix
    run(grid, "ko-sft-64", "ko", "sft", 64, extra=phrasing(0.97))
    lines, verdicts = premise_check(collect(grid))
    assert verdicts == {("toy", "sw"): "holds", ("toy", "ko"): "does not hold"}
    assert "SFT at 32 answers at least 10% otherwise" in lines[0]  # the failed check is named
    assert "SFT 70% [" in lines[1] and "at 32, 90% [" in lines[1]


def test_claims_and_the_crpo_check_say_what_the_numbers_say(tmp_path):
    import json

    from clo_lib.stages.claims import claims, crpo_check
    from clo_lib.stages.results import collect

    grid = tmp_path / "grid"
    for size, clo_rate, clo_fid, sft_fid in ((32, 0.70, 0.80, 0.60), (64, 0.52, 0.85, 0.62)):
        run(grid, f"sw-clo-{size}", "sw", "clo", size, rate=clo_rate, n=208, extra=phrasing(clo_fid))
        run(grid, f"sw-sft-{size}", "sw", "sft", size, extra=phrasing(sft_fid))
        rewards = {"tgt/rewards_chosen": 0.2, "tgt/rewards_rejected": -1.8}
        log = {"method": "clo", "stages": [{"log_history": [rewards]}]}
        (grid / f"sw-clo-{size}" / "train_log.json").write_text(json.dumps(log))
    table = {claim.split(" (")[0]: (said, numbers, line) for claim, said, numbers, line in claims(collect(grid))}
    # better at 32, not clearly at 64; one seed per cell, so the verdict says it is indicative only
    assert table["CLO beats SFT in the target language"][0] == "inconclusive (1 seed: indicative only)"
    assert "better in 1, worse in 0, inconclusive in 1 of 2" in table["CLO beats SFT in the target language"][1]
    half = table["CLO with half the data matches SFT with all of it in low-resource languages"]
    assert half[0] == "holds (no significant gap) (1 seed: indicative only)"
    assert "sw 32 vs 64: fidelity 0.80 vs 0.62" in half[1]
    assert table["SFT is sensitive to data size"][0].startswith("inconclusive (no significant change)")
    assert table["CLO beats SFT in the target language"][2] == ("CLO answered target-language prompts clearly better "
                                                                "than SFT in 1 of 2 cells and clearly worse in 0.")
    said, numbers, line = crpo_check([grid / "sw-clo-32", grid / "sw-clo-64", grid / "sw-sft-32"])
    assert said == "holds" and "lowering the English answer makes 90% of the margin" in numbers
    assert line.startswith("90% of CLO's preference for the target answer comes from pushing the English answer")


def test_english_retention_on_mtbench_is_reported_against_the_base_model(tmp_path):
    grid = tmp_path / "grid"

    def mtbench(nll, english):
        return {"mtbench_ref_nll": nll, "fidelity_en@mtbench": english, "prompts@mtbench": 80}

    run(grid, "sw-base", "sw", "base", None, extra=mtbench(0.800, 0.9625))
    run(grid, "sw-sft", "sw", "sft", 32, extra=mtbench(0.850, 0.90))
    run(grid, "sw-clo-s0", "sw", "clo", 32, seed=0, extra=mtbench(0.900, 0.50))
    run(grid, "sw-clo-s1", "sw", "clo", 32, seed=1, extra=mtbench(1.000, 0.70))
    report = (write_report(grid)["report"]).read_text()
    section = report.split("## English retention on MT-bench")[1].split("\n## ")[0]
    # two seeds of 80 questions each, 0.5 and 0.7: the Student t interval over two seeds (1 df) spans [0, 1], far
    # wider than the prompts' Wilson interval
    assert wilson(0.60, 160)["high"] < 0.7
    assert "| toy | sw | – | base | 1 | 0.800 | – | 0.96 [" in section
    assert "| toy | sw | 32 | sft | 1 | 0.850 | +0.050 | 0.90 [" in section
    assert "| toy | sw | 32 | clo | 2 | 0.950 | +0.150 | 0.60 [0.00, 1.00] |" in section
    assert "mtbench_ref_nll" in collect(grid)["metric"].tolist()


def test_a_grid_folder_that_does_not_exist_is_refused_not_reported(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="grid_dir = '.*outptus/toy': no such folder"):
        write_report(tmp_path / "outptus" / "toy")
    assert not (tmp_path / "outptus").exists()


def test_the_report_gives_intervals_a_glossary_and_the_english_against_target_scatter(tmp_path):
    grid = tmp_path / "grid"
    shares = {"accuracy_en": 0.90, "prompts": 100}
    run(grid, "sw-base", "sw", "base", None, extra={**shares, "fidelity_tgt": 0.05})
    run(grid, "sw-sft", "sw", "sft", 32, extra={**shares, "fidelity_tgt": 0.70})
    run(grid, "sw-clo", "sw", "clo", 32, rate=0.58, n=100, extra={**shares, "fidelity_tgt": 0.80})
    written = write_report(grid)
    report = written["report"].read_text()
    fidelity, rate = wilson(0.80, 100), wilson(0.58, 100)
    row = next(line for line in report.splitlines() if line.startswith("| toy | sw | 32 | clo |"))
    assert f"0.58 [{rate['low']:.2f}, {rate['high']:.2f}]" in row  # win rate with its interval
    assert f"0.80 [{fidelity['low']:.2f}, {fidelity['high']:.2f}]" in row  # a share with its Wilson interval
    assert "## Glossary" in report and "- `fidelity_tgt`: share of target-language prompts" in report
    # 0.58 [0.48, 0.67]: a tie, from one seed
    assert "- **CLO beats SFT in the target language: inconclusive (1 seed: indicative only).**" in report
    names = {path.name for path in written["figures"]}
    assert {"winrates.png", "language_vs_english.png"} <= names and "fidelity_retention.png" not in names


def test_the_report_gives_each_corpus_its_reversibility_rate(tmp_path):
    import json

    grid = tmp_path / "grid"
    run(grid, "sw-sft", "sw", "sft", 32)
    corpus = grid / "data" / "sw"
    corpus.mkdir(parents=True)
    joint = {"catalyst": "relation", "indicator": "[{i}]", "inputs": 40, "inputs_split": 37, "records_split": 37,
             "fallback_records": 3, "reversibility": 0.925}
    (corpus / "report.json").write_text(json.dumps({"backend": "hf", "model": "facebook/m2m100_1.2B", "mode": "joint",
                                                    "records": 40, "flagged_records": 2, "joint": joint}))
    report = write_report(grid)["report"].read_text()
    assert "| sw | hf: facebook/m2m100_1.2B | joint | 40 | 2 | 92.5% (37 of 40; catalyst relation" in report


def test_an_ablation_slice_is_its_own_method_in_the_tables_and_out_of_the_claims(tmp_path):
    grid = tmp_path / "grid"
    run(grid, "sw-clo", "sw", "clo", 64, rate=0.20)
    run(grid, "sw-sft", "sw", "sft", 64)
    facts = {"model": "toy", "lang": "sw", "size": 64, "method": "clo", "seed": 0, "name": "sw-clo-nll-en",
             "examples_used": 64, "variant": "nll-en"}
    interval = wilson(0.9, 42)
    write_metrics(grid / "sw-clo-nll-en", facts, {"fidelity_tgt": 0.5, "winrate_vs_sft_tgt": 0.9,
                                                  "winrate_vs_sft_tgt_ci_low": interval["low"],
                                                  "winrate_vs_sft_tgt_ci_high": interval["high"],
                                                  "winrate_vs_sft_tgt_ties": 0.0, "winrate_vs_sft_tgt_n": 42})
    frame = collect(grid)
    assert set(frame["method"]) == {"clo", "sft", "clo+nll-en"}
    assert set(pd.read_csv(grid / "results.csv")["variant"].fillna("")) == {"", "nll-en"}
    report = write_report(grid)["report"].read_text()
    assert "better in 0, worse in 1, inconclusive in 0 of 1 cells" in report  # the plain CLO run only
    assert "| clo+nll-en |" in report
    assert "Made with torch " in report and "transformers " in report and "CPU capability " in report


def test_a_cell_of_several_seeds_has_an_interval_that_covers_their_spread():
    """Student t over the seeds' own values (computed by hand here), joined with the prompts' Wilson interval; one
    seed keeps the Wilson interval and says so; seeds that agree keep the prompts' interval."""
    from clo_lib.common.stats import seed_interval

    pooled = wilson(0.7, 300)
    wide = seed_interval(pooled, [0.6, 0.8, 0.7])
    half = 4.302652729911275 * 0.1 / 3 ** 0.5  # t(0.975, 2 df) * sd / sqrt(3)
    assert wide["low"] == pytest.approx(0.7 - half) and wide["high"] == pytest.approx(0.7 + half)
    assert wide["seeds"] == 3 and wide["n"] == 300
    assert seed_interval(pooled, [0.7]) == {**pooled, "seeds": 1}
    same = seed_interval(pooled, [0.7, 0.7, 0.7])
    assert (same["low"], same["high"]) == (pooled["low"], pooled["high"])


def test_seed_to_seed_variance_can_turn_a_pooled_verdict_inconclusive(tmp_path):
    """Three seeds whose pooled comparisons clearly beat SFT but whose own rates spread widely: the cell is
    inconclusive, and the claim's verdict carries no one-seed caveat."""
    from clo_lib.stages.claims import claims, pooled_win_rates
    from clo_lib.stages.results import collect

    grid = tmp_path / "grid"
    for seed, rate in enumerate((0.95, 0.55, 0.75)):
        run(grid, f"sw-clo-s{seed}", "sw", "clo", 64, seed=seed, rate=rate, n=240)
        run(grid, f"sw-sft-s{seed}", "sw", "sft", 64, seed=seed)
    frame = collect(grid)
    cell = pooled_win_rates(frame, "clo", "tgt")[("toy", "sw", 64)]
    assert wilson(0.75, 720)["low"] > 0.5  # pooled over prompts alone: "better"
    assert cell["low"] < 0.5 < cell["high"] and cell["seeds"] == 3
    said = {claim.split(" (")[0]: verdict for claim, verdict, *_ in claims(frame)}
    assert said["CLO beats SFT in the target language"] == "inconclusive"


def test_tuned_runs_are_reported_beside_the_shared_budget_never_pooled_with_it(tmp_path):
    import json

    from clo_lib.stages.results import collect, in_view

    grid = tmp_path / "grid"
    run(grid, "sw-sft", "sw", "sft", 64)
    run(grid, "sw-clo", "sw", "clo", 64, rate=0.2, n=240)
    run(grid, "sw-sft-best", "sw", "sft", 64)
    run(grid, "sw-clo-best", "sw", "clo", 64, rate=0.8, n=240)
    run(grid, "sw-base", "sw", "base", None)
    for name, lr in (("sw-sft-best", 3e-4), ("sw-clo-best", 6e-4)):
        trials = [{"trial": f"{name}-t{k}", "settings": {"train.learning_rate": v}, "metrics": {}, "score": s}
                  for k, v, s in ((1, 3e-4, 1.5), (2, 6e-4, 1.7))]
        (grid / name / "pick.json").write_text(json.dumps({
            "metric": ["fidelity_tgt", "accuracy_tgt"], "picked": f"{name}-t2", "settings": {"train.learning_rate": lr},
            "score": 1.7, "trials": trials}))
    frame = collect(grid)
    assert sorted(set(in_view(frame, "tuned")["name"])) == ["sw-base", "sw-clo-best", "sw-sft-best"]
    report = write_report(grid)["report"].read_text()
    assert "## Summary: at a shared budget (fixed from SFT alone)" in report
    assert "## Summary: each method at its own best on validation" in report
    assert "| sw-clo-best | learning_rate 0.0006 | 1.70 | 1.50 / 1.70 |" in report
    row = next(line for line in report.splitlines() if line.startswith("| CLO beats SFT in the target language"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1].startswith("does not hold") and cells[3].startswith("holds")  # worse shared, better tuned
    assert "In one line each, each method at its own best on validation:" in report


def test_preference_accuracy_saturating_early_is_warned_in_the_log_and_the_report(tmp_path):
    import json

    from clo_lib.artifacts.runs import preference_saturation

    history = [{"step": step, "tgt/rewards_accuracy": 1.0 if step >= 5 else 0.5,
                "en/rewards_accuracy": 0.995 if step >= 50 else 0.6} for step in range(1, 101)]
    warnings = preference_saturation(history)
    assert len(warnings) == 1 and warnings[0].startswith("preference accuracy on tgt prompts reached 0.99 at step 5 "
                                                         "of 100 (within the first 10%)")
    assert preference_saturation([{"step": 1, "loss": 2.0}]) == []  # SFT: no preference logs, no warning
    assert preference_saturation(history[:4] + [{"step": 10, "tgt/rewards_accuracy": 0.99}]) == []  # step 10 of 10
    grid = tmp_path / "grid"
    late = [{**entry, "tgt/rewards_accuracy": 0.5} for entry in history]  # saturates at step 50 only
    for name, logged in (("sw-clo-s0", history), ("sw-clo-s1", late)):
        run(grid, name, "sw", "clo", 32, seed=int(name[-1]))
        # the report applies the rule to the logged history, whatever sentences the log carries
        stage = {"log_history": logged, "warnings": ["some other warning"]}
        (grid / name / "train_log.json").write_text(json.dumps({"method": "clo", "stages": [stage]}))
    report = write_report(grid)["report"].read_text()
    assert "## A warning from training" in report and "in CLO 1 of 2 runs" in report


def test_the_ablation_section_says_which_change_closes_the_gap_to_sft(tmp_path):
    """Three seeds per cell: SFT answers 80 % of held-out forms in the target language, plain CLO 30 %; dropping
    DPO (λ = 1) lifts CLO to SFT's level, DPO on target prompts only does not. Hand-made numbers, so the sentences
    follow from them alone."""
    grid = tmp_path / "grid"
    values = {("sft", ""): 0.80, ("clo", ""): 0.30, ("clo", "lam100"): 0.78, ("clo", "dpo_tgt"): 0.32,
              ("sft", "full"): 0.30, ("clo", "full"): 0.31}  # all weights: compared with SFT on all weights
    for (method, variant), fidelity in values.items():
        for seed, jitter in enumerate((-0.02, 0.0, 0.02)):
            name = f"sw-{method}{variant}-s{seed}"
            facts = {"model": "toy", "lang": "sw", "size": 32, "method": method, "seed": seed, "name": name,
                     "examples_used": 32, "variant": variant}
            write_metrics(grid / name, facts, phrasing(fidelity + jitter, n=144))
    report = write_report(grid)["report"].read_text()
    section = report.split("## Which part of CLO explains the result")[1].split("\n## ")[0]
    assert "| clo+lam100 | sw | 32 | 0.78 [" in section and "| above |" in section
    assert "- Still clearly below SFT: clo+dpo_tgt (sw) at 32." in section
    assert "| clo+full | sw | 32 | 0.31 [" in section and "| overlaps (sft+full) | overlaps |" in section
    assert ("- Not clearly below SFT (the gap closes or is within the intervals): clo+full (sw) at 32, clo+lam100 "
            "(sw) at 32." in section)
    assert "- Clearly above plain CLO: clo+lam100 (sw) at 32." in section
