"""The report's verdicts, computed from the results frame: the premise check (does SFT answer target prompts in
English at all), the paper's claims with intervals, English retention, the CRPO check, and training sanity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from clo_lib.common.languages import get_language
from clo_lib.common.stats import seed_interval, wilson
from clo_lib.stages.results import cells_of, language_metric, share_interval, summary


def _mean(frame: pd.DataFrame, metric: str, **where: Any) -> float:
    rows = frame[frame["metric"] == metric]
    for key, value in where.items():
        rows = rows[rows[key].eq(value).fillna(False).astype(bool)]  # a base row's missing size matches nothing
    return float(rows["value"].mean()) if not rows.empty else float("nan")


def pooled_win_rates(frame: pd.DataFrame, method: str, side: str) -> dict[tuple, dict[str, float]]:
    """Per (model, lang, size): the win rate against SFT on `side` prompts, pooled over seeds (each seed's rate
    weighted by its number of comparisons), with its share of ties and a seed-aware 95 % interval: the Wilson
    interval over every comparison, widened by the seeds' spread where there are several (seed_interval)."""
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
        cells[key] = {**seed_interval(wilson(mean, int(n)), list(group[metric])), "ties": ties}
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
                     "seeds of a cell, widened with two or more seeds to the Student t interval over the seeds' own "
                     "rates where that is wider, so they cover training noise as well as prompt sampling; a cell of "
                     "one seed covers prompt sampling only.")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# The paper's premise and claims, each stated as holds / does not hold / inconclusive with the numbers behind it

PREMISE_SHARE = 0.10  # "a clear share": SFT answers at least this share of unseen-form target prompts otherwise


def _below(a: dict, b: dict) -> bool:
    """a clearly below b: their 95 % intervals do not overlap."""
    return a["high"] < b["low"]


def premise_check(frame: pd.DataFrame) -> tuple[list[str], dict[tuple, str]]:
    """The paper's premise, from the base model and SFT alone: the base model answers most target-language prompts
    in English, and SFT with little data still answers a clear share (PREMISE_SHARE) of them otherwise, less so as
    its data grows. Lines for the report and a verdict per (model, language)."""
    metric = language_metric(frame)
    base, sft = cells_of(frame, metric, "base"), cells_of(frame, metric, "sft")
    lines, verdicts = [], {}
    for model, lang in sorted({(m, lang) for m, lang, _ in sft}):
        name = get_language(lang).name
        by_size = {size: share_interval(*value) for (m, la, size), value in sft.items() if (m, la) == (model, lang)}
        sizes = sorted(by_size)
        start = next((share_interval(*v) for (m, la, _), v in base.items() if (m, la) == (model, lang)), None)
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


def _beats_sft_in_target(frame: pd.DataFrame) -> tuple[str, str, str] | None:
    target = pooled_win_rates(frame, "clo", "tgt")
    if not target:
        return None
    counts = {v: [verdict(rate) for rate in target.values()].count(v) for v in ("better", "worse", "inconclusive")}
    said = "holds" if counts["better"] == len(target) else "does not hold" if counts["worse"] else "inconclusive"
    return (said, f"win rate vs SFT on target prompts: better in {counts['better']}, worse in {counts['worse']}, "
                  f"inconclusive in {counts['inconclusive']} of {len(target)} cells; mean "
                  f"{sum(r['mean'] for r in target.values()) / len(target):.2f}",
            f"CLO answered target-language prompts clearly better than SFT in {counts['better']} of {len(target)} "
            f"cells and clearly worse in {counts['worse']}.")


def _mean_over_shared_cells(frame: pd.DataFrame, metric: str) -> tuple[float, float] | None:
    """CLO's and SFT's mean of `metric` over the cells both have, or None."""
    cells = {m: cells_of(frame, metric, m) for m in ("clo", "sft")}
    shared = [c for c in cells["clo"] if c in cells["sft"]]
    if not shared:
        return None
    return tuple(sum(cells[m][c][0] for c in shared) / len(shared) for m in ("clo", "sft"))


def _keeps_english(frame: pd.DataFrame) -> tuple[str, str, str] | None:
    english = pooled_win_rates(frame, "clo", "en")
    if not english:
        return None
    worse = [cell for cell, rate in english.items() if verdict(rate) == "worse"]
    detail = ""
    accuracy, nll = _mean_over_shared_cells(frame, "accuracy_en"), _mean_over_shared_cells(frame, "mtbench_ref_nll")
    if accuracy:
        detail += f"; English accuracy {accuracy[0]:.2f} (CLO) vs {accuracy[1]:.2f} (SFT)"
    if nll:
        detail += f"; MT-bench reference NLL {nll[0]:.3f} (CLO) vs {nll[1]:.3f} (SFT)"
    return ("does not hold" if worse else "holds",
            f"win rate vs SFT on English prompts worse in {len(worse)} of {len(english)} cells, mean "
            f"{sum(r['mean'] for r in english.values()) / len(english):.2f}{detail}",
            f"On English prompts CLO was clearly worse than SFT in {len(worse)} of {len(english)} cells.")


def _size_comparisons(frame: pd.DataFrame, small_method: str, large_method: str, pairs_of, low_resource_only: bool):
    """(lang, n, big, {"fidelity": (small share, large share), "accuracy": ...}) for each cell pair to compare:
    `small_method` at n against `large_method` at big, for the (n, big) that `pairs_of(sizes)` gives."""
    metric = language_metric(frame)
    small, large = cells_of(frame, metric, small_method), cells_of(frame, metric, large_method)
    acc_small, acc_large = cells_of(frame, "accuracy_tgt", small_method), cells_of(frame, "accuracy_tgt", large_method)
    found = []
    for model, lang in sorted({(m, la) for m, la, _ in small}):
        if low_resource_only and get_language(lang).resource not in ("low", None):
            continue
        sizes = sorted(n for m, la, n in small if (m, la) == (model, lang) and n is not None)
        for n, big in pairs_of(sizes):
            a, b = (model, lang, n), (model, lang, big)
            if b not in large:
                continue
            shares = {"fidelity": (share_interval(*small[a]), share_interval(*large[b]))}
            if a in acc_small and b in acc_large:
                shares["accuracy"] = (share_interval(*acc_small[a]), share_interval(*acc_large[b]))
            found.append((lang, n, big, shares))
    return found


def _compared(found: list) -> str:
    return "; ".join(f"{lang} {n} vs {big}: " + ", ".join(f"{k} {x['mean']:.2f} vs {y['mean']:.2f}"
                                                        for k, (x, y) in shares.items())
                     for lang, n, big, shares in found)


def _half_data(frame: pd.DataFrame) -> tuple[str, str, str] | None:
    found = _size_comparisons(frame, "clo", "sft", _pairs_of_sizes, low_resource_only=True)
    if not found:
        return None
    below = any(_below(x, y) for *_, shares in found for x, y in shares.values())
    return ("does not hold" if below else "holds (no significant gap)",
            f"CLO at n vs SFT at 2n, {language_metric(frame)} and accuracy_tgt: " + _compared(found),
            "CLO with n examples fell clearly below SFT with 2n in at least one low-resource cell." if below else
            "CLO with n examples was never clearly below SFT with 2n (intervals overlap).")


def _size_sensitivity(frame: pd.DataFrame) -> tuple[str, str, str] | None:
    found = _size_comparisons(frame, "sft", "sft", _smallest_and_largest, low_resource_only=False)
    if not found:
        return None
    moved = any(_below(x, y) or _below(y, x) for *_, shares in found for x, y in shares.values())
    return ("holds" if moved else "inconclusive (no significant change)",
            f"SFT at the smallest vs the largest size, {language_metric(frame)} and accuracy_tgt: " + _compared(found),
            "SFT's target-language fidelity or accuracy changed clearly between the smallest and largest size."
            if moved else "SFT did not change clearly with data size here.")


def _smallest_and_largest(sizes: list[int]) -> list[tuple[int, int]]:
    return [(sizes[0], sizes[-1])] if len(sizes) > 1 else []


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims and how the grid's numbers test it: `check` gives (verdict, the numbers, the
    conclusion in one line), or None when the grid has nothing to test it with."""

    text: str
    check: Callable[[pd.DataFrame], tuple[str, str, str] | None]


CLAIMS = (
    Claim("CLO beats SFT in the target language (paper: in all 30 cells)", _beats_sft_in_target),
    Claim("CLO keeps English (paper: English win rates 50-65 %)", _keeps_english),
    Claim("CLO with half the data matches SFT with all of it in low-resource languages", _half_data),
    Claim("SFT is sensitive to data size", _size_sensitivity),
)


def claims(frame: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """(claim, verdict, the numbers, the conclusion in one line) for each of the paper's claims the grid can test.
    A verdict from cells of one training seed says so: prompt intervals cannot show training noise."""
    seeds = seeds_per_cell(frame)
    caveat = " (1 seed: indicative only)" if seeds == 1 else ""
    return [(claim.text, result[0] + caveat, *result[1:]) for claim in CLAIMS
            if (result := claim.check(frame)) is not None]


def seeds_per_cell(frame: pd.DataFrame) -> int:
    """The fewest training seeds behind any trained cell (model, lang, size, method) of the frame; 0: none."""
    trained = frame[frame["method"] != "base"]
    if trained.empty:
        return 0
    return int(trained.groupby(["model", "lang", "size", "method"], dropna=False)["seed"].nunique().min())


def ablations(frame: pd.DataFrame) -> list[str]:
    """Each ablation (a slice's variant, `clo+<name>`, and SFT on target rows, `sft_tgt`) against CLO and SFT of the
    same cell on held-out forms (the report's language metric), with seed-aware intervals, then in plain words
    which variants leave CLO's gap to SFT and which close it; empty when the grid has no ablation. A variant is
    compared with the SFT of its own variant where the grid has one (`clo+full` with `sft+full`), else plain SFT."""
    metric = language_metric(frame)
    variants = sorted(m for m in set(frame["method"]) if "+" in str(m) or m == "sft_tgt")
    if not variants:
        return []
    cells = {m: cells_of(frame, metric, m) for m in ["sft", "clo", *variants]}
    lines = [f"| method | language | size | {metric} [95 %] | against SFT | against CLO |",
             "|---|---|---|---|---|---|"]

    def sft_of(method: str) -> str:  # clo+full against sft+full, the others against plain SFT
        own = "sft+" + method.split("+", 1)[1] if method.startswith("clo+") else ""
        return own if own in cells else "sft"

    closes, worse, rises = [], [], []
    for method in ["sft", "clo", *variants]:
        for key, value in sorted(cells[method].items(), key=lambda kv: (str(kv[0][1]), kv[0][2] or 0)):
            share = share_interval(*value)
            reference = sft_of(method)
            sft = share_interval(*cells[reference][key]) if key in cells[reference] and method != reference else None
            clo = share_interval(*cells["clo"][key]) if key in cells["clo"] and method != "clo" else None
            against_sft, against_clo = (_compare(share, other) for other in (sft, clo))
            own_sft = f" ({reference})" if reference != "sft" and sft else ""
            lines.append(f"| {method} | {key[1]} | {key[2]} | {share['mean']:.2f} "
                         f"[{share['low']:.2f}, {share['high']:.2f}] | {against_sft}{own_sft} | {against_clo} |")
            if method.startswith("clo+"):
                (worse if against_sft == "below" else closes).append(f"{method} ({key[1]}) at {key[2]}")
                if against_clo == "above":
                    rises.append(f"{method} ({key[1]}) at {key[2]}")
    words = [f"- Still clearly below SFT: {', '.join(worse) or 'none'}.",
             f"- Not clearly below SFT (the gap closes or is within the intervals): {', '.join(closes) or 'none'}.",
             f"- Clearly above plain CLO: {', '.join(rises) or 'none'}."]
    if not rises:
        words.append("- No single change of CLO here lifts it clearly above plain CLO: none of these components "
                     f"alone explains the gap, at the intervals {seeds_per_cell(frame)} seed(s) allow.")
    return lines + [""] + words


def _compare(share: dict, other: dict | None) -> str:
    if other is None:
        return "–"
    return "below" if _below(share, other) else "above" if _below(other, share) else "overlaps"


def english_retention(frame: pd.DataFrame) -> list[str]:
    """MT-bench (clo_lib.stages.mtbench) per run kind: reference-answer NLL and its change from the base model, and the
    share of answers in English with its 95 % interval; empty when the grid did not measure it."""
    if "mtbench_ref_nll" not in set(frame["metric"]):
        return []
    lines = ["| model | lang | size | method | seeds | MT-bench reference NLL | change from base | answers in English "
             "[95 % interval] |", "|---|---|---|---|---|---|---|---|"]
    table = summary(frame, ["mtbench_ref_nll"])
    shares = {m: cells_of(frame, "fidelity_en@mtbench", m) for m in set(table["method"])}
    for row in table.itertuples(index=False):
        base = _mean(frame, "mtbench_ref_nll", model=row.model, lang=row.lang, method="base")
        size = None if pd.isna(row.size) else int(row.size)
        cell = shares[row.method].get((row.model, row.lang, size))
        share = share_interval(*cell) if cell else None
        english = f"{share['mean']:.2f} [{share['low']:.2f}, {share['high']:.2f}]" if share else "–"
        change = "–" if row.method == "base" or pd.isna(base) else f"{row.mtbench_ref_nll - base:+.3f}"
        lines.append(f"| {row.model} | {row.lang} | {'–' if size is None else size} | {row.method} | {row.seeds} | "
                     f"{row.mtbench_ref_nll:.3f} | {change} | {english} |")
    return ["## English retention on MT-bench", "",
            "Per-token NLL of GPT-4's reference answers to MT-bench's first-turn questions (30 answers; lower = "
            "fluent English answers are likelier to the model; a rise from the base model is English lost), and the "
            "share of the model's own answers to the 80 first-turn questions that are in English.", ""] + lines + [""]


def crpo_check(run_dirs: list[Path]) -> tuple[str, str, str] | None:
    """The CRPO critique (CLO mostly suppresses the English answer rather than raising the target one), from the
    rewards the CLO runs among `run_dirs` logged on target-language prompts at the end of training: the share of the
    reward margin that comes from lowering the rejected (English) answer."""
    shares, chosen, rejected = [], [], []
    for log_file in sorted(Path(d) / "train_log.json" for d in run_dirs if (Path(d) / "train_log.json").is_file()):
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
