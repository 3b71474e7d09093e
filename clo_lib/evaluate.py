"""Evaluation stage: does the model answer in the right language, is it right, does it beat SFT, and is English kept?

    prompts (target + English) ─► generate answers (cached) ─► language fidelity (lingua)
                               ─► multiple-choice accuracy (lm-evaluation-harness, tasks per language in params)
                               ─► pairwise LLM judge against the SFT run (both orders, cached) ─► metrics.json

Metric names (one row each in the long-format table the analysis reads):
    fidelity_tgt, fidelity_en        share of target / English prompts answered in that language. An answer whose
                                     language lingua cannot determine (empty, digits only, below
                                     eval.lid_min_confidence) counts as not in the language; `undetermined_*`
                                     reports how many there were.
    line_fidelity_tgt, line_fidelity_en   the same per line, over lines whose language is determined: catches
                                     answers that switch language midway
    accuracy_tgt, accuracy_en        with reference answers in the prompt file (answer_en, answer_tgt): share of
                                     answers whose first line is one of them, in either language (right answer,
                                     whatever its language; fidelity says which language)
    mc_acc_tgt, mc_acc_en            mean lm-eval accuracy over the tasks listed for the language (plus one
                                     mc_acc:<task> row per task)
    winrate_vs_sft_tgt, winrate_vs_sft_en (+ _ci_low/_ci_high, _ties, _n)   judged win rate against the SFT run,
                                     ties as half, with a 95 % Wilson interval, the share of ties and the number of
                                     comparisons; the judge is an LLM (eval.judge: llm) or the reference answers
                                     (eval.judge: reference; deterministic, used by the toy world). Both apply one
                                     order of criteria (see JUDGE_PROMPT): the prompt's language first, then quality.
    mtbench_ref_nll, fidelity_en@mtbench   English retention on MT-bench (eval.mtbench; clo_lib.mtbench): the
                                     per-token NLL of GPT-4's reference answers, and the share of answers to the 80
                                     first-turn questions in English
    <metric>@<group>                 fidelity and accuracy per prompt group, when the prompt file names groups (the
                                     toy world: new_phrasing, new_fact), and `@seen` on the run's own first
                                     eval.seen_prompts training records, a sanity check of its training
Language ID (fidelity, judging) looks at an answer's prose only: code blocks, inline code, URLs and bare numbers are
left out (clo_lib.langid.prose, the same spans translation protects).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from clo_lib.config import ConfigError, RunConfig, load_config
from clo_lib.endpoint import ChatEndpoint, EndpointError
from clo_lib.io import append_jsonl, atomic_write_json
from clo_lib.langid import MIN_LETTERS
from clo_lib.languages import SOURCE_LANGUAGE, get_language
from clo_lib.provenance import evaluate_fingerprint

SIDES = ("tgt", "en")
# The 805 AlpacaEval instructions (the hub repo's loading script no longer runs in datasets 4+, the JSON does).
ALPACA_EVAL_FILE = "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json"


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()[:24]


class JsonlCache:
    """Rows appended one batch at a time (fsynced), read back by key; a torn or foreign line is ignored."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["key"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def append(self, rows: Sequence[dict]) -> None:
        for row in rows:
            self.rows[row["key"]] = row
        append_jsonl(self.path, rows)


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def check_prompt_rows(rows: Sequence[dict], source: str) -> list[dict]:
    """`{id, prompt_en, prompt_tgt}` rows, or one clear error naming the first bad row and field."""
    checked = []
    for index, row in enumerate(rows):
        for name in ("prompt_en", "prompt_tgt"):
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{source}: row {index}: field {name!r} is missing or empty; expected the prompt "
                                 "in English (prompt_en) and in the target language (prompt_tgt)")
        checked.append({**row, "id": str(row.get("id", index))})
    return checked


def load_prompts(cfg: RunConfig) -> list[dict]:
    """The evaluation prompts: `eval.prompts` (a JSONL file), or else AlpacaEval translated by the run's translator."""
    from clo_lib.data import numbered_rows

    if cfg.eval.prompts:
        path = cfg.eval.prompts.replace("{lang}", cfg.language)
        what = "a JSONL file of prompts (prompt_en, prompt_tgt)"
        rows = [row for _, row in numbered_rows(path, what, "eval.prompts")]
        rows = check_prompt_rows(rows, path)
    else:
        rows = translated_alpaca_eval(cfg)
    return spread(rows, cfg.eval.num_prompts)


def spread(rows: list[dict], n: int | None) -> list[dict]:
    """`n` rows evenly spaced over `rows` (all of them for None): prompt files are ordered (by kind and group in
    the toy world, by source dataset in AlpacaEval), so the first n would sample one part of them."""
    if not n or n >= len(rows):
        return rows
    return [rows[(i * len(rows)) // n] for i in range(n)]


def translated_alpaca_eval(cfg: RunConfig) -> list[dict]:
    """AlpacaEval's 805 instructions and their translation (the paper used GPT-4o; here: translation.* in params).

    Real code for users with network; the translations go through the translation stage's cache.
    """
    from datasets import load_dataset

    from clo_lib.data import hub_errors
    from clo_lib.translate import make_translator, translate_records, translation_cache

    with hub_errors("the AlpacaEval prompts"):
        english = load_dataset("json", data_files=ALPACA_EVAL_FILE, split="train")
    records = [{"id": f"alpaca_eval-{i}", "prompt_en": row["instruction"], "response_en": ""}
               for i, row in enumerate(english)]
    tcfg = cfg.translation
    parallel, _ = translate_records(records, make_translator(tcfg, SOURCE_LANGUAGE, cfg.language),
                                    translation_cache(cfg), cfg.language, tcfg)
    # A flagged translation (wrong language, empty, a loop) would score the model on a broken question.
    kept = [r for r in parallel if not r["flags"]]
    if len(kept) < len(parallel):
        print(f"AlpacaEval: {len(parallel) - len(kept)} of {len(parallel)} translated prompts were flagged and are "
              "left out")
    return [{"id": r["id"], "prompt_en": r["prompt_en"], "prompt_tgt": r["prompt_tgt"]} for r in kept]


# ---------------------------------------------------------------------------------------------------------------
# Generation


def load_for_eval(cfg: RunConfig, model_path: str | Path):
    """A trained run's model (any form clo_lib.models reads: full, trained tensors only, LoRA adapter merged into
    its base) or a base model, for inference."""
    from clo_lib.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(cfg, str(model_path), backend="hf")
    tokenizer.padding_side = "left"  # generation continues every prompt from its own last token
    return model.eval(), tokenizer


def decoding_settings(cfg: RunConfig, max_new_tokens: int | None = None) -> dict[str, Any]:
    """What decides a generated answer besides the model and the prompt."""
    ecfg = cfg.eval
    return {"max_new_tokens": max_new_tokens or ecfg.max_new_tokens, "temperature": ecfg.temperature,
            "seed": cfg.seed, "batch_size": ecfg.batch_size, "prompt_format": cfg.model.prompt_format,
            "prompt_template": cfg.model.prompt_template}


def model_identity(model) -> str:
    """A fingerprint of the weights being evaluated: a checksum over every parameter (cheap next to generation),
    so answers cached for other weights (a run trained again into the same folder) are never reused."""
    import torch

    with torch.no_grad():
        sums = [float(p.detach().float().sum()) for p in model.parameters()]
        firsts = [float(p.detach().reshape(-1)[0].float()) for p in model.parameters() if p.numel()]
    return _hash(sums, firsts)


def generate_answers(model, tokenizer, prompts: Sequence[dict], cfg: RunConfig, cache_path: str | Path,
                     progress: bool = True, sides: Sequence[str] = SIDES,
                     max_new_tokens: int | None = None) -> list[dict]:
    """One answer per prompt and side (tgt, en; or only `sides`): `{id, side, lang, prompt, answer, settings}`,
    cached in `cache_path`. `max_new_tokens` overrides eval.max_new_tokens (MT-bench's answers use their own).

    The cache key covers the prompt's side, language and text, the model (`model_identity`), its prompt format and
    the decoding settings, so judging or scoring again reuses answers, while another model or another decoding
    generates anew (and a prompt left untranslated, the same text on both sides, keeps both answers). Batches are
    grouped by prompt length.
    """
    import torch
    from tqdm.auto import tqdm

    from clo_lib.pairs import format_prompt

    ecfg = cfg.eval
    settings = decoding_settings(cfg, max_new_tokens)
    model_id = model_identity(model)
    # a chat model's prompts are written by its tokenizer's chat template: another template, other answers
    chat_template = [_hash(tokenizer.chat_template)] if cfg.model.prompt_format == "chat" else []
    cache = JsonlCache(cache_path)
    items = []
    for row in prompts:
        for side in sides:
            text, lang = row[f"prompt_{side}"], cfg.language if side == "tgt" else SOURCE_LANGUAGE
            items.append({"key": _hash(side, lang, text, settings, model_id, *chat_template), "id": row["id"],
                          "side": side, "lang": lang, "prompt": text, "settings": _hash(settings)})
    todo = [item for item in items if item["key"] not in cache.rows]
    formatted = {item["key"]: format_prompt(item["prompt"], tokenizer, cfg.model.prompt_format,
                                            cfg.model.prompt_template) for item in todo}
    todo.sort(key=lambda item: len(formatted[item["key"]]))
    chat = cfg.model.prompt_format == "chat"
    bar = tqdm(total=len(todo), unit="answer", desc="generate", disable=not progress or not todo)
    torch.manual_seed(cfg.seed)
    for begin in range(0, len(todo), ecfg.batch_size):
        batch = todo[begin: begin + ecfg.batch_size]
        inputs = tokenizer([formatted[item["key"]] for item in batch], return_tensors="pt", padding=True,
                           add_special_tokens=not chat).to(model.device)
        sampling = {"do_sample": True, "temperature": ecfg.temperature} if ecfg.temperature > 0 else {
            "do_sample": False}
        started = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=settings["max_new_tokens"],
                                    pad_token_id=tokenizer.pad_token_id, **sampling)
        answers = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        share = round((time.perf_counter() - started) / len(batch), 4)  # each answer's share of its batch's time
        cache.append([{**item, "answer": answer.strip(), "seconds": share} for item, answer in zip(batch, answers)])
        bar.update(len(batch))
    bar.close()
    return [cache.rows[item["key"]] for item in items]


# ---------------------------------------------------------------------------------------------------------------
# Language fidelity


def fidelity(generations: Sequence[dict], tgt: str, min_confidence: float = 0.5,
             min_letters: int = MIN_LETTERS) -> dict[str, float]:
    """fidelity_*, line_fidelity_* and undetermined_* for both sides (see the module docstring)."""
    from clo_lib import langid

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


def reference_answers(reference_run: str | Path, cfg: RunConfig) -> list[dict]:
    """The SFT run's answers made with this run's decoding settings (its generations.jsonl may hold answers of
    several evaluations); the latest per prompt and side."""
    path = Path(reference_run) / "generations.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; evaluate the SFT run {reference_run} first")
    wanted = _hash(decoding_settings(cfg))
    latest = {(r["id"], r["side"]): r for r in JsonlCache(path).rows.values() if r.get("settings") == wanted}
    return list(latest.values())


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


def seen_prompts(cfg: RunConfig) -> list[dict]:
    """The first `eval.seen_prompts` of the run's own training records, asked as a sanity check (group `seen`):
    a run that cannot answer what it trained on is under-trained, whatever it does on held-out questions."""
    if not cfg.eval.seen_prompts:
        return []
    from clo_lib.data import run_records

    try:
        records = run_records(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"seen-item check skipped: {err}")
        return []
    return [{"id": f"seen-{r['id']}", "group": "seen", "prompt_en": r["prompt_en"], "prompt_tgt": r["prompt_tgt"],
             "answer_en": r["response_en"], "answer_tgt": r["response_tgt"]}
            for r in records[: cfg.eval.seen_prompts]]


def _paired(ours: Sequence[dict], reference: Sequence[dict]):
    """(our answer, the SFT run's answer) for every prompt and side; a missing SFT answer is a clear error."""
    theirs = {(r["id"], r["side"]): r for r in reference}
    for row in ours:
        other = theirs.get((row["id"], row["side"]))
        if other is None:
            raise ValueError(f"the SFT run has no answer for prompt {row['id']} ({row['side']}); evaluate it first")
        yield row, other


def language_verdict(ours: str, theirs: str, want: str, tgt: str, min_confidence: float = 0.5,
                     min_letters: int = MIN_LETTERS) -> float | None:
    """Criterion 1 of both judges: 1.0 (0.0) when our answer is confidently in the prompt's language and the other
    confidently in the other language (or the reverse); None otherwise, and the next criterion decides.

    An answer whose language is undetermined (code, numbers, too short to tell) is never decided by language.
    """
    from clo_lib import langid

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
# Multiple-choice accuracy with lm-evaluation-harness


def mc_accuracy(model, tokenizer, tasks_by_lang: dict[str, list[str]], tgt: str, task_dir: str | None = None,
                batch_size: int = 8, limit: int | None = None) -> dict[str, float]:
    """mc_acc_tgt / mc_acc_en (mean over the language's tasks) and mc_acc:<task> for every task run.

    lm-eval scores the model already loaded for generation (whatever form its run folder has), not a second copy.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError("eval.mc_tasks is set but lm-evaluation-harness is not installed; "
                          "pip install -e '.[eval]'") from None

    wanted = {side: tasks_by_lang.get(lang, []) for side, lang in (("tgt", tgt), ("en", SOURCE_LANGUAGE))}
    tasks = sorted({task for names in wanted.values() for task in names})
    if not tasks:
        return {}
    results = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), tasks=tasks, limit=limit,
        task_manager=TaskManager(include_path=task_dir) if task_dir else TaskManager(),
    )["results"]
    metrics = {}
    for task in tasks:
        if task not in results:
            raise ValueError(f"eval.mc_tasks: lm-eval returned no result for task {task!r}")
        scores = results[task]
        metrics[f"mc_acc:{task}"] = float(scores.get("acc,none", scores.get("acc_norm,none", float("nan"))))
    for side, names in wanted.items():
        if names:
            metrics[f"mc_acc_{side}"] = sum(metrics[f"mc_acc:{t}"] for t in names) / len(names)
    return metrics


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
    key = _hash(endpoint.base_url.rstrip("/"), endpoint.model, JUDGE_PROMPT, language, instruction, a, b)
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


def win_rate(scores: Sequence[float], z: float = 1.96) -> dict[str, float]:
    """Mean score (ties count half) with a 95 % Wilson interval, the share of ties, and the number of comparisons.

    The interval treats each comparison as a win or a loss with the observed rate (a tie as half of each), which
    is the widest variance a 0/0.5/1 score can have: it does not shrink to zero width when every comparison ties
    (a normal interval from the scores' own spread did), and it stays inside [0, 1].
    """
    n = len(scores)
    if n == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "ties": float("nan"), "n": 0}
    return {**wilson(sum(scores) / n, n, z), "ties": sum(score == 0.5 for score in scores) / n}


def wilson(mean: float, n: int, z: float = 1.96) -> dict[str, float]:
    """{mean, low, high, n}: the Wilson score interval for a rate `mean` observed over `n` comparisons."""
    center = (mean + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"mean": mean, "low": max(0.0, center - half), "high": min(1.0, center + half), "n": n}


# ---------------------------------------------------------------------------------------------------------------
# metrics.json and the long-format table


def run_facts(cfg: RunConfig, method: str | None = None, model_label: str | None = None,
              run_dir: str | Path | None = None, variant: str = "") -> dict[str, Any]:
    """What identifies a run in the results table (the grid's short model label, else the model's id; the grid
    slice's variant for an ablation run, "" otherwise), and how many examples it really trained on (its train log's
    `examples_used`; None for an untrained model)."""
    method = method or cfg.train.method
    log = Path(run_dir) / "train_log.json" if run_dir else None
    used = json.loads(log.read_text(encoding="utf-8")).get("examples_used") if log and log.is_file() else None
    return {"model": model_label or cfg.model.name_or_path, "lang": cfg.language,
            "size": None if method == "base" else cfg.data.size,  # the untrained model has no data size
            "method": method, "seed": cfg.seed, "name": cfg.name, "examples_used": used, "variant": variant}


def write_metrics(run_dir: str | Path, facts: dict, metrics: dict, details: dict | None = None,
                  fingerprint: dict | None = None) -> Path:
    """metrics.json, written atomically and last: a run folder without it is not done. `fingerprint` says what the
    numbers came from (clo_lib.provenance), so a grid can tell when they no longer match its config."""
    path = Path(run_dir) / "metrics.json"
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    atomic_write_json(path, {"run": facts, "metrics": clean, "details": details or {}, "fingerprint": fingerprint})
    return path


def metrics_rows(path: str | Path) -> list[dict]:
    """One long-format row per metric: model, lang, size, method, seed, name, examples_used, metric, value."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [{**data["run"], "metric": metric, "value": value} for metric, value in data["metrics"].items()]


# ---------------------------------------------------------------------------------------------------------------
# The stage


def evaluate_run(cfg: RunConfig, run_dir: str | Path, model_path: str | Path | None = None,
                 reference_run: str | Path | None = None, method: str | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, loaded: tuple | None = None,
                 model_label: str | None = None, prompts: list[dict] | None = None,
                 variant: str = "") -> dict[str, Any]:
    """Generate, score and judge one run; write `generations.jsonl`, `judgments.jsonl` and `metrics.json`.

    model_path: the trained weights (default `<run_dir>/model`), or the base model for method `base`.
    reference_run: the SFT run folder of the same model, language and size, for the win rates.
    loaded, prompts: the model and tokenizer, and the prompts, already in memory (the notebook's), so they are not
    loaded twice.
    """
    run_dir = Path(run_dir)
    model_path = Path(model_path) if model_path else run_dir / "model"
    ecfg = cfg.eval
    judge = ecfg.judge if ecfg.judge != "auto" else ("llm" if ecfg.judge_base_url else "none")
    endpoint = None
    if judge == "llm":
        endpoint = ChatEndpoint(ecfg.judge_base_url, ecfg.judge_model, ecfg.judge_api_key_env)
        endpoint.check()  # a missing key fails now, not after an hour of generation
    if ecfg.mtbench:
        from clo_lib.mtbench import mtbench_dir

        mtbench_dir()  # a missing package fails now, before the model loads
    prompts = prompts if prompts is not None else load_prompts(cfg)
    method = method or cfg.train.method
    seen = seen_prompts(cfg) if method != "base" else []
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file; expected the run's folder, where metrics.json goes.")
    if loaded is None:
        from clo_lib.models import check_model_source

        is_base = str(model_path) == cfg.model.name_or_path
        check_model_source(str(model_path), "the model to evaluate", cfg.model.gguf_file if is_base else None)
    start = time.perf_counter()
    model, tokenizer = loaded or load_for_eval(cfg, model_path)
    every = generate_answers(model, tokenizer, prompts + seen, cfg, run_dir / "generations.jsonl", progress)
    generations = every[: 2 * len(prompts)]  # the evaluation prompts' answers; the seen items' come after
    metrics: dict[str, Any] = fidelity(generations, cfg.language, ecfg.lid_min_confidence, ecfg.lid_min_letters)
    metrics.update(accuracy(generations, prompts))
    metrics["prompts"] = len(prompts)
    metrics.update(by_group(every, prompts + seen, cfg.language, ecfg.lid_min_confidence, ecfg.lid_min_letters))
    if ecfg.mc_tasks:
        metrics.update(mc_accuracy(model, tokenizer, ecfg.mc_tasks, cfg.language, ecfg.mc_task_dir, ecfg.batch_size,
                                   ecfg.mc_limit))
    if ecfg.mtbench:
        from clo_lib.mtbench import mtbench_metrics

        metrics.update(mtbench_metrics(model, tokenizer, cfg, run_dir, progress))
    del model
    # generation time from the answers themselves: they may have been generated before this call (the notebook
    # generates first, the cache hands them over here)
    details: dict[str, Any] = {"prompts": len(prompts), "seen_prompts": len(seen),
                               "generation_seconds": round(sum(row.get("seconds", 0.0) for row in every), 2),
                               "evaluation_seconds": round(time.perf_counter() - start, 2)}
    if judge == "none":
        log("judging skipped: no judge configured (eval.judge_base_url, or eval.judge: reference with reference "
            "answers), so no win rates; none are made up")
    elif reference_run is None or method == "sft":
        log("judging skipped: no SFT reference run to compare with" if method != "sft" else
            "judging skipped: this is the SFT run itself")
    else:
        reference = reference_answers(reference_run, cfg)
        if judge == "reference":
            scored = reference_judge(generations, reference, prompts, cfg.language, ecfg.lid_min_confidence,
                                     ecfg.lid_min_letters)
        else:
            scored = judge_against(generations, reference, endpoint, cfg.language, run_dir / "judgments.jsonl",
                                   ecfg.lid_min_confidence, ecfg.lid_min_letters)
        for side in SIDES:
            rate = win_rate([s["score"] for s in scored if s["side"] == side])
            metrics[f"winrate_vs_sft_{side}"] = rate["mean"]
            for part in ("low", "high"):
                metrics[f"winrate_vs_sft_{side}_ci_{part}"] = rate[part]
            metrics[f"winrate_vs_sft_{side}_ties"], metrics[f"winrate_vs_sft_{side}_n"] = rate["ties"], rate["n"]
        details["decided_by_language"] = sum(s["how"] == "language" for s in scored)
    write_metrics(run_dir, run_facts(cfg, method, model_label, run_dir, variant), metrics, details,
                  evaluate_fingerprint(cfg, run_dir, reference_run))
    return metrics


def main(argv: list[str] | None = None) -> int:
    """`python -m clo_lib.evaluate RUN.yaml --run DIR [--model PATH] [--reference DIR] [--method base]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m clo_lib.evaluate", description=main.__doc__)
    parser.add_argument("configs", nargs="+", help="YAML layers, later overriding earlier")
    parser.add_argument("--run", required=True, help="run folder (metrics.json is written there)")
    parser.add_argument("--model", help="model to evaluate (default: <run>/model; a base model for --method base)")
    parser.add_argument("--reference", help="the SFT run folder to judge against")
    parser.add_argument("--method", help="method label for the results table (default: train.method)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(*args.configs, overrides=args.overrides)
        metrics = evaluate_run(cfg, args.run, args.model, args.reference, args.method)
    except (ConfigError, EndpointError, ConnectionError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
