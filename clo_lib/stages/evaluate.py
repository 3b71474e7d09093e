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
    mtbench_ref_nll, fidelity_en@mtbench   English retention on MT-bench (eval.mtbench; clo_lib.stages.mtbench): the
                                     per-token NLL of GPT-4's reference answers, and the share of answers to the 80
                                     first-turn questions in English
    ref_nll_en, ref_nll_tgt          per-token NLL of free-text reference responses, when every prompt row carries
                                     reference_en and reference_tgt (a corpus's held-back validation.jsonl,
                                     data.validation_size): a validation loss on each side for a grid's search
    <metric>@<group>                 fidelity and accuracy per prompt group, when the prompt file names groups (the
                                     toy world: new_phrasing, new_fact), and `@seen` on the run's own first
                                     eval.seen_prompts training records, a sanity check of its training
Language ID (fidelity, judging) looks at an answer's prose only: code blocks, inline code, URLs and bare numbers are
left out (clo_lib.common.langid.prose, the same spans translation protects).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from clo_lib.artifacts.card import write_model_card
from clo_lib.artifacts.corpus import hub_errors, numbered_rows, run_records
from clo_lib.artifacts.provenance import evaluate_fingerprint, transferred_fingerprint
from clo_lib.artifacts.runs import run_facts, write_metrics
from clo_lib.common.cache import JsonlCache, digest
from clo_lib.common.endpoint import ChatEndpoint
from clo_lib.common.errors import CloError, InputError, MissingInputError
from clo_lib.common.languages import SOURCE_LANGUAGE
from clo_lib.common.stats import win_rate
from clo_lib.config.load import load_config
from clo_lib.config.schema import RunConfig
from clo_lib.method.pairs import SIDES
from clo_lib.modeling.logps import reference_nll
from clo_lib.modeling.models import check_model_source, read_manifest
from clo_lib.mt.backends import make_translator
from clo_lib.mt.cache import translation_cache
from clo_lib.mt.records import translate_records
from clo_lib.stages.generate import ANSWER_KEY, decoding_settings, generate_answers, load_for_eval
from clo_lib.stages.mtbench import mtbench_dir, mtbench_metrics
from clo_lib.stages.scores import accuracy, by_group, fidelity, judge_against, reference_judge

# The 805 AlpacaEval instructions (the hub repo's loading script no longer runs in datasets 4+, the JSON does).
ALPACA_EVAL_FILE = "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json"


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def check_prompt_rows(rows: Sequence[dict], source: str) -> list[dict]:
    """`{id, prompt_en, prompt_tgt}` rows, or one clear error naming the first bad row and field."""
    checked = []
    for index, row in enumerate(rows):
        for name in ("prompt_en", "prompt_tgt"):
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{source}: row {index}: field {name!r} is missing or empty; expected the prompt "
                                 "in English (prompt_en) and in the target language (prompt_tgt)")
        checked.append({**row, "id": str(row.get("id", index))})
    return checked


def load_prompts(cfg: RunConfig) -> list[dict]:
    """The evaluation prompts: `eval.prompts` (a JSONL file), or else AlpacaEval translated by the run's translator."""
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


def references_nll(model, tokenizer, cfg: RunConfig, prompts: Sequence[dict]) -> dict[str, float]:
    """ref_nll_en / ref_nll_tgt: the per-token NLL of the prompt rows' free-text reference responses (reference_en,
    reference_tgt: a translated corpus's held-back validation records, clo_lib.stages.translate) given their
    prompt, when every row carries both; nothing otherwise. A validation loss on each side, for a grid's search."""
    if not prompts or not all(row.get("reference_en") and row.get("reference_tgt") for row in prompts):
        return {}
    metrics = {}
    for side in SIDES:
        pairs = [{"prompt": row[f"prompt_{side}"], "response": row[f"reference_{side}"]} for row in prompts]
        metrics[f"ref_nll_{side}"], metrics[f"ref_tokens_{side}"] = reference_nll(model, tokenizer, cfg, pairs,
                                                                                  cfg.eval.batch_size)
    return metrics


def reference_answers(reference_run: str | Path, cfg: RunConfig) -> list[dict]:
    """The SFT run's answers made with this run's decoding settings (its generations.jsonl may hold answers of
    several evaluations); the latest per prompt and side."""
    path = Path(reference_run) / "generations.jsonl"
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist; evaluate the SFT run {reference_run} first")
    wanted = digest([decoding_settings(cfg)], ANSWER_KEY)
    latest = {(r["id"], r["side"]): r for r in JsonlCache(path).rows.values() if r.get("settings") == wanted}
    return list(latest.values())


def seen_prompts(cfg: RunConfig) -> list[dict]:
    """The first `eval.seen_prompts` of the run's own training records, asked as a sanity check (group `seen`):
    a run that cannot answer what it trained on is under-trained, whatever it does on held-out questions."""
    if not cfg.eval.seen_prompts:
        return []

    try:
        records = run_records(cfg)
    except CloError as err:
        print(f"seen-item check skipped: {err}")
        return []
    return [{"id": f"seen-{r['id']}", "group": "seen", "prompt_en": r["prompt_en"], "prompt_tgt": r["prompt_tgt"],
             "answer_en": r["response_en"], "answer_tgt": r["response_tgt"]}
            for r in records[: cfg.eval.seen_prompts]]


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
            raise InputError(f"eval.mc_tasks: lm-eval returned no result for task {task!r}")
        scores = results[task]
        metrics[f"mc_acc:{task}"] = float(scores.get("acc,none", scores.get("acc_norm,none", float("nan"))))
    for side, names in wanted.items():
        if names:
            metrics[f"mc_acc_{side}"] = sum(metrics[f"mc_acc:{t}"] for t in names) / len(names)
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# The stage


def run_evaluate(cfg: RunConfig, out_dir: str | Path, model_path: str | Path | None = None,
                 reference_run: str | Path | None = None, method: str | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, loaded: tuple | None = None,
                 model_label: str | None = None, prompts: list[dict] | None = None,
                 variant: str = "") -> dict[str, Any]:
    """Generate, score and judge one run; write `generations.jsonl`, `judgments.jsonl` and `metrics.json`.

    model_path: the trained weights (default `<out_dir>/model`), or the base model for method `base`.
    reference_run: the SFT run folder of the same model, language and size, for the win rates.
    loaded, prompts: the model and tokenizer, and the prompts, already in memory (the notebook's), so they are not
    loaded twice.
    """
    out_dir = Path(out_dir)
    model_path = Path(model_path) if model_path else out_dir / "model"
    ecfg = cfg.eval
    judge = ecfg.judge if ecfg.judge != "auto" else ("llm" if ecfg.judge_base_url else "none")
    endpoint = None
    if judge == "llm":
        endpoint = ChatEndpoint(ecfg.judge_base_url, ecfg.judge_model, ecfg.judge_api_key_env)
        endpoint.check()  # a missing key fails now, not after an hour of generation
    if ecfg.mtbench:
        mtbench_dir()  # a missing package fails now, before the model loads
    prompts = prompts if prompts is not None else load_prompts(cfg)
    method = method or cfg.train.method
    seen = seen_prompts(cfg) if method != "base" else []
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} is a file; expected the run's folder, where metrics.json goes.")
    if loaded is None:
        is_base = str(model_path) == cfg.model.name_or_path
        check_model_source(str(model_path), "the model to evaluate", cfg.model.gguf_file if is_base else None)
    start = time.perf_counter()
    model, tokenizer = loaded or load_for_eval(cfg, model_path)
    every = generate_answers(model, tokenizer, prompts + seen, cfg, out_dir / "generations.jsonl", progress)
    generations = every[: 2 * len(prompts)]  # the evaluation prompts' answers; the seen items' come after
    metrics: dict[str, Any] = fidelity(generations, cfg.language, ecfg.lid_min_confidence, ecfg.lid_min_letters)
    metrics.update(accuracy(generations, prompts))
    metrics["prompts"] = len(prompts)
    metrics.update(by_group(every, prompts + seen, cfg.language, ecfg.lid_min_confidence, ecfg.lid_min_letters))
    if ecfg.mc_tasks:
        metrics.update(mc_accuracy(model, tokenizer, ecfg.mc_tasks, cfg.language, ecfg.mc_task_dir, ecfg.batch_size,
                                   ecfg.mc_limit))
    metrics.update(references_nll(model, tokenizer, cfg, prompts))
    if ecfg.mtbench:
        metrics.update(mtbench_metrics(model, tokenizer, cfg, out_dir, progress))
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
            scored = judge_against(generations, reference, endpoint, cfg.language, out_dir / "judgments.jsonl",
                                   ecfg.lid_min_confidence, ecfg.lid_min_letters)
        for side in SIDES:
            rate = win_rate([s["score"] for s in scored if s["side"] == side])
            metrics[f"winrate_vs_sft_{side}"] = rate["mean"]
            for part in ("low", "high"):
                metrics[f"winrate_vs_sft_{side}_ci_{part}"] = rate[part]
            metrics[f"winrate_vs_sft_{side}_ties"], metrics[f"winrate_vs_sft_{side}_n"] = rate["ties"], rate["n"]
        details["decided_by_language"] = sum(s["how"] == "language" for s in scored)
    if method != "base" and Path(model_path).parent == out_dir:  # the run's own model (not a trial's validation)
        manifest = read_manifest(model_path) or {}
        write_model_card(out_dir, cfg, metrics, method, manifest.get("base_model") or cfg.model.name_or_path,
                         transferred=transferred_fingerprint(cfg) is not None)
    write_metrics(out_dir, run_facts(cfg, method, model_label, out_dir, variant), metrics, details,
                  evaluate_fingerprint(cfg, model_path.parent if method != "base" else None, reference_run))
    return metrics


def add_arguments(parser) -> None:
    """`clo evaluate RUN.yaml --out DIR [--model PATH] [--reference DIR] [--method base]`: metrics.json in DIR."""
    parser.add_argument("configs", nargs="+", help="YAML layers, later overriding earlier")
    parser.add_argument("--out", "--run", dest="out", required=True,
                        help="run folder (metrics.json is written there)")
    parser.add_argument("--model", help="model to evaluate (default: <run>/model; a base model for --method base)")
    parser.add_argument("--reference", help="the SFT run folder to judge against")
    parser.add_argument("--method", help="method label for the results table (default: train.method)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def command(args) -> int:
    cfg = load_config(*args.configs, overrides=args.overrides)
    print(json.dumps(run_evaluate(cfg, args.out, args.model, args.reference, args.method)))
    return 0
