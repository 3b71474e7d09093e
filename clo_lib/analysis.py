"""Analysis: every run's metrics.json into one tidy table, the paper's views as figures, and a report to read first.

    results.csv   one row per run and metric: model, lang, size, method, seed, name, metric, value
    figures/      winrates.png  win rate against SFT per model and language (SFT+DPO and CLO; target and English)
                  by_size_<metric>.png   a metric against data size, per language and method (the paper's sweep)
                  fidelity_retention.png   language fidelity next to English retention, per method
    report.md     what was run, the tables, the figures, what failed

Seeds are averaged; the spread (standard deviation over seeds) is shown where there is more than one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from clo_lib.evaluate import metrics_rows
from clo_lib.io import atomic_write_text

METHOD_ORDER = ["base", "sft_eng", "sft_tgt", "sft", "sft_dpo", "clo"]
# Metrics the report tables lead with, when present.
HEADLINE = ["winrate_vs_sft_tgt", "winrate_vs_sft_en", "accuracy_tgt", "accuracy_en", "fidelity_tgt", "fidelity_en",
            "mc_acc_tgt", "mc_acc_en"]


def collect(grid_dir: str | Path) -> pd.DataFrame:
    """All `*/metrics.json` under the grid folder as one long table, also written to results.csv (atomically)."""
    grid_dir = Path(grid_dir)
    rows: list[dict[str, Any]] = []
    for path in sorted(grid_dir.glob("*/metrics.json")):
        rows.extend(metrics_rows(path))
    columns = ["model", "lang", "size", "method", "seed", "name", "metric", "value"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    atomic_write_text(grid_dir / "results.csv", frame.to_csv(index=False))
    return frame


def summary(frame: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean and spread over seeds: one row per (model, lang, size, method), columns `<metric>` and `<metric>_sd`."""
    metrics = metrics or [m for m in HEADLINE if m in set(frame["metric"])]
    chosen = frame[frame["metric"].isin(metrics)]
    if chosen.empty:
        return pd.DataFrame()
    grouped = chosen.groupby(["model", "lang", "size", "method", "metric"])["value"]
    stats = grouped.agg(["mean", "std", "count"]).reset_index()
    wide = stats.pivot_table(index=["model", "lang", "size", "method"], columns="metric", values="mean")
    spread = stats.pivot_table(index=["model", "lang", "size", "method"], columns="metric", values="std")
    seeds = stats.groupby(["model", "lang", "size", "method"])["count"].max().rename("seeds")
    wide = wide.join(spread.add_suffix("_sd")).join(seeds).reset_index()
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    wide["_order"] = wide["method"].map(lambda m: order.get(m, len(order)))
    return wide.sort_values(["model", "lang", "size", "_order"]).drop(columns="_order")[
        ["model", "lang", "size", "method", "seeds"] + [c for m in metrics for c in (m, f"{m}_sd") if c in wide]]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: works headless, under papermill and in CI
    import matplotlib.pyplot as plt

    return plt


def figure_winrates(frame: pd.DataFrame, out: Path) -> Path | None:
    """Win rate against SFT (SFT = 0.5), per model × language, for SFT+DPO and CLO, target and English prompts."""
    import seaborn as sns

    plt = _plt()
    data = frame[frame["metric"].isin(["winrate_vs_sft_tgt", "winrate_vs_sft_en"]) &
                 frame["method"].isin(["sft_dpo", "clo"])]
    if data.empty:
        return None
    largest = data.groupby(["model", "lang"])["size"].transform("max")
    data = data[data["size"] == largest].copy()  # the main table is at the largest size of each cell
    data["prompts"] = data["metric"].map({"winrate_vs_sft_tgt": "target", "winrate_vs_sft_en": "English"})
    grid = sns.catplot(data=data, x="lang", y="value", hue="method", col="prompts", row="model", kind="bar",
                       errorbar="sd", height=2.8, aspect=1.4, hue_order=[m for m in ("sft_dpo", "clo")
                                                                         if m in set(data["method"])])
    for ax in grid.axes.flat:
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)  # SFT itself
        ax.set_ylim(0, 1)
    grid.set_axis_labels("language", "win rate vs SFT")
    path = out / "winrates.png"
    grid.savefig(path, dpi=110)
    plt.close("all")
    return path


def figure_by_size(frame: pd.DataFrame, metric: str, out: Path) -> Path | None:
    """`metric` against data size (log scale), one panel per language, one line per method; base as a dashed line."""
    import seaborn as sns

    plt = _plt()
    data = frame[(frame["metric"] == metric) & (frame["method"] != "base")]
    if data.empty or data["size"].nunique() < 2:
        return None
    grid = sns.relplot(data=data, x="size", y="value", hue="method", col="lang", row="model", kind="line",
                       marker="o", errorbar="sd", height=2.8, aspect=1.2,
                       hue_order=[m for m in METHOD_ORDER if m in set(data["method"])])
    base = frame[(frame["metric"] == metric) & (frame["method"] == "base")]
    for (model, lang), ax in grid.axes_dict.items():  # keyed (row, col) = (model, language)
        level = base[(base["model"] == model) & (base["lang"] == lang)]["value"]
        if not level.empty:
            ax.axhline(level.mean(), color="grey", linestyle="--", linewidth=1, label="base")
    sizes = sorted(data["size"].unique())
    grid.set(xscale="log")
    for ax in grid.axes.flat:  # label the sizes that were run, not powers of ten
        ax.set_xticks(sizes, [str(int(n)) for n in sizes])
        ax.minorticks_off()
    grid.set_axis_labels("training examples", metric)
    path = out / f"by_size_{metric}.png"
    grid.savefig(path, dpi=110)
    plt.close("all")
    return path


def figure_fidelity_retention(frame: pd.DataFrame, out: Path) -> Path | None:
    """Per method: answers in the target language (fidelity_tgt) beside English kept (fidelity_en, accuracy_en...)."""
    import seaborn as sns

    plt = _plt()
    wanted = [m for m in ("fidelity_tgt", "fidelity_en", "accuracy_tgt", "accuracy_en", "mc_acc_en")
              if m in set(frame["metric"])]
    if not wanted:
        return None
    data = frame[frame["metric"].isin(wanted)].copy()
    largest = data.groupby(["model", "lang"])["size"].transform("max")
    data = data[(data["size"] == largest) | (data["method"] == "base")]
    grid = sns.catplot(data=data, x="method", y="value", hue="metric", col="lang", row="model", kind="bar",
                       errorbar="sd", height=2.8, aspect=1.5, hue_order=wanted,
                       order=[m for m in METHOD_ORDER if m in set(data["method"])])
    grid.set(ylim=(0, 1))
    grid.set_axis_labels("method", "share")
    path = out / "fidelity_retention.png"
    grid.savefig(path, dpi=110)
    plt.close("all")
    return path


def _markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A plain markdown table (no extra dependency); NaN shows as a dash."""
    if frame.empty:
        return "(no rows)"

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if pd.isna(value) else f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _mean(frame: pd.DataFrame, metric: str, **where: Any) -> float:
    rows = frame[frame["metric"] == metric]
    for key, value in where.items():
        rows = rows[rows[key] == value]
    return float(rows["value"].mean()) if not rows.empty else float("nan")


def findings(frame: pd.DataFrame) -> list[str]:
    """Plain sentences on what the grid measured: the base model's bias, then CLO and SFT+DPO against SFT per cell.

    Written from the numbers, whichever way they go; seeds are averaged.
    """
    from clo_lib.languages import get_language

    lines = []
    for (model, lang) in sorted(set(zip(frame["model"], frame["lang"]))):
        name = get_language(lang).name
        fid_tgt = _mean(frame, "fidelity_tgt", model=model, lang=lang, method="base")
        fid_en = _mean(frame, "fidelity_en", model=model, lang=lang, method="base")
        if not pd.isna(fid_tgt):
            lines.append(f"- Base model {model}, {name}: answers {fid_tgt:.0%} of {name} prompts in {name} and "
                         f"{fid_en:.0%} of English prompts in English.")
    for method, label in (("clo", "CLO"), ("sft_dpo", "SFT+DPO")):
        cells = frame[(frame["method"] == method) & (frame["metric"] == "winrate_vs_sft_tgt")]
        if cells.empty:
            continue
        by_cell = cells.groupby(["model", "lang", "size"])["value"].mean()
        wins, ties = int((by_cell > 0.5).sum()), int((by_cell == 0.5).sum())
        english = frame[(frame["method"] == method) & (frame["metric"] == "winrate_vs_sft_en")]
        by_cell_en = english.groupby(["model", "lang", "size"])["value"].mean()
        lines.append(f"- {label} against SFT on target-language prompts: better in {wins}, equal in {ties}, worse in "
                     f"{len(by_cell) - wins - ties} of {len(by_cell)} cells (mean win rate {by_cell.mean():.2f}); "
                     f"on English prompts: mean win rate {by_cell_en.mean():.2f} (0.5 = as good as SFT).")
        for (model, lang, size), value in by_cell.items():
            where = {"model": model, "lang": lang, "size": size}
            parts = [f"win rate {value:.2f} (target) / {by_cell_en.get((model, lang, size), float('nan')):.2f} "
                     "(English)"]
            for metric in ("accuracy_tgt", "fidelity_tgt", "accuracy_en", "mc_acc_tgt", "mc_acc_en"):
                ours, sft = _mean(frame, metric, method=method, **where), _mean(frame, metric, method="sft", **where)
                if not pd.isna(ours) and not pd.isna(sft):
                    parts.append(f"{metric} {ours:.2f} vs SFT {sft:.2f}")
            lines.append(f"  - {model}, {lang}, {size} examples: " + "; ".join(parts))
    return lines


def _with_spread(table: pd.DataFrame) -> pd.DataFrame:
    """The summary with each metric as one "mean ± sd" cell (just the mean for a single seed)."""
    if table.empty:
        return table
    shown = table[["model", "lang", "size", "method", "seeds"]].copy()
    for metric in [m for m in HEADLINE if m in table.columns]:
        spread = table[f"{metric}_sd"] if f"{metric}_sd" in table.columns else [float("nan")] * len(table)
        shown[metric] = [("–" if pd.isna(m) else f"{m:.3f}" if pd.isna(sd) else f"{m:.3f} ± {sd:.3f}")
                         for m, sd in zip(table[metric], spread)]
    return shown


def failures(grid_dir: Path) -> list[dict]:
    found = []
    for path in sorted(grid_dir.glob("**/*.failed.json")):
        try:
            found.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            found.append({"stage": str(path), "error": "unreadable failure marker"})
    return found


def write_report(grid_dir: str | Path, grid_name: str = "", notes: str = "") -> dict[str, Any]:
    """results.csv, the figures and report.md for a grid folder; returns what was written."""
    grid_dir = Path(grid_dir)
    frame = collect(grid_dir)
    figures_dir = grid_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = [figure_winrates(frame, figures_dir), figure_fidelity_retention(frame, figures_dir)]
    for metric in ("winrate_vs_sft_tgt", "accuracy_tgt", "fidelity_tgt", "accuracy_en"):
        if metric in set(frame["metric"]):
            figures.append(figure_by_size(frame, metric, figures_dir))
    figures = [f for f in figures if f is not None]
    table = summary(frame)
    runs = frame.drop_duplicates(["model", "lang", "size", "method", "seed"])
    lines = [f"# Results: {grid_name or grid_dir.name}", "",
             f"{len(runs)} evaluated runs ({', '.join(sorted(set(runs['method'])))}) over "
             f"{frame['lang'].nunique()} language(s) and {frame['model'].nunique()} model(s); "
             f"the long table is `results.csv`.", ""]
    if notes:
        lines += ["## About this grid", "", notes.strip(), ""]
    found = findings(frame)
    if found:
        lines += ["## What it measured", ""] + found + [""]
    lines += ["## Summary (mean ± standard deviation over seeds)", "", _markdown_table(_with_spread(table)), ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{f.stem}](figures/{f.name})" for f in figures] + [""]
    failed = failures(grid_dir)
    if failed:
        lines += ["## Failed stages", ""] + [f"- `{f['stage']}`: {f['error'].strip().splitlines()[-1][:200]}"
                                             for f in failed] + [""]
    atomic_write_text(grid_dir / "report.md", "\n".join(lines))
    return {"results": grid_dir / "results.csv", "report": grid_dir / "report.md", "figures": figures,
            "runs": len(runs), "failed": len(failed), "table": table}
