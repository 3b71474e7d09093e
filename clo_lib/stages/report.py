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

from clo_lib.artifacts.runs import EARLY, SATURATED, preference_saturation
from clo_lib.common.errors import MissingInputError
from clo_lib.common.io import atomic_write_text
from clo_lib.config.load import load_config
from clo_lib.stages.claims import (
    ablations,
    claims,
    crpo_check,
    english_retention,
    findings,
    pooled_win_rates,
    premise_check,
    training_sanity,
)
from clo_lib.stages.evaluate import load_prompts
from clo_lib.stages.figures import figure_by_size, figure_language_vs_english, figure_transfer_curves, figure_winrates
from clo_lib.stages.results import (
    GLOSSARY,
    HEADLINE,
    METHOD_NAMES,
    cells_of,
    collect,
    in_view,
    language_metric,
    run_answers,
    share_interval,
    side_by_side,
    summary,
)


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
                intervals[metric, method] = {cell: share_interval(*value) for cell, value in
                                             cells_of(frame, metric, method).items() if value[1]}
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
        answers = {label: run_answers(grid_dir / name, cfg) for label, name in names.items()}
        table = side_by_side(prompts, answers, cfg, per_language)
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
        per_metric = {m: cells_of(frame, m, method) for m in metrics}
        for key in sorted({k for cells in per_metric.values() for k in cells},
                          key=lambda k: (k[1], models.index(k[0]) if k[0] in models else len(models), k[2] or 0)):
            shares = [share_interval(*per_metric[m][key]) if key in per_metric[m] else None for m in metrics]
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
    """results.csv, the figures and report.md for a grid folder; returns what was written, with the report's
    sections (`sections`: overview, summary, examples, figures, glossary, failures) as markdown for notebook 04.

    run_states: each run folder's state under the grid file as it is now (clo_lib.grid.expand.run_states); runs that
    are not done under it (stale, or unknown to it) are left out of every table, figure and claim and listed. None:
    every metrics.json is used, and the report says their fingerprints were not checked."""
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        raise MissingInputError(f"grid_dir = {str(grid_dir)!r}: no such folder (looked in {grid_dir.resolve()}); "
                                "expected a grid's output folder, e.g. outputs/toy.")
    every = collect(grid_dir, None if run_states is None else
                    {name for name, state in run_states.items() if state == "done"})
    # The shared budget is the report's main view (the premise is decided on it); a grid's search adds the tuned
    # view beside it, never mixed into one table.
    frame, tuned = in_view(every, "shared"), in_view(every, "tuned")
    tuned = tuned if (tuned["method"] != "base").any() else None
    figures_dir = grid_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(frame, figures_dir)
    table = summary(frame)
    overview, transfer_figure = overview_section(grid_dir, frame, tuned, grid_name, notes, run_states, figures_dir)
    figures += [transfer_figure] if transfer_figure else []
    failed = failures(grid_dir)
    sections = {
        "overview": overview,
        "summary": ["## Summary" + (": at a shared budget (fixed from SFT alone)" if tuned is not None else ""), "",
                    INTERVALS, "", _markdown_table(_with_intervals(frame, table)), ""]
        + (tuned_section(grid_dir, tuned) if tuned is not None else []),
        "examples": (["## Example answers", ""] + examples) if (examples := example_answers(grid_dir, frame)) else [],
        "figures": (["## Figures", ""] + [f"![{f.stem}](figures/{f.name})" for f in figures] + [""]) if figures
        else [],
        "glossary": glossary_section(frame),
        "failures": (["## Failed stages", ""] + [f"- `{f['stage']}`: {f['error'].strip().splitlines()[-1][:200]}"
                                                 for f in failed] + [""]) if failed else [],
    }
    atomic_write_text(grid_dir / "report.md", "\n".join(line for lines in sections.values() for line in lines))
    runs = every.drop_duplicates(["model", "lang", "size", "method", "seed", "view"])
    return {"results": grid_dir / "results.csv", "report": grid_dir / "report.md", "figures": figures,
            "runs": len(runs), "failed": len(failed), "table": table,
            "sections": {name: "\n".join(lines) for name, lines in sections.items()}}


def draw_figures(frame: pd.DataFrame, figures_dir: Path) -> list[Path]:
    figures = [figure_winrates(frame, figures_dir), figure_language_vs_english(frame, figures_dir)]
    for metric in ("winrate_vs_sft_tgt", "accuracy_tgt", "fidelity_tgt", "accuracy_en"):
        if metric in set(frame["metric"]):
            figures.append(figure_by_size(frame, metric, figures_dir))
    return [f for f in figures if f is not None]


INTERVALS = ("Mean over seeds, [95 % interval] for shares, ± standard deviation over seeds where there are several. "
             "An interval covers prompt sampling (Wilson, over the prompts of all seeds) and, with two or more "
             "seeds, training noise too: it is widened to the Student t interval over the seeds' own values where "
             "that is wider. The metrics are explained in the glossary below.")


def tuned_section(grid_dir: Path, tuned: pd.DataFrame) -> list[str]:
    """The runs a grid's search picked on validation (clo_lib.grid.search): what each picked, then their table."""
    picks = {name: json.loads((grid_dir / name / "pick.json").read_text(encoding="utf-8"))
             for name in sorted(set(tuned.loc[tuned["view"] == "tuned", "name"]))}  # the reported runs' only
    rows = []
    for name, pick in picks.items():
        settings = ", ".join(f"{k.split('.')[-1]} {v:g}" if isinstance(v, float) else f"{k.split('.')[-1]} {v}"
                             for k, v in pick["settings"].items())
        scores = " / ".join(f"{t['score']:.2f}" for t in pick["trials"])
        rows.append(f"| {name} | {settings} | {pick['score']:.2f} | {scores} |")
    metric = next(iter(picks.values()))["metric"]
    return ["## Summary: each method at its own best on validation", "",
            "Every method's trials (the grid file's `search`, the same number for every method) were evaluated on the "
            f"validation prompts only, ranked by {' + '.join(metric)}, and only the pick of each run was evaluated "
            "on the test prompts below. Picks, in the order of the trials' validation scores:", "",
            "| run | picked | validation score | every trial's score |", "|---|---|---|---|", *rows, "",
            _markdown_table(_with_intervals(tuned, summary(tuned))), ""]


def overview_section(grid_dir: Path, frame: pd.DataFrame, tuned: pd.DataFrame | None, grid_name: str, notes: str,
                     run_states: dict[str, str] | None, figures_dir: Path) -> tuple[list[str], Path | None]:
    """Everything the report says before its summary table: what was run and with what, the runs left out, the
    premise, the claims, English retention, translation, transfer and what it measured."""
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
    lines += left_out_section(grid_dir, run_states)
    premise, _ = premise_check(frame)
    if premise:
        lines += ["## The premise, from the base model and SFT alone", "",
                  "Does SFT with little target-language data stay English-biased, the problem CLO is meant to fix? "
                  f"Share of target-language prompts answered in the target language ({language_metric(frame)}), "
                  "with 95 % intervals:", ""] + premise + training_sanity(frame) + [""]
    lines += saturation_section(grid_dir, frame)
    lines += claims_section(grid_dir, frame, tuned)
    lines += ablation_section(frame if tuned is None else tuned, tuned is not None)
    lines += english_retention(frame) + translation_summary(grid_dir)
    transfer_lines, transfer_figure = transfer_summary(grid_dir, frame, figures_dir)
    lines += transfer_lines
    found = findings(frame)
    if found:
        lines += ["## What it measured", ""] + found + [""]
    return lines, transfer_figure


def ablation_section(frame: pd.DataFrame, tuned: bool) -> list[str]:
    found = ablations(frame)
    if not found:
        return []
    view = "each at its own best on validation" if tuned else "at the shared budget"
    return ["## Which part of CLO explains the result", "",
            f"Each ablation ({view}) against plain SFT and CLO of the same size on held-out question forms: "
            "below / above when the 95 % intervals (seed-aware) do not overlap.", "", *found, ""]


def saturation_section(grid_dir: Path, frame: pd.DataFrame) -> list[str]:
    """The runs whose preference accuracy saturated early (the train stage's own rule, applied to the logged
    history), per method: the reward-hacking-on-language pattern."""
    counts: dict[str, list[int]] = {}  # method -> [runs warned, runs with preference logs]
    for method, name in sorted(set(zip(frame["method"], frame["name"]))):
        log = grid_dir / name / "train_log.json"
        if method == "base" or not log.is_file():
            continue
        stages = json.loads(log.read_text(encoding="utf-8")).get("stages", [])
        if not any(key.endswith("/rewards_accuracy") for stage in stages for entry in stage.get("log_history", [])
                   for key in entry):
            continue
        counts.setdefault(method, [0, 0])[1] += 1
        counts[method][0] += any(preference_saturation(stage.get("log_history", [])) for stage in stages)
    hit = {method: c for method, c in counts.items() if c[0]}
    if not hit:
        return []
    parts = ", ".join(f"{METHOD_NAMES.get(m, m)} {warned} of {runs}" for m, (warned, runs) in hit.items())
    return ["## A warning from training", "",
            f"Preference accuracy reached {SATURATED:.2f} within the first {EARLY * 100:.0f} % of the steps in {parts} "
            "runs (each run's train_log.json names the side). With target-language chosen and English rejected "
            "answers, the language alone can tell the pair apart, so the preference may learn the language rather "
            "than the answer (reward hacking on language, as users of other trainers report).", ""]


def left_out_section(grid_dir: Path, run_states: dict[str, str] | None) -> list[str]:
    if run_states is None:
        return ["The runs' fingerprints were not checked against a grid file (no grid_file given): every "
                "metrics.json in the folder is reported.", ""]
    excluded = left_out(grid_dir, run_states)
    if not excluded:
        return []
    return ["## Runs left out", "", f"{len(excluded)} evaluated run folders are not reported: their results were "
            "made under settings other than the grid file gives now (stale; `grid run --rerun-stale --slices all` "
            "remakes them), or the grid file does not name them (unknown).", ""] + \
        [f"- `{name}`: {why}" for name, why in excluded.items()] + [""]


def claims_section(grid_dir: Path, frame: pd.DataFrame, tuned: pd.DataFrame | None = None) -> list[str]:
    """The claims at the shared budget and, after a search, beside them each method at its own best."""
    views = {"at a shared budget (fixed from SFT alone)": frame}
    if tuned is not None:
        views["each method at its own best on validation"] = tuned
    verdicts = {}
    for view, part in views.items():
        found = claims(part)
        clo_runs = [grid_dir / name for name in set(part.loc[part["method"] == "clo", "name"])]
        if (crpo := crpo_check(clo_runs)) is not None:
            found.append(("CRPO critique: CLO mostly suppresses English rather than raising the target answer",
                          *crpo))
        verdicts[view] = {claim: rest for claim, *rest in found}
    first = next(iter(verdicts.values()))
    if not first:
        return []
    lines = ["## The paper's claims", ""]
    for view, found in verdicts.items():
        lines += [f"In one line each, {view}:" if len(views) > 1 else "In one line each:", ""]
        lines += [f"- **{claim.split(' (')[0]}: {said}.** {line}" for claim, (said, _, line) in found.items()] + [""]
    header = " | ".join(f"{view}: verdict | the numbers" for view in verdicts)
    lines += [f"| claim | {header} |", "|---|" + "---|---|" * len(verdicts)]
    for claim in dict.fromkeys(c for found in verdicts.values() for c in found):
        cells = [" | ".join(found[claim][:2]) if claim in found else "– | –" for found in verdicts.values()]
        lines.append(f"| {claim} | {' | '.join(cells)} |")
    return lines + [""]


def glossary_section(frame: pd.DataFrame) -> list[str]:
    lines = ["## Glossary", ""] + [f"- `{name}`: {meaning}." for name, meaning in GLOSSARY.items()
                                   if name.startswith("@") or name in set(frame["metric"])]
    return lines + ["- verdicts: a cell is better or worse than SFT only when its 95 % interval excludes 0.5; "
                    "otherwise inconclusive. Holds / does not hold / inconclusive for a claim follow from its cells.",
                    ""]
