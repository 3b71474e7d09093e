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
    columns = ["model", "lang", "size", "method", "seed", "name", "examples_used", "metric", "value"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    for column in ("size", "examples_used"):  # the base model has neither: empty, not 0
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    atomic_write_text(grid_dir / "results.csv", frame.to_csv(index=False))
    return frame


def summary(frame: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean and spread over seeds: one row per (model, lang, size, method), columns `<metric>` and `<metric>_sd`."""
    metrics = metrics or [m for m in HEADLINE if m in set(frame["metric"])]
    chosen = frame[frame["metric"].isin(metrics)]
    if chosen.empty:
        return pd.DataFrame()
    keys = ["model", "lang", "size", "method"]
    stats = chosen.groupby([*keys, "metric"], dropna=False)["value"].agg(["mean", "std", "count"])  # base: no size
    wide = stats["mean"].unstack("metric")
    spread = stats["std"].unstack("metric")
    seeds = stats["count"].groupby(level=keys, dropna=False).max().rename("seeds")
    wide = wide.join(spread.add_suffix("_sd")).join(seeds).reset_index()
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    wide["_order"] = wide["method"].map(lambda m: order.get(m, len(order)))
    return wide.sort_values(["model", "lang", "size", "_order"], na_position="first").drop(columns="_order")[
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
        if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
            return "–"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _mean(frame: pd.DataFrame, metric: str, **where: Any) -> float:
    rows = frame[frame["metric"] == metric]
    for key, value in where.items():
        rows = rows[rows[key].eq(value).fillna(False).astype(bool)]  # a base row's missing size matches nothing
    return float(rows["value"].mean()) if not rows.empty else float("nan")


def pooled_win_rates(frame: pd.DataFrame, method: str, side: str) -> dict[tuple, dict[str, float]]:
    """Per (model, lang, size): the win rate against SFT on `side` prompts, pooled over seeds (each seed's rate
    weighted by its number of comparisons), with its Wilson interval and share of ties."""
    from clo_lib.evaluate import wilson

    metric = f"winrate_vs_sft_{side}"
    runs = frame[(frame["method"] == method) & frame["metric"].isin([metric, f"{metric}_n", f"{metric}_ties"])]
    if runs.empty:
        return {}
    wide = runs.pivot_table(index=["model", "lang", "size", "seed"], columns="metric", values="value").reset_index()
    cells = {}
    for key, group in wide.groupby(["model", "lang", "size"]):
        n = group[f"{metric}_n"].sum() if f"{metric}_n" in group else float("nan")
        if not n or pd.isna(n):
            continue
        mean = (group[metric] * group[f"{metric}_n"]).sum() / n
        ties = (group[f"{metric}_ties"] * group[f"{metric}_n"]).sum() / n if f"{metric}_ties" in group else float("nan")
        cells[key] = {**wilson(mean, int(n)), "ties": ties}
    return cells


def verdict(rate: dict[str, float]) -> str:
    """better / worse than SFT only when the interval excludes 0.5; inconclusive otherwise."""
    return "better" if rate["low"] > 0.5 else "worse" if rate["high"] < 0.5 else "inconclusive"


def _interval(rate: dict[str, float]) -> str:
    ties = f", {rate['ties']:.0%} ties" if not pd.isna(rate.get("ties", float("nan"))) else ""
    return f"{rate['mean']:.2f} [{rate['low']:.2f}, {rate['high']:.2f}]{ties}"


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
            english = f" and {fid_en:.0%} of English prompts in English" if not pd.isna(fid_en) else ""
            lines.append(f"- Base model {model}, {name}: answers {fid_tgt:.0%} of {name} prompts in {name}{english}.")
    for method, label in (("clo", "CLO"), ("sft_dpo", "SFT+DPO")):
        cells = {side: pooled_win_rates(frame, method, side) for side in ("tgt", "en")}
        if not cells["tgt"]:
            continue
        verdicts = [verdict(rate) for rate in cells["tgt"].values()]
        mean = sum(r["mean"] for r in cells["tgt"].values()) / len(cells["tgt"])
        mean_en = (sum(r["mean"] for r in cells["en"].values()) / len(cells["en"])) if cells["en"] else float("nan")
        lines.append(f"- {label} against SFT on target-language prompts: better in {verdicts.count('better')}, worse "
                     f"in {verdicts.count('worse')}, inconclusive in {verdicts.count('inconclusive')} of "
                     f"{len(verdicts)} cells (a cell counts only when its 95 % interval excludes 0.5; mean win rate "
                     f"{mean:.2f})" + (f"; on English prompts: mean win rate {mean_en:.2f}" if cells["en"] else "")
                     + " (0.5 = as good as SFT).")
        for (model, lang, size), rate in cells["tgt"].items():
            where = {"model": model, "lang": lang, "size": size}
            parts = [f"win rate {_interval(rate)} (target)"]
            if (model, lang, size) in cells["en"]:
                parts.append(f"{_interval(cells['en'][(model, lang, size)])} (English)")
            for metric in ("accuracy_tgt", "fidelity_tgt", "accuracy_en", "mc_acc_tgt", "mc_acc_en"):
                ours, sft = _mean(frame, metric, method=method, **where), _mean(frame, metric, method="sft", **where)
                if not pd.isna(ours) and not pd.isna(sft):
                    parts.append(f"{metric} {ours:.2f} vs SFT {sft:.2f}")
            lines.append(f"  - {model}, {lang}, {size} examples: " + "; ".join(parts))
    if any(line.startswith(("- CLO", "- SFT+DPO")) for line in lines):
        lines.append("- Win rates count ties as half; intervals are 95 % Wilson intervals over the prompts of all "
                     "seeds of a cell, so they cover prompt sampling, not seed-to-seed variation (the table's ± sd "
                     "does).")
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
