"""Answers from a model: the model loaded for inference, its decoding settings and identity, and one answer per
prompt and side, cached so judging or scoring again never generates again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from clo_lib.common.cache import JsonlCache, digest
from clo_lib.common.languages import SOURCE_LANGUAGE
from clo_lib.config.schema import RunConfig
from clo_lib.method.pairs import SIDES, format_prompt
from clo_lib.modeling.models import load_model_and_tokenizer

# ---------------------------------------------------------------------------------------------------------------
# Generation


ANSWER_KEY = 24  # hex digits of an answer cache's keys (as long as they have always been)


def load_for_eval(cfg: RunConfig, model_path: str | Path):
    """A trained run's model (any form clo_lib.modeling.models reads: full, trained tensors only, LoRA adapter
    merged into its base) or a base model, for inference."""
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
    return digest([sums, firsts], ANSWER_KEY)


def generate_answers(model, tokenizer, prompts: Sequence[dict], cfg: RunConfig, cache_path: str | Path,
                     progress: bool = True, sides: Sequence[str] = SIDES[::-1],
                     max_new_tokens: int | None = None) -> list[dict]:
    """One answer per prompt and side (target prompts first, then English, as answers files always were; or only
    `sides`): `{id, side, lang, prompt, answer, settings}`,
    cached in `cache_path`. `max_new_tokens` overrides eval.max_new_tokens (MT-bench's answers use their own).

    The cache key covers the prompt's side, language and text, the model (`model_identity`), its prompt format and
    the decoding settings, so judging or scoring again reuses answers, while another model or another decoding
    generates anew (and a prompt left untranslated, the same text on both sides, keeps both answers). Batches are
    grouped by prompt length.
    """
    import torch
    from tqdm.auto import tqdm

    ecfg = cfg.eval
    settings = decoding_settings(cfg, max_new_tokens)
    model_id = model_identity(model)
    # a chat model's prompts are written by its tokenizer's chat template: another template, other answers
    chat_template = [digest([tokenizer.chat_template], ANSWER_KEY)] if cfg.model.prompt_format == "chat" else []
    cache = JsonlCache(cache_path)
    items = []
    for row in prompts:
        for side in sides:
            text, lang = row[f"prompt_{side}"], cfg.language if side == "tgt" else SOURCE_LANGUAGE
            key = digest([side, lang, text, settings, model_id, *chat_template], ANSWER_KEY)
            items.append({"key": key, "id": row["id"], "side": side, "lang": lang, "prompt": text,
                          "settings": digest([settings], ANSWER_KEY)})
    todo = [item for item in items if item["key"] not in cache.rows]
    formatted = {item["key"]: format_prompt(item["prompt"], tokenizer, cfg.model.prompt_format,
                                            cfg.model.prompt_template) for item in todo}
    todo.sort(key=lambda item: len(formatted[item["key"]]))
    bar = tqdm(total=len(todo), unit="answer", desc="generate", disable=not progress or not todo)
    torch.manual_seed(cfg.seed)
    for begin in range(0, len(todo), ecfg.batch_size):
        batch = todo[begin: begin + ecfg.batch_size]
        started = time.perf_counter()
        answers = continue_texts(model, tokenizer, [formatted[item["key"]] for item in batch], cfg,
                                 settings["max_new_tokens"])
        share = round((time.perf_counter() - started) / len(batch), 4)  # each answer's share of its batch's time
        cache.append([{**item, "answer": answer, "seconds": share} for item, answer in zip(batch, answers)])
        bar.update(len(batch))
    bar.close()
    return [cache.rows[item["key"]] for item in items]


def continue_texts(model, tokenizer, texts: Sequence[str], cfg: RunConfig, max_new_tokens: int,
                   streamer=None) -> list[str]:
    """The model's continuation of each formatted prompt (left-padded batch), decoded and stripped: greedy, or
    sampled at eval.temperature. The one generate call behind the evaluation's answers and `clo chat`."""
    import torch

    # a chat template writes the special tokens itself; the base-model template gets the tokenizer's own
    inputs = tokenizer(list(texts), return_tensors="pt", padding=True,
                       add_special_tokens=cfg.model.prompt_format != "chat").to(model.device)
    temperature = cfg.eval.temperature
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                streamer=streamer, **sampling)
    return [text.strip() for text in
            tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
