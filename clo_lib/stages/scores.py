"""Scoring answers: language fidelity (lingua, restricted to the languages in play), accuracy against reference
answers, scores by question group, and win rates against the SFT run, from an LLM judge or, offline, from the
reference answers and language.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from clo_lib.common import langid
from clo_lib.common.cache import JsonlCache, digest
from clo_lib.common.endpoint import ChatEndpoint
from clo_lib.common.errors import InputError
from clo_lib.common.langid import MIN_LETTERS
from clo_lib.common.languages import SOURCE_LANGUAGE, get_language
from clo_lib.method.pairs import SIDES

# ---------------------------------------------------------------------------------------------------------------
# Language fidelity


def fidelity(generations: Sequence[dict], tgt: str, min_confidence: float = 0.5,
             min_letters: int = MIN_LETTERS) -> dict[str, float]:
    """fidelity_*, line_fidelity_* and undetermined_* for both sides (see the module docstring)."""
    codes = [SOURCE_LANGUAGE, tgt]
    metrics: dict[str, float] = {}
    for side in SIDES:
        rows = [g for g in generations if g["side"] == side]
        if not rows:
            continue
        detected = langid.detect_many([g["answer"] for g in rows], codes, min_confidence, min_letters)
        for g, lang in zip(rows, detected):
            g["detected"] = lang
        metrics[f"fidelity_{side}"] = sum(d == g["lang"] for g, d in zip(rows, detected)) / len(rows)
        metrics[f"undetermined_{side}"] = sum(d is None for d in detected) / len(rows)
        lines = [(line, g["lang"]) for g in rows for line in g["answer"].splitlines() if line.strip()]
        line_langs = langid.detect_many([line for line, _ in lines], codes, min_confidence, min_letters)
        judged = [(lang, want) for lang, (_, want) in zip(line_langs, lines) if lang is not None]
        metrics[f"line_fidelity_{side}"] = (sum(lang == want for lang, want in judged) / len(judged)) if judged \
            else float("nan")
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# Reference answers: accuracy, and the deterministic judge


def _normalize(text: str) -> str:
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return " ".join(first_line.split()).casefold()


def is_correct(answer: str, prompt_row: dict) -> bool:
    """The answer's first line equals a reference answer, in English or in the target language."""
    references = {_normalize(prompt_row[k]) for k in ("answer_en", "answer_tgt") if prompt_row.get(k)}
    return _normalize(answer) in references


def accuracy(generations: Sequence[dict], prompts: Sequence[dict]) -> dict[str, float]:
    """accuracy_tgt / accuracy_en when the prompt rows carry reference answers; nothing otherwise."""
    by_id = {row["id"]: row for row in prompts}
    if not all(row.get("answer_en") and row.get("answer_tgt") for row in prompts):
        return {}
    metrics = {}
    for side in SIDES:
        rows = [g for g in generations if g["side"] == side]
        if rows:
            metrics[f"accuracy_{side}"] = sum(is_correct(g["answer"], by_id[g["id"]]) for g in rows) / len(rows)
    return metrics


def by_group(generations: Sequence[dict], prompts: Sequence[dict], tgt: str, min_confidence: float = 0.5,
             min_letters: int = MIN_LETTERS) -> dict:
    """fidelity_* and accuracy_* per prompt group (`<metric>@<group>`), for prompt rows that carry a `group` (the toy
    world's new_phrasing and new_fact, the run's own training items as `seen`)."""
    group_of = {row["id"]: row.get("group") for row in prompts}
    metrics = {}
    for group in sorted({g for g in group_of.values() if g}):
        rows = [row for row in prompts if row.get("group") == group]
        answers = [g for g in generations if group_of.get(g["id"]) == group]
        for key, value in {**fidelity(answers, tgt, min_confidence, min_letters), **accuracy(answers, rows)}.items():
            if key.startswith(("fidelity_", "accuracy_")):
                metrics[f"{key}@{group}"] = value
        metrics[f"prompts@{group}"] = len(rows)  # per side: what an interval on these shares needs
    return metrics


def _paired(ours: Sequence[dict], reference: Sequence[dict]):
    """(our answer, the SFT run's answer) for every prompt and side; a missing SFT answer is a clear error."""
    theirs = {(r["id"], r["side"]): r for r in reference}
    for row in ours:
        other = theirs.get((row["id"], row["side"]))
        if other is None:
            raise InputError(f"the SFT run has no answer for prompt {row['id']} ({row['side']}); evaluate it first")
        yield row, other


def language_verdict(ours: str, theirs: str, want: str, tgt: str, min_confidence: float = 0.5,
                     min_letters: int = MIN_LETTERS) -> float | None:
    """Criterion 1 of both judges: 1.0 (0.0) when our answer is confidently in the prompt's language and the other
    confidently in the other language (or the reverse); None otherwise, and the next criterion decides.

    An answer whose language is undetermined (code, numbers, too short to tell) is never decided by language.
    """
    codes = [SOURCE_LANGUAGE, tgt]
    mine, other = (langid.detect(answer, codes, min_confidence, min_letters)[0] for answer in (ours, theirs))
    if mine is None or other is None or (mine == want) == (other == want):
        return None
    return 1.0 if mine == want else 0.0


def reference_judge(ours: Sequence[dict], reference: Sequence[dict], prompts: Sequence[dict], tgt: str,
                    min_confidence: float = 0.5, min_letters: int = MIN_LETTERS) -> list[dict]:
    """Deterministic pairwise judge with the criteria above JUDGE_PROMPT: the answer in the prompt's language wins
    (language_verdict); otherwise the right answer wins; otherwise a tie.

    Scores as judge_against: 1 ours better, 0 worse, 0.5 equal.
    """
    by_id = {row["id"]: row for row in prompts}
    scored = []
    for row, other in _paired(ours, reference):
        score, how = language_verdict(row["answer"], other["answer"], row["lang"], tgt, min_confidence,
                                      min_letters), "language"
        if score is None:
            mine, its = (is_correct(a, by_id[row["id"]]) for a in (row["answer"], other["answer"]))
            score, how = (1.0 if mine > its else 0.0 if mine < its else 0.5), "reference"
        scored.append({"id": row["id"], "side": row["side"], "how": how, "score": score})
    return scored


# ---------------------------------------------------------------------------------------------------------------
# Pairwise judging against the SFT run

# The one order of criteria both judges apply (PAPER.md: wrong-language answers lose the judged comparisons):
#   1. language: an answer confidently in the prompt's language beats one confidently in the other language
#      (decided without a judge: language_verdict; undetermined answers go on to 2);
#   2. quality: the right answer beats a wrong one (reference judge: the prompt file's answers), or the more
#      helpful, correct and complete answer wins (LLM judge); otherwise a tie.
JUDGE_PROMPT = """You are comparing two assistant responses to the same user instruction.

The instruction is written in {language}. Judge by these criteria, in this order: first, a response in {language} \
is better than a response in another language; then, between responses in the same language, the more helpful, \
correct and complete one is better. Ignore length for its own sake.

[Instruction]
{instruction}

[Response A]
{response_a}

[Response B]
{response_b}

Which response is better? Reply with exactly one letter: A or B."""


def _judge_once(endpoint: ChatEndpoint, language: str, instruction: str, a: str, b: str, cache: JsonlCache) -> str:
    """'A' or 'B' (or '?' for an unusable reply), cached by (endpoint, judge model, prompt, answers, order)."""
    key = digest([endpoint.base_url.rstrip("/"), endpoint.model, JUDGE_PROMPT, language, instruction, a, b], 24)
    if key not in cache.rows:
        text = JUDGE_PROMPT.format(language=language, instruction=instruction, response_a=a, response_b=b)
        reply = endpoint.chat([{"role": "user", "content": text}], temperature=0.0, max_tokens=5).strip().upper()
        verdict = reply[:1] if reply[:1] in ("A", "B") else "?"
        cache.append([{"key": key, "verdict": verdict, "reply": reply[:20]}])
    return cache.rows[key]["verdict"]


def judge_against(ours: Sequence[dict], reference: Sequence[dict], endpoint: ChatEndpoint, tgt: str,
                  cache_path: str | Path, min_confidence: float = 0.5,
                  min_letters: int = MIN_LETTERS) -> list[dict]:
    """One score per prompt and side: 1 our answer wins, 0 it loses, 0.5 a tie or a split between the two orders.

    The criteria above JUDGE_PROMPT: when one answer is confidently in the prompt's language and the other
    confidently not, it wins without asking the judge (language_verdict). Otherwise the judge sees both orders
    (ours as A, then as B), which cancels its position bias, and is asked the same order of criteria.
    """
    cache = JsonlCache(cache_path)
    scored = []
    for row, other in _paired(ours, reference):
        want = row["lang"]
        score = language_verdict(row["answer"], other["answer"], want, tgt, min_confidence, min_letters)
        how = "language"
        if score is None:
            language = get_language(want).name
            first = _judge_once(endpoint, language, row["prompt"], row["answer"], other["answer"], cache)
            second = _judge_once(endpoint, language, row["prompt"], other["answer"], row["answer"], cache)
            score = ((first == "A") + (second == "B") + 0.5 * ((first == "?") + (second == "?"))) / 2
            how = "judge"
        scored.append({"id": row["id"], "side": row["side"], "score": score, "how": how})
    return scored
