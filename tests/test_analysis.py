"""The report's counts of cells where a method beats SFT follow the intervals, and base rows have no data size."""

import pandas as pd

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
    assert table["CLO beats SFT in the target language"][0] == "inconclusive"  # better at 32, not clearly at 64
    assert "better in 1, worse in 0, inconclusive in 1 of 2" in table["CLO beats SFT in the target language"][1]
    half = table["CLO with half the data matches SFT with all of it in low-resource languages"]
    assert half[0] == "holds (no significant gap)" and "sw 32 vs 64: fidelity 0.80 vs 0.62" in half[1]
    assert table["SFT is sensitive to data size"][0] == "inconclusive (no significant change)"
    assert table["CLO beats SFT in the target language"][2] == ("CLO answered target-language prompts clearly better "
                                                                "than SFT in 1 of 2 cells and clearly worse in 0.")
    said, numbers, line = crpo_check(grid)
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
    pooled = wilson(0.60, 160)  # two seeds of 80 questions each
    assert "| toy | sw | – | base | 1 | 0.800 | – | 0.96 [" in section
    assert "| toy | sw | 32 | sft | 1 | 0.850 | +0.050 | 0.90 [" in section
    assert f"| toy | sw | 32 | clo | 2 | 0.950 | +0.150 | 0.60 [{pooled['low']:.2f}, {pooled['high']:.2f}] |" in section
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
    assert "- **CLO beats SFT in the target language: inconclusive.**" in report  # 0.58 [0.48, 0.67]: a tie
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
