"""Analysis: every run's metrics.json into one tidy table, the paper's views as figures, and a report to read first.

    results.csv   one row per run and metric: model, lang, size, method, seed, name, metric, value
    figures/      winrates.png  win rate against SFT per model and language (SFT+DPO and CLO; target and English),
                                with 95 % intervals
                  by_size_<metric>.png   a metric against data size, per language and method (the paper's sweep)
                  language_vs_english.png   target-language answers against English accuracy, one point per run
                  transfer_curves.png   held-out loss of continued pretraining per vocabulary-transfer init
    report.md     the premise, the paper's claims (a line each), the tables with intervals, example answers, the
                  figures, a glossary, what failed

Seeds are averaged; the spread (standard deviation over seeds) is shown where there is more than one. Intervals are
95 % Wilson intervals over the prompts of all seeds of a cell.
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
    table, also written to results.csv (atomically)."""
    grid_dir = Path(grid_dir)
    rows: list[dict[str, Any]] = []
    for path in sorted(grid_dir.glob("*/metrics.json")):
        if keep is None or path.parent.name in keep:
            rows.extend(metrics_rows(path))
    for row in rows:  # an ablation slice's runs are a method of their own in every table: never pooled, never in
        if row.get("variant"):  # the paper's claims (which compare the plain methods)
            row["method"] = f"{row['method']}+{row['variant']}"
    columns = ["model", "lang", "size", "method", "seed", "name", "examples_used", "variant", "metric", "value"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["variant"] = frame["variant"].fillna("")
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
    """Win rate against SFT (SFT = 0.5) with its 95 % interval, per model × language at the largest size, for
    SFT+DPO and CLO, on target and English prompts."""
    plt = _plt()
    methods = [m for m in ("sft_dpo", "clo") if any(pooled_win_rates(frame, m, "tgt").values())]
    rates = {(m, side): pooled_win_rates(frame, m, side) for m in methods for side in ("tgt", "en")}
    cells = {key[:2] for table in rates.values() for key in table}
    if not cells:
        return None
    models = sorted({model for model, _ in cells})
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.2 * len(models)), squeeze=False, sharey=True)
    for row, model in enumerate(models):
        langs = sorted({lang for m, lang in cells if m == model})
        for col, (side, title) in enumerate((("tgt", "target-language prompts"), ("en", "English prompts"))):
            ax = axes[row][col]
            for offset, method in zip((-0.12, 0.12), methods):
                points = []
                for x, lang in enumerate(langs):
                    found = {k: v for k, v in rates[(method, side)].items() if k[:2] == (model, lang)}
                    if found:
                        rate = found[max(found, key=lambda k: k[2])]  # the largest size of the cell
                        points.append((x + offset, rate))
                if points:
                    ax.errorbar([x for x, _ in points], [r["mean"] for _, r in points],
                                yerr=_error_bar([r for _, r in points]), fmt="o", capsize=4,
                                label=METHOD_NAMES[method])
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
            ax.set_xticks(range(len(langs)), langs)
            ax.set_ylim(0, 1)
            ax.set_title(f"{model}: {title}")
            ax.set_xlabel("language")
            ax.set_ylabel("win rate vs SFT (0.5 = as good)" if col == 0 else "")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[0][1].legend(handles, labels, loc="lower right")
    fig.suptitle("Win rate against SFT at the largest size (95 % intervals; ties count half)")
    fig.tight_layout()
    path = out / "winrates.png"
    fig.savefig(path, dpi=110)
    plt.close("all")
    return path


def _error_bar(rates: list[dict]) -> list[list[float]]:
    """matplotlib's [below, above] distances from intervals (at 0 or 1 a Wilson bound can differ from the mean by a
    rounding error's worth in the wrong direction)."""
    return [[max(0.0, r["mean"] - r["low"]) for r in rates], [max(0.0, r["high"] - r["mean"]) for r in rates]]


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
    grid.set_axis_labels("training examples", LABELS.get(metric, metric))
    grid.set_titles("{row_name} · {col_name}")
    grid.figure.suptitle(f"{LABELS.get(metric, metric)} against data size (mean over seeds, band ± sd; dashed: "
                         "base model)", y=1.04)
    path = out / f"by_size_{metric}.png"
    grid.savefig(path, dpi=110)
    plt.close("all")
    return path


def figure_language_vs_english(frame: pd.DataFrame, out: Path) -> Path | None:
    """One point per run kind (model, language, size, method): target-language answers (the premise's metric) on x,
    English accuracy on y, both with 95 % intervals. Up and to the right is the paper's goal: the target language
    learnt, English kept."""
    plt = _plt()
    x_metric = _language_metric(frame)
    xs = {m: _cells(frame, x_metric, m) for m in METHOD_ORDER}
    ys = {m: _cells(frame, "accuracy_en", m) for m in METHOD_ORDER}
    points = [(m, key, _share(*xs[m][key]), _share(*ys[m][key])) for m in METHOD_ORDER for key in xs[m]
              if key in ys[m]]
    if not points:
        return None
    models = sorted({key[0] for _, key, _, _ in points})
    langs = sorted({key[1] for _, key, _, _ in points})
    markers = dict(zip(langs, "osD^vP*X"))
    colours = dict(zip(METHOD_ORDER, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    columns = min(len(models), 3)  # a grid of many models (the transfer study's seven) wraps into rows
    rows = -(-len(models) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(8 * columns, 5.5 * rows), squeeze=False)
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, models):
        for method, (m, lang, size), x, y in points:
            if m != model:
                continue
            ax.errorbar(x["mean"], y["mean"], xerr=_error_bar([x]), yerr=_error_bar([y]), fmt=markers[lang],
                        capsize=3, color=colours[method], alpha=0.8)
            ax.annotate(f"{lang} {size}" if size else lang, (x["mean"], y["mean"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(LABELS.get(x_metric, x_metric))
        ax.set_ylabel(LABELS["accuracy_en"])
        ax.set_title(f"{model}: the target language learnt (→) and English kept (↑)")
        handles = [plt.Line2D([], [], color=colours[m], marker="o", linestyle="", label=METHOD_NAMES.get(m, m))
                   for m in METHOD_ORDER if any(p[0] == m for p in points)]
        handles += [plt.Line2D([], [], color="grey", marker=markers[lang], linestyle="", label=lang) for lang in langs]
        ax.legend(handles=handles, fontsize=8, loc="lower left")
    fig.suptitle("One point per run kind (mean over seeds), 95 % intervals; labels: language, examples")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.04 / rows))  # room for the title above the panels
    path = out / "language_vs_english.png"
    fig.savefig(path, dpi=110)
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
    wide = runs.pivot_table(index=["model", "lang", "size", "seed"], columns="metric", values="value",
                            dropna=False).reset_index()
    cells = {}
    for (model, lang, size), group in wide.groupby(["model", "lang", "size"], dropna=False):  # base: no size
        key = (model, lang, None if pd.isna(size) else int(size))
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


# ---------------------------------------------------------------------------------------------------------------
# The paper's premise and claims, each stated as holds / does not hold / inconclusive with the numbers behind it

PREMISE_SHARE = 0.10  # "a clear share": SFT answers at least this share of unseen-form target prompts otherwise


def _cells(frame: pd.DataFrame, metric: str, method: str) -> dict[tuple, tuple[float, int]]:
    """(model, lang, size) -> (the metric's mean over seeds, prompts behind it over all seeds), for one method."""
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
        cells[(model, lang, None if pd.isna(size) else int(size))] = (float(part[metric].mean()), n)
    return cells


def _share(mean: float, n: int) -> dict[str, float]:
    from clo_lib.evaluate import wilson

    return wilson(mean, n) if n else {"mean": mean, "low": float("nan"), "high": float("nan"), "n": 0}


def _below(a: dict, b: dict) -> bool:
    """a clearly below b: their 95 % intervals do not overlap."""
    return a["high"] < b["low"]


def _language_metric(frame: pd.DataFrame) -> str:
    """Target-language fidelity on unseen forms where the prompts name that group (the toy world), else overall."""
    return "fidelity_tgt@new_phrasing" if "fidelity_tgt@new_phrasing" in set(frame["metric"]) else "fidelity_tgt"


def premise_check(frame: pd.DataFrame) -> tuple[list[str], dict[tuple, str]]:
    """The paper's premise, from the base model and SFT alone: the base model answers most target-language prompts
    in English, and SFT with little data still answers a clear share (PREMISE_SHARE) of them otherwise, less so as
    its data grows. Lines for the report and a verdict per (model, language)."""
    from clo_lib.languages import get_language

    metric = _language_metric(frame)
    base, sft = _cells(frame, metric, "base"), _cells(frame, metric, "sft")
    lines, verdicts = [], {}
    for model, lang in sorted({(m, lang) for m, lang, _ in sft}):
        name = get_language(lang).name
        by_size = {size: _share(*value) for (m, la, size), value in sft.items() if (m, la) == (model, lang)}
        sizes = sorted(by_size)
        start = next((_share(*v) for (m, la, _), v in base.items() if (m, la) == (model, lang)), None)
        parts = []
        if start is not None:
            parts.append(f"the base model answers {start['mean']:.0%} of them in {name}")
        parts.append("SFT " + ", ".join(f"{by_size[n]['mean']:.0%} [{by_size[n]['low']:.0%}, {by_size[n]['high']:.0%}] "
                                        f"at {n}" for n in sizes) + " examples")
        smallest, largest = by_size[sizes[0]], by_size[sizes[-1]]
        checks = {"base answers most in English": start is not None and start["mean"] < 0.5,
                  f"SFT at {sizes[0]} answers at least {PREMISE_SHARE:.0%} otherwise": 1 - smallest["mean"]
                  >= PREMISE_SHARE}
        if len(sizes) > 1:
            checks[f"less so at {sizes[-1]}"] = largest["mean"] > smallest["mean"]
        failed = [what for what, ok in checks.items() if not ok]
        verdict = "holds" if not failed else "does not hold"
        if verdict == "holds" and len(sizes) > 1 and not _below(smallest, largest):
            verdict = "holds, weakly (the change with size is within the intervals)"
        verdicts[(model, lang)] = verdict
        lines.append(f"- {model}, {name} ({metric}): {'; '.join(parts)}: **{verdict}**"
                     + (f" (not: {'; '.join(failed)})" if failed else "") + ".")
    return lines, verdicts


def training_sanity(frame: pd.DataFrame) -> list[str]:
    """Accuracy on each run's own training items (group `seen`, in the target language), per method: a sanity
    check that the budget trains what it trains on."""
    rows = frame[frame["metric"] == "accuracy_tgt@seen"]
    if rows.empty:
        return []
    means = rows.groupby("method")["value"].agg(["mean", "min", "max"])
    parts = [f"{method} {m['mean']:.2f} ({m['min']:.2f}-{m['max']:.2f})" for method, m in means.iterrows()]
    return [f"- Training sanity: each run's accuracy on its own first training items, asked in the target language "
            f"(mean, range over runs): {'; '.join(parts)}. Low values mean the budget leaves runs under-trained."]


def _pairs_of_sizes(sizes: list[int]) -> list[tuple[int, int]]:
    return [(n, 2 * n) for n in sizes if 2 * n in sizes]


def claims(frame: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """(claim, verdict, the numbers, the conclusion in one line) for each of the paper's claims the grid can test."""
    from clo_lib.languages import get_language

    rows = []
    target = pooled_win_rates(frame, "clo", "tgt")
    if target:
        counts = {v: [verdict(rate) for rate in target.values()].count(v) for v in ("better", "worse", "inconclusive")}
        said = "holds" if counts["better"] == len(target) else "does not hold" if counts["worse"] else "inconclusive"
        rows.append(("CLO beats SFT in the target language (paper: in all 30 cells)", said,
                     f"win rate vs SFT on target prompts: better in {counts['better']}, worse in {counts['worse']}, "
                     f"inconclusive in {counts['inconclusive']} of {len(target)} cells; mean "
                     f"{sum(r['mean'] for r in target.values()) / len(target):.2f}",
                     f"CLO answered target-language prompts clearly better than SFT in {counts['better']} of "
                     f"{len(target)} cells and clearly worse in {counts['worse']}."))
    english = pooled_win_rates(frame, "clo", "en")
    if english:
        worse = [cell for cell, rate in english.items() if verdict(rate) == "worse"]
        acc = {m: _cells(frame, "accuracy_en", m) for m in ("clo", "sft")}
        shared = [c for c in acc["clo"] if c in acc["sft"]]
        detail = (f"; English accuracy {sum(acc['clo'][c][0] for c in shared) / len(shared):.2f} (CLO) vs "
                  f"{sum(acc['sft'][c][0] for c in shared) / len(shared):.2f} (SFT)") if shared else ""
        nll = {m: _cells(frame, "mtbench_ref_nll", m) for m in ("clo", "sft")}
        both = [c for c in nll["clo"] if c in nll["sft"]]
        if both:
            detail += (f"; MT-bench reference NLL {sum(nll['clo'][c][0] for c in both) / len(both):.3f} (CLO) vs "
                       f"{sum(nll['sft'][c][0] for c in both) / len(both):.3f} (SFT)")
        rows.append(("CLO keeps English (paper: English win rates 50-65 %)", "does not hold" if worse else "holds",
                     f"win rate vs SFT on English prompts worse in {len(worse)} of {len(english)} cells, mean "
                     f"{sum(r['mean'] for r in english.values()) / len(english):.2f}{detail}",
                     f"On English prompts CLO was clearly worse than SFT in {len(worse)} of {len(english)} cells."))
    metric = _language_metric(frame)
    for claim, method_small, method_large in (
            ("CLO with half the data matches SFT with all of it in low-resource languages", "clo", "sft"),
            ("SFT is sensitive to data size", "sft", "sft")):
        small, large = _cells(frame, metric, method_small), _cells(frame, metric, method_large)
        acc_small, acc_large = _cells(frame, "accuracy_tgt", method_small), _cells(frame, "accuracy_tgt", method_large)
        found = []
        for model, lang in sorted({(m, la) for m, la, _ in small}):
            if claim.startswith("CLO") and get_language(lang).resource not in ("low", None):
                continue  # the claim is about low-resource languages
            sizes = sorted(n for m, la, n in small if (m, la) == (model, lang) and n is not None)
            pairs = _pairs_of_sizes(sizes) if claim.startswith("CLO") else ([(sizes[0], sizes[-1])] if len(sizes) > 1
                                                                             else [])
            for n, big in pairs:
                a, b = (model, lang, n), (model, lang, big)
                if b not in large:
                    continue
                shares = {"fidelity": (_share(*small[a]), _share(*large[b]))}
                if a in acc_small and b in acc_large:
                    shares["accuracy"] = (_share(*acc_small[a]), _share(*acc_large[b]))
                found.append((lang, n, big, shares))
        if not found:
            continue
        text = "; ".join(f"{lang} {n} vs {big}: " + ", ".join(f"{k} {x['mean']:.2f} vs {y['mean']:.2f}"
                                                              for k, (x, y) in shares.items())
                         for lang, n, big, shares in found)
        if claim.startswith("CLO"):
            below = any(_below(x, y) for *_, shares in found for x, y in shares.values())
            said = "does not hold" if below else "holds (no significant gap)"
            text = f"CLO at n vs SFT at 2n, {metric} and accuracy_tgt: " + text
            line = ("CLO with n examples fell clearly below SFT with 2n in at least one low-resource cell."
                    if below else "CLO with n examples was never clearly below SFT with 2n (intervals overlap).")
        else:
            moved = any(_below(x, y) or _below(y, x) for *_, shares in found for x, y in shares.values())
            said = "holds" if moved else "inconclusive (no significant change)"
            text = f"SFT at the smallest vs the largest size, {metric} and accuracy_tgt: " + text
            line = ("SFT's target-language fidelity or accuracy changed clearly between the smallest and largest "
                    "size." if moved else "SFT did not change clearly with data size here.")
        rows.append((claim, said, text, line))
    return rows


def english_retention(frame: pd.DataFrame) -> list[str]:
    """MT-bench (clo_lib.mtbench) per run kind: reference-answer NLL and its change from the base model, and the
    share of answers in English with its 95 % interval; empty when the grid did not measure it."""
    if "mtbench_ref_nll" not in set(frame["metric"]):
        return []
    lines = ["| model | lang | size | method | seeds | MT-bench reference NLL | change from base | answers in English "
             "[95 % interval] |", "|---|---|---|---|---|---|---|---|"]
    table = summary(frame, ["mtbench_ref_nll"])
    shares = {m: _cells(frame, "fidelity_en@mtbench", m) for m in set(table["method"])}
    for row in table.itertuples(index=False):
        base = _mean(frame, "mtbench_ref_nll", model=row.model, lang=row.lang, method="base")
        size = None if pd.isna(row.size) else int(row.size)
        cell = shares[row.method].get((row.model, row.lang, size))
        share = _share(*cell) if cell else None
        english = f"{share['mean']:.2f} [{share['low']:.2f}, {share['high']:.2f}]" if share else "–"
        change = "–" if row.method == "base" or pd.isna(base) else f"{row.mtbench_ref_nll - base:+.3f}"
        lines.append(f"| {row.model} | {row.lang} | {'–' if size is None else size} | {row.method} | {row.seeds} | "
                     f"{row.mtbench_ref_nll:.3f} | {change} | {english} |")
    return ["## English retention on MT-bench", "",
            "Per-token NLL of GPT-4's reference answers to MT-bench's first-turn questions (30 answers; lower = "
            "fluent English answers are likelier to the model; a rise from the base model is English lost), and the "
            "share of the model's own answers to the 80 first-turn questions that are in English.", ""] + lines + [""]


def crpo_check(grid_dir: Path) -> tuple[str, str, str] | None:
    """The CRPO critique (CLO mostly suppresses the English answer rather than raising the target one), from the
    rewards the CLO runs logged on target-language prompts at the end of training: the share of the reward margin
    that comes from lowering the rejected (English) answer."""
    shares, chosen, rejected = [], [], []
    for log_file in sorted(Path(grid_dir).glob("*/train_log.json")):
        log = json.loads(log_file.read_text(encoding="utf-8"))
        if log.get("method") != "clo":
            continue
        entries = [e for e in log["stages"][-1]["log_history"] if "tgt/rewards_chosen" in e][-3:]
        if not entries:
            continue
        c = sum(e["tgt/rewards_chosen"] for e in entries) / len(entries)
        r = sum(e["tgt/rewards_rejected"] for e in entries) / len(entries)
        chosen.append(c)
        rejected.append(r)
        if c - r > 0:
            shares.append(max(0.0, -r) / (c - r))
    if not chosen:
        return None
    mean_share = sum(shares) / len(shares) if shares else float("nan")
    said = "holds" if mean_share > 0.5 else "does not hold"
    mean_chosen, mean_rejected = sum(chosen) / len(chosen), sum(rejected) / len(rejected)
    line = (f"{mean_share:.0%} of CLO's preference for the target answer comes from pushing the English answer down"
            + (", most of it." if said == "holds" else "; the rest from raising the target answer."))
    return said, (f"at the end of training, on target prompts, the reward of the chosen (target) answer is "
                  f"{mean_chosen:+.2f} and of the rejected (English) answer {mean_rejected:+.2f} on average over "
                  f"{len(chosen)} CLO runs; lowering the English answer makes {mean_share:.0%} of the margin"), line


def _with_intervals(frame: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The summary with each metric as one cell: mean, its 95 % interval where the metric is a share (win rates
    pooled as pooled_win_rates does, fidelity and accuracy from their prompt counts; not MT-bench NLL or
    multiple-choice accuracy, whose item counts are not recorded), and ± the standard deviation over seeds where
    there are several."""
    if table.empty:
        return table
    intervals: dict[tuple, dict] = {}  # (metric, method) -> {(model, lang, size): interval}, each computed once

    def interval(metric: str, method: str, key: tuple) -> dict | None:
        if (metric, method) not in intervals:
            if metric.startswith("winrate_vs_sft_"):
                intervals[metric, method] = pooled_win_rates(frame, method, metric.rsplit("_", 1)[1])
            elif metric.startswith(("fidelity_", "accuracy_")):
                intervals[metric, method] = {cell: _share(*value) for cell, value in
                                             _cells(frame, metric, method).items() if value[1]}
            else:
                intervals[metric, method] = {}
        return intervals[metric, method].get(key)

    shown = table[["model", "lang", "size", "method", "seeds"]].copy()
    for metric in [m for m in HEADLINE if m in table.columns]:
        spread = table[f"{metric}_sd"] if f"{metric}_sd" in table.columns else [float("nan")] * len(table)
        cells = []
        for row, mean, sd in zip(table.itertuples(index=False), table[metric], spread):
            if pd.isna(mean):
                cells.append("–")
                continue
            rate = interval(metric, row.method, (row.model, row.lang, None if pd.isna(row.size) else int(row.size)))
            text = f"{mean:.2f}" + (f" [{rate['low']:.2f}, {rate['high']:.2f}]" if rate else "")
            cells.append(text + ("" if pd.isna(sd) else f" ± {sd:.2f}"))
        shown[metric] = cells
    return shown


def example_answers(grid_dir: Path, frame: pd.DataFrame, per_language: int = 2) -> list[str]:
    """A few prompts per language at the largest size, asked in both languages, with the base model's, SFT's and
    CLO's answers (language detected, right or wrong) and the expected answer: what the numbers are made of."""
    from clo_lib import views
    from clo_lib.config import load_config
    from clo_lib.evaluate import load_prompts

    lines = []
    for (model, lang), part in frame.groupby(["model", "lang"]):
        sized = part[part["method"] == "clo"]["size"].dropna()
        if sized.empty:
            continue
        size = int(sized.max())
        names = {}
        for method in ("base", "sft", "clo"):
            rows = part[(part["method"] == method) & ((part["size"] == size) if method != "base" else True)]
            if not rows.empty:
                names[METHOD_NAMES[method]] = sorted(set(rows["name"]))[0]
        clo_dir = grid_dir / names["CLO"]
        config_file = next((f for f in (clo_dir / "config.yaml", clo_dir / "run.yaml") if f.is_file()), None)
        try:
            cfg = load_config(config_file)
            prompts = load_prompts(cfg)
        except (TypeError, OSError, ValueError):  # a grid copied without its prompt files: no examples, no error
            continue
        answers = {label: views.run_answers(grid_dir / name, cfg) for label, name in names.items()}
        table = views.side_by_side(prompts, answers, cfg, per_language)
        labels = [label for label in names if label in table.columns]
        lines += [f"**{model}, {lang}, {size} examples** ({table.attrs['caption']})", "",
                  "| prompt | expected | " + " | ".join(labels) + " |", "|---" * (2 + len(labels)) + "|"]
        for row in table.to_dict("records"):
            cells = [_escaped(row["prompt"]), _escaped(row["expected"])]
            for label in labels:
                if not isinstance(row.get(label), str):
                    cells.append("–")
                    continue
                mark = f", {row[label + ' ok']}" if row[label + " ok"] else ""
                cells.append(f"{_escaped(row[label])} ({row[label + ' lang']}{mark})")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _escaped(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:120]


def translation_summary(grid_dir: Path) -> list[str]:
    """One row per corpus the grid translated (data/<lang>/report.json): mode, records, flagged, and for joint
    translation the reversibility rate (share of records whose joint output split back cleanly)."""
    rows = []
    for path in sorted(Path(grid_dir).glob("data/*/report.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        joint = report.get("joint") or {}
        reversible = (f"{joint['reversibility']:.1%} ({joint['records_split']} of {report['records']}; "
                      f"catalyst {joint['catalyst']}, indicator `{joint['indicator']}`)") if joint else "–"
        translator = report.get("backend") if report.get("backend") == report.get("model") else \
            f"{report.get('backend')}: {report.get('model')}"
        rows.append(f"| {path.parent.name} | {translator} | "
                    f"{report.get('mode', 'separate')} | {report['records']} | {report['flagged_records']} | "
                    f"{reversible} |")
    if not rows:
        return []
    return ["## Translation", "", "Each corpus the grid trained on (`data/<language>/report.md` has the details). "
            "Reversibility: in joint mode, the share of records whose joint translation split back at its "
            "indicators; the others were translated part by part (`joint_fallback`).", "",
            "| corpus | translator | mode | records | flagged | reversibility |", "|---|---|---|---|---|---|",
            *rows, ""]


def transfer_runs(grid_dir: Path) -> pd.DataFrame:
    """One row per vocabulary transfer the grid made (transfer/<model>-<lang>-s<seed>/transfer.json): model, lang,
    seed, method, tokens per word before and after, and the held-out loss curve."""
    rows = []
    for path in sorted(Path(grid_dir).glob("transfer/*/transfer.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        model, lang, seed = path.parent.name.rsplit("-", 2)
        rows.append({"model": model, "lang": lang, "seed": int(seed[1:]), "method": report["method"],
                     "ridge": report.get("config", {}).get("ridge", 0.0),
                     "before": report.get("before_tokens_per_word"), "after": report.get("after_tokens_per_word"),
                     "curve": report.get("curve") or []})
    return pd.DataFrame(rows)


def steps_to(curve: list[dict], threshold: float, key: str = "loss_per_word") -> int | None:
    """The first logged step whose held-out loss is at or below `threshold`; None if none is."""
    return next((point["step"] for point in curve if point[key] <= threshold), None)


def _spread(values: list[float], digits: int = 2) -> str:
    """mean ± sd over seeds (the sd only where there are several)."""
    values = [v for v in values if v is not None and not pd.isna(v)]
    if not values:
        return "–"
    series = pd.Series(values, dtype=float)
    sd = f" ± {series.std():.{digits}f}" if len(values) > 1 else ""
    return f"{series.mean():.{digits}f}{sd}"


def figure_transfer_curves(runs: pd.DataFrame, out: Path) -> Path | None:
    """The held-out loss during continued pretraining, per word (comparable across vocabularies), one line per
    transferred model (mean over seeds, shaded from the lowest to the highest seed), a panel per language."""
    runs = runs[runs["curve"].map(len) > 0]
    if runs.empty:
        return None
    plt = _plt()
    langs = sorted(set(runs["lang"]))
    fig, axes = plt.subplots(1, len(langs), figsize=(7 * len(langs), 4.8), squeeze=False)
    for ax, lang in zip(axes[0], langs):
        for model, group in runs[runs["lang"] == lang].groupby("model"):
            table = pd.DataFrame([{"seed": seed, **point} for seed, curve in zip(group["seed"], group["curve"])
                                  for point in curve]).groupby("step")["loss_per_word"]
            line = ax.plot(table.mean().index, table.mean().values, label=model)[0]
            ax.fill_between(table.min().index, table.min().values, table.max().values, alpha=0.15,
                            color=line.get_color())
        ax.set_yscale("log")
        ax.set_xlabel("continued-pretraining step")
        ax.set_ylabel("held-out loss (nats per word, log scale)")
        ax.set_title(f"{lang}: continued pretraining from each init")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "transfer_curves.png"
    fig.savefig(path, dpi=110)
    plt.close("all")
    return path


def transfer_summary(grid_dir: Path, frame: pd.DataFrame, figures_dir: Path) -> tuple[list[str], Path | None]:
    """The report's vocabulary-transfer section: per transferred model, tokens per word, the held-out loss at step
    0, the steps to reach the `mean` init's final loss and the final loss (mean ± sd over seeds), then each model
    before and after CLO with 95 % intervals; and the loss-curve figure."""
    runs = transfer_runs(grid_dir)
    if runs.empty:
        return [], None
    figure = figure_transfer_curves(runs, figures_dir)
    # the threshold, per language and seed: where the least informed init (every new row the same) ends
    ends = {(r.lang, r.seed): r.curve[-1]["loss_per_word"] for r in runs.itertuples() if r.method == "mean" and r.curve}
    rows = []
    for (model, lang), group in runs.groupby(["model", "lang"], sort=False):
        curves = [c for c in group["curve"] if c]
        reach = [steps_to(c, ends[(lang, seed)]) for seed, c in zip(group["seed"], group["curve"])
                 if c and (lang, seed) in ends]
        reached = [r for r in reach if r is not None]
        steps = _spread(reached, 0) if reached else "–"
        if len(reached) < len(reach):
            steps += f" ({len(reach) - len(reached)} of {len(reach)} never)"
        method = group["method"].iloc[0] + (f" (ridge {group['ridge'].iloc[0]:g})" if group["ridge"].iloc[0] else "")
        rows.append(f"| {model} | {lang} | {method} | {len(group)} | {_spread(list(group['before']))} → "
                    f"{_spread(list(group['after']))} | {_spread([c[0]['loss_per_word'] for c in curves])} | "
                    f"{_spread([c[0]['loss'] for c in curves])} | {steps} | "
                    f"{_spread([c[-1]['loss_per_word'] for c in curves])} | "
                    f"{_spread([c[-1]['loss'] for c in curves])} |")
    lines = ["## Vocabulary transfer", "",
             "Each transferred model (`transfer/<model>-<language>-s<seed>/transfer.json`): tokens per word of the "
             "held-out text under the LLM's vocabulary and under the new one, then the held-out loss of continued "
             "pretraining, in nats per word (comparable across vocabularies) and per token (comparable between "
             "inits of the same vocabulary). *Steps to mean's end*: the first logged step at which the loss per word "
             "reaches the final loss of the `mean` init of the same language and seed. Mean ± sd over seeds.", "",
             "| model | lang | init | seeds | tokens/word before → after | loss/word at step 0 | loss/token at "
             "step 0 | steps to mean's end | final loss/word | final loss/token |",
             "|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    models = list(dict.fromkeys(list(runs["model"]) + sorted(set(frame["model"]) - set(runs["model"]))))
    metrics = [m for m in ("accuracy_tgt", "fidelity_tgt", "accuracy_en") if m in set(frame["metric"])]
    rows = []
    for method in ("base", "clo"):  # each model before CLO, then after
        per_metric = {m: _cells(frame, m, method) for m in metrics}
        for key in sorted({k for cells in per_metric.values() for k in cells},
                          key=lambda k: (k[1], models.index(k[0]) if k[0] in models else len(models), k[2] or 0)):
            shares = [_share(*per_metric[m][key]) if key in per_metric[m] else None for m in metrics]
            rows.append(f"| {key[0]} | {key[1]} | {METHOD_NAMES.get(method, method)} | {key[2] or '–'} | " + " | ".join(
                f"{x['mean']:.2f} [{x['low']:.2f}, {x['high']:.2f}]" if x else "–" for x in shares) + " |")
    if rows:
        lines += ["Each model before CLO (base model) and after it, pooled over seeds, with 95 % intervals:", "",
                  "| model | lang | method | size | " + " | ".join(metrics) + " |",
                  "|---|---|---|---|" + "---|" * len(metrics), *rows, ""]
    return lines, figure


def failures(grid_dir: Path) -> list[dict]:
    found = []
    for path in sorted(grid_dir.glob("**/*.failed.json")):
        try:
            found.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            found.append({"stage": str(path), "error": "unreadable failure marker"})
    return found


def made_with() -> str:
    """The package set and the machine behind the numbers (README: a fresh clone gives them on the same)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "none"

    packages = ", ".join(f"{name} {v(name)}" for name in ("torch", "transformers", "trl", "peft", "accelerate",
                                                          "tokenizers", "lingua-language-detector"))
    return (f"{packages}; Python {platform.python_version()}, {platform.machine()}, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}")


def left_out(grid_dir: Path, run_states: dict[str, str] | None) -> dict[str, str]:
    """The evaluated run folders the report must not use, and why: stale (made under settings other than the grid
    file gives now, in any slice) or unknown (a folder the grid file does not name)."""
    if run_states is None:
        return {}
    found = sorted(path.parent.name for path in grid_dir.glob("*/metrics.json"))
    return {name: run_states.get(name, "unknown") for name in found if run_states.get(name) != "done"}


def write_report(grid_dir: str | Path, grid_name: str = "", notes: str = "",
                 run_states: dict[str, str] | None = None) -> dict[str, Any]:
    """results.csv, the figures and report.md for a grid folder; returns what was written.

    run_states: each run folder's state under the grid file as it is now (clo_lib.grid.run_states); runs that are
    not done under it (stale, or unknown to it) are left out of every table, figure and claim and listed. None:
    every metrics.json is used, and the report says their fingerprints were not checked."""
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        raise FileNotFoundError(f"grid_dir = {str(grid_dir)!r}: no such folder (looked in {grid_dir.resolve()}); "
                                "expected a grid's output folder, e.g. outputs/toy.")
    excluded = left_out(grid_dir, run_states)
    frame = collect(grid_dir, None if run_states is None else
                    {name for name, state in run_states.items() if state == "done"})
    figures_dir = grid_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = [figure_winrates(frame, figures_dir), figure_language_vs_english(frame, figures_dir)]
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
    lines += [f"Made with {made_with()}. Numbers can also depend on the CPU's vector instructions: the toy "
              "world's base model comes out different under AVX512, AVX2 and plain kernels after two epochs of "
              "its pretraining.", ""]
    if run_states is None:
        lines += ["The runs' fingerprints were not checked against a grid file (no grid_file given): every "
                  "metrics.json in the folder is reported.", ""]
    elif excluded:
        lines += ["## Runs left out", "", f"{len(excluded)} evaluated run folders are not reported: their results "
                  "were made under settings other than the grid file gives now (stale; `grid run --rerun-stale "
                  "--slices all` remakes them), or the grid file does not name them (unknown).", ""]
        lines += [f"- `{name}`: {why}" for name, why in excluded.items()] + [""]
    premise, _ = premise_check(frame)
    if premise:
        lines += ["## The premise, from the base model and SFT alone", "",
                  "Does SFT with little target-language data stay English-biased, the problem CLO is meant to fix? "
                  f"Share of target-language prompts answered in the target language ({_language_metric(frame)}), "
                  "with 95 % intervals:", ""] + premise + training_sanity(frame) + [""]
    table_of_claims = claims(frame)
    crpo = crpo_check(grid_dir)
    if crpo:
        table_of_claims.append(("CRPO critique: CLO mostly suppresses English rather than raising the target answer",
                                *crpo))
    if table_of_claims:
        lines += ["## The paper's claims", "", "In one line each:", ""]
        lines += [f"- **{claim.split(' (')[0]}: {said}.** {line}" for claim, said, _, line in table_of_claims]
        lines += ["", "| claim | verdict | the numbers |", "|---|---|---|"]
        lines += [f"| {claim} | {said} | {numbers} |" for claim, said, numbers, _ in table_of_claims] + [""]
    lines += english_retention(frame)
    lines += translation_summary(grid_dir)
    transfer_lines, transfer_figure = transfer_summary(grid_dir, frame, figures_dir)
    lines += transfer_lines
    figures += [transfer_figure] if transfer_figure else []
    found = findings(frame)
    if found:
        lines += ["## What it measured", ""] + found + [""]
    lines += ["## Summary", "", "Mean over seeds, [95 % interval] for shares (pooled over the prompts of all seeds), "
              "± standard deviation over seeds where there are several. The metrics are explained in the glossary "
              "below.", "", _markdown_table(_with_intervals(frame, table)), ""]
    examples = example_answers(grid_dir, frame)
    if examples:
        lines += ["## Example answers", ""] + examples
    if figures:
        lines += ["## Figures", ""] + [f"![{f.stem}](figures/{f.name})" for f in figures] + [""]
    lines += ["## Glossary", ""] + [f"- `{name}`: {meaning}." for name, meaning in GLOSSARY.items()
                                    if name.startswith("@") or name in set(frame["metric"])]
    lines += ["- verdicts: a cell is better or worse than SFT only when its 95 % interval excludes 0.5; otherwise "
              "inconclusive. Holds / does not hold / inconclusive for a claim follow from its cells.", ""]
    failed = failures(grid_dir)
    if failed:
        lines += ["## Failed stages", ""] + [f"- `{f['stage']}`: {f['error'].strip().splitlines()[-1][:200]}"
                                             for f in failed] + [""]
    atomic_write_text(grid_dir / "report.md", "\n".join(lines))
    return {"results": grid_dir / "results.csv", "report": grid_dir / "report.md", "figures": figures,
            "runs": len(runs), "failed": len(failed), "table": table}
