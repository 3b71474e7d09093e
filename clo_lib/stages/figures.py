"""The report's figures: win rates per cell, a metric by training-set size, target language against English,
and the vocabulary transfer's loss curves. Each returns the file it wrote, or None when the frame has nothing to
plot.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clo_lib.stages.claims import pooled_win_rates
from clo_lib.stages.results import LABELS, METHOD_NAMES, METHOD_ORDER, cells_of, language_metric, share_interval


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
    x_metric = language_metric(frame)
    xs = {m: cells_of(frame, x_metric, m) for m in METHOD_ORDER}
    ys = {m: cells_of(frame, "accuracy_en", m) for m in METHOD_ORDER}
    points = [(m, key, share_interval(*xs[m][key]), share_interval(*ys[m][key])) for m in METHOD_ORDER for key in xs[m]
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
