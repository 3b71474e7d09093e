"""What the runs of a grid produced, as tables: every run's metrics.json as one frame (collect), the mean per
method and cell (summary), a run's answers and answers side by side; with the labels and method names the report
and figures share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from clo_lib.artifacts.runs import metrics_rows
from clo_lib.common import langid
from clo_lib.common.io import atomic_write_text
from clo_lib.common.languages import get_language
from clo_lib.common.stats import seed_interval, wilson
from clo_lib.config.schema import RunConfig
from clo_lib.stages.evaluate import reference_answers, spread
from clo_lib.stages.scores import is_correct

METHOD_ORDER = ["base", "sft_eng", "sft_tgt", "sft", "sft_dpo", "clo"]
# Metrics the report tables lead with, when present.
HEADLINE = ["winrate_vs_sft_tgt", "winrate_vs_sft_en", "accuracy_tgt", "accuracy_en", "fidelity_tgt", "fidelity_en",
            "mc_acc_tgt", "mc_acc_en", "mtbench_ref_nll", "fidelity_en@mtbench"]


# What each metric means, for the report's glossary and the figures' labels.
GLOSSARY = {
    "fidelity_tgt": "share of target-language prompts answered in the target language (lingua; an answer it cannot "
                    "place counts against)",
    "fidelity_en": "share of English prompts answered in English",
    "accuracy_tgt": "share of target-language prompts answered correctly (the reference answer's first line, in "
                    "either language)",
    "accuracy_en": "share of English prompts answered correctly",
    "winrate_vs_sft_tgt": "pairwise judge against the SFT run of the same model, language, size and seed, on "
                          "target-language prompts: 1 win, 0.5 tie, 0 loss, averaged; 0.5 = as good as SFT",
    "winrate_vs_sft_en": "the same on English prompts",
    "mc_acc_tgt": "multiple-choice accuracy (lm-evaluation-harness) on the target-language tasks",
    "mc_acc_en": "multiple-choice accuracy on the English tasks",
    "mtbench_ref_nll": "per-token negative log-likelihood of GPT-4's MT-bench reference answers (lower: fluent "
                       "English is likelier; a rise from the base model is English lost)",
    "fidelity_en@mtbench": "share of the model's answers to MT-bench's English questions that are in English",
    "@new_phrasing / @new_fact / @seen": "the same metric on one group of prompts: known facts asked in a question "
                                         "form no training data had / facts held out of all training data / the "
                                         "run's own first training items (a sanity check)",
}
LABELS = {"fidelity_tgt": "target prompts answered in the target language",
          "fidelity_tgt@new_phrasing": "target prompts (held-out form) answered in the target language",
          "fidelity_en": "English prompts answered in English", "accuracy_tgt": "target prompts answered correctly",
          "accuracy_en": "English prompts answered correctly", "winrate_vs_sft_tgt": "win rate vs SFT, target prompts",
          "winrate_vs_sft_en": "win rate vs SFT, English prompts"}
METHOD_NAMES = {"base": "base model", "sft": "SFT", "sft_eng": "SFT (English only)", "sft_tgt": "SFT (target only)",
                "sft_dpo": "SFT+DPO", "clo": "CLO"}


def collect(grid_dir: str | Path, keep: set[str] | None = None) -> pd.DataFrame:
    """All `*/metrics.json` under the grid folder (only the run folders named in `keep`, when given) as one long
    table, also written to results.csv (atomically). Column `view`: "tuned" for a run a grid's search picked on
    validation (pick.json beside it, clo_lib.grid.search), "shared" for the rest (the shared budget, the base)."""
    grid_dir = Path(grid_dir)
    rows: list[dict[str, Any]] = []
    for path in sorted(grid_dir.glob("*/metrics.json")):
        if keep is None or path.parent.name in keep:
            view = "tuned" if (path.parent / "pick.json").is_file() else "shared"
            rows.extend({**row, "view": view, "name": path.parent.name} for row in metrics_rows(path))
    for row in rows:  # an ablation slice's runs are a method of their own in every table: never pooled, never in
        if row.get("variant"):  # the paper's claims (which compare the plain methods)
            row["method"] = f"{row['method']}+{row['variant']}"
    columns = ["model", "lang", "size", "method", "seed", "name", "examples_used", "variant", "view", "metric",
               "value"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["variant"] = frame["variant"].astype(object).fillna("")  # an all-empty column reads as float64
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    for column in ("size", "examples_used"):  # the base model has neither: empty, not 0
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    atomic_write_text(grid_dir / "results.csv", frame.to_csv(index=False))
    return frame


def in_view(frame: pd.DataFrame, view: str) -> pd.DataFrame:
    """The runs of one view ("shared" or "tuned") and the base model's (the same untrained model in both)."""
    return frame[(frame["view"] == view) | (frame["method"] == "base")]


def summary(frame: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean and spread over seeds: one row per (model, lang, size, method), columns `<metric>` and `<metric>_sd`."""
    metrics = metrics or [m for m in HEADLINE if m in set(frame["metric"])]
    chosen = frame[frame["metric"].isin(metrics)]
    if chosen.empty:
        return pd.DataFrame()
    keys = ["model", "lang", "size", "method"]
    stats = chosen.groupby([*keys, "metric"], dropna=False)["value"].agg(["mean", "std", "count"])  # base: no size
    wide = stats["mean"].unstack("metric")
    sd = stats["std"].unstack("metric")
    seeds = stats["count"].groupby(level=keys, dropna=False).max().rename("seeds")
    wide = wide.join(sd.add_suffix("_sd")).join(seeds).reset_index()
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    wide["_order"] = wide["method"].map(lambda m: order.get(m, len(order)))
    return wide.sort_values(["model", "lang", "size", "_order"], na_position="first").drop(columns="_order")[
        ["model", "lang", "size", "method", "seeds"] + [c for m in metrics for c in (m, f"{m}_sd") if c in wide]]


def run_answers(run_dir: str | Path, cfg: RunConfig) -> list[dict] | None:
    """A run folder's cached answers made with `cfg`'s decoding settings, or None when it has none yet."""
    if not (Path(run_dir) / "generations.jsonl").is_file():
        return None
    return reference_answers(run_dir, cfg)


def side_by_side(prompts: Sequence[dict], answers: dict[str, Sequence[dict] | None], cfg: RunConfig,
                 n: int = 4) -> pd.DataFrame:
    """`n` prompts spread over the file, each asked in the target language and in English: the prompt, the expected
    answer, and for every labelled set of answers (base, SFT, this run, ...) the answer, the language lingua
    detects in it ("?" when unsure) and whether it is right (✓ / ✗; blank where the prompt has no reference).

    A label whose answers are None (that run was not evaluated) is left out, and said so in the table's caption.
    """
    codes = ["en", cfg.language]
    chosen = spread(list(prompts), n)
    keyed = {label: {(row["id"], row["side"]): row["answer"] for row in rows}
             for label, rows in answers.items() if rows is not None}
    table = []
    for prompt in chosen:
        for side in ("tgt", "en"):
            expected = prompt.get(f"answer_{side}")
            row = {"prompt": prompt[f"prompt_{side}"], "expected": expected or ""}
            for label, by_key in keyed.items():
                answer = by_key.get((prompt["id"], side))
                if answer is None:
                    continue
                detected = langid.detect(answer, codes, cfg.eval.lid_min_confidence, cfg.eval.lid_min_letters)[0]
                right = "" if expected is None else ("✓" if is_correct(answer, prompt) else "✗")
                row[label] = answer
                row[f"{label} lang"] = detected or "?"
                row[f"{label} ok"] = right
            table.append(row)
    frame = pd.DataFrame(table)
    missing = [label for label, rows in answers.items() if rows is None]
    frame.attrs["caption"] = (f"{get_language(cfg.language).name} and English prompts; lang: lingua's pick between en "
                              f"and {cfg.language}; ok: the expected answer in either language"
                              + (f"; not evaluated yet: {', '.join(missing)}" if missing else ""))
    return frame


def cells_of(frame: pd.DataFrame, metric: str, method: str) -> dict[tuple, tuple[float, int, tuple]]:
    """(model, lang, size) -> (the metric's mean over seeds, prompts behind it over all seeds, each seed's value),
    for one method; share_interval(*cell) is its seed-aware interval."""
    group = metric.split("@")[1] if "@" in metric else None
    count_metric = f"prompts@{group}" if group else "prompts"
    rows = frame[(frame["method"] == method) & frame["metric"].isin([metric, count_metric])]
    if rows.empty or metric not in set(rows["metric"]):
        return {}
    wide = rows.pivot_table(index=["model", "lang", "size", "seed"], columns="metric", values="value",
                            dropna=False).reset_index()
    cells = {}
    for (model, lang, size), part in wide.groupby(["model", "lang", "size"], dropna=False):
        n = int(part[count_metric].sum()) if count_metric in part else 0
        cells[(model, lang, None if pd.isna(size) else int(size))] = (float(part[metric].mean()), n,
                                                                       tuple(part[metric].dropna()))
    return cells


def share_interval(mean: float, n: int, seed_means: Sequence[float] = ()) -> dict[str, float]:
    """The 95 % interval of a share observed over `n` prompts in all, widened by the spread of its seeds' values
    where there are several (clo_lib.common.stats.seed_interval)."""
    if not n:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": 0, "seeds": len(seed_means)}
    return seed_interval(wilson(mean, n), seed_means)


def language_metric(frame: pd.DataFrame) -> str:
    """Target-language fidelity on unseen forms where the prompts name that group (the toy world), else overall."""
    return "fidelity_tgt@new_phrasing" if "fidelity_tgt@new_phrasing" in set(frame["metric"]) else "fidelity_tgt"
