"""Translating records: chunks through the cache and the translator, records part by part (separate mode) or
jointly (joint mode: prompt and response in one input, split back at the markers, with the part-by-part fallback).
"""


from __future__ import annotations

import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from clo_lib.common.languages import SOURCE_LANGUAGE
from clo_lib.config.schema import TranslationConfig
from clo_lib.method.joint import compose, goes_jointly, pack, split
from clo_lib.mt.backends import Translator, catalyst_text
from clo_lib.mt.cache import TranslationCache
from clo_lib.mt.flags import quality_flags
from clo_lib.mt.segment import join, segment


@dataclass
class JointResult:
    """Per record, the translation of each of its chunks, whether any of its groups went part by part, and which
    chunks did (`parted`); the joint inputs sent and how many of them split."""

    translations: list[dict[str, str]]
    fallback: list[bool]
    inputs: int
    split: int
    parted: list[set[str]]


def translate_jointly(chunk_lists: Sequence[tuple[list[str], list[str]]], cfg: TranslationConfig,
                      count_tokens: Callable[[str], int],
                      translate: Callable[[list[str], bool], dict[str, str]],
                      was_cut: Callable[[str], bool] = lambda text: False) -> JointResult:
    """Translate each record's (prompt chunks, response chunks) jointly.

    translate: (texts, joint) -> {text: translation}, the stage's cached, batched translator; called once with every
    joint input (joint=True), then once with the chunks of the groups that go part by part (joint=False: exactly
    as separate mode translates them). was_cut: whether a text's output reached the translator's max_new_tokens.
    A group goes part by part when it cannot go jointly (goes_jointly), when its output was cut, or when the
    output cannot be split back (split); its record is marked joint_fallback.
    """
    template, catalyst = cfg.indicator, catalyst_text(cfg)
    groups = [pack(prompt, response, count_tokens, cfg.max_input_tokens, template, catalyst)
              for prompt, response in chunk_lists]
    joint_ok = {tuple(group): goes_jointly(group, count_tokens, cfg.max_input_tokens, template, catalyst)
                for record in groups for group in record}
    inputs = {compose(group, template, catalyst) for record in groups for group in record if joint_ok[tuple(group)]}
    joint = translate(sorted(inputs), True)
    translations: list[dict[str, str]] = [{} for _ in groups]
    fallback = [False] * len(groups)
    undone: list[tuple[int, list[str]]] = []
    split_count = 0
    for index, record in enumerate(groups):
        for group in record:
            text = compose(group, template, catalyst)
            parts = split(joint[text], len(group), template, catalyst is not None) \
                if joint_ok[tuple(group)] and not was_cut(text) else None
            if parts is None:
                undone.append((index, group))
                fallback[index] = True
            else:
                split_count += 1
                translations[index].update(zip(group, parts))
    if undone:
        separate = translate(sorted({chunk for _, group in undone for chunk in group}), False)
        for index, group in undone:
            translations[index].update({chunk: separate[chunk] for chunk in group})
    sent = sum(joint_ok[tuple(group)] for record in groups for group in record)
    parted = [{chunk for i, group in undone if i == index for chunk in group} for index in range(len(groups))]
    return JointResult(translations, fallback, sent, split_count, parted)





def translate_chunks(chunks: Sequence[str], translator: Translator, cache: TranslationCache, src: str, tgt: str,
                     batch_size: int, progress: bool = True) -> dict[str, Any]:
    """Translate every distinct chunk not yet in the cache, longest first, `batch_size` at a time.

    Sorting by length puts similar lengths in one batch, so little compute goes to padding. Returns timing stats.
    """
    from tqdm.auto import tqdm

    todo = sorted({c for c in chunks if cache.get(c) is None}, key=lambda c: (-translator.count_tokens(c), c))
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="chunk", desc=f"translate {src}->{tgt}", disable=not progress or not todo)
    for begin in range(0, len(todo), batch_size):
        batch = todo[begin: begin + batch_size]
        cache.put_many(list(zip(batch, translator.translate_batch(batch, src, tgt))), translator.cut)
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - start
    return {"chunks": len(set(chunks)), "translated": len(todo), "cached": len(set(chunks)) - len(todo),
            "seconds": round(seconds, 3), "chunks_per_s": round(len(todo) / seconds, 2) if todo and seconds else None}


# ---------------------------------------------------------------------------------------------------------------
# The stage


def translate_records(records: Sequence[dict], translator: Translator, cache: TranslationCache, tgt: str,
                      cfg: TranslationConfig, progress: bool = True) -> tuple[list[dict], dict[str, Any]]:
    """Parallel records `{id, lang, prompt_en, response_en, prompt_tgt, response_tgt, flags}` and timing stats."""
    src = SOURCE_LANGUAGE
    token_counts: dict[str, int] = {}

    def count(text: str) -> int:  # splitting asks for the same pieces more than once
        if text not in token_counts:
            token_counts[text] = translator.count_tokens(text)
        return token_counts[text]

    pieces = {}
    for record in records:
        for name in ("prompt_en", "response_en"):
            pieces[record[name]] = segment(record[name], count, cfg.max_input_tokens)
    stats: Counter = Counter()

    def translated(texts: list[str], joint_inputs: bool = False) -> dict[str, str]:  # cached, batched, longest first
        with (nullcontext() if joint_inputs else translator.separately()):
            took = translate_chunks(texts, translator, cache, src, tgt, cfg.batch_size, progress)
        stats.update({key: took[key] for key in ("chunks", "translated", "cached", "seconds")})
        return {text: cache.entries[cache.key(text)] for text in set(texts)}

    def chunks_of(text: str) -> list[str]:
        return [piece for to_translate, piece in pieces[text] if to_translate]

    if cfg.mode == "joint":
        result = translate_jointly([(chunks_of(r["prompt_en"]), chunks_of(r["response_en"])) for r in records],
                                   cfg, count, translated, cache.was_cut)
        done_per_record, fallback, parted = result.translations, result.fallback, result.parted
        stats.update({"joint_inputs": result.inputs, "joint_split": result.split})
    else:
        done = translated([chunk for record in records for name in ("prompt_en", "response_en")
                           for chunk in chunks_of(record[name])])
        done_per_record, fallback = [done] * len(records), [None] * len(records)
        parted = [None] * len(records)  # every chunk on its own
    parallel = []
    for record, done, fell_back, own in zip(records, done_per_record, fallback, parted):
        prompt_tgt, response_tgt = join(pieces[record["prompt_en"]], done), join(pieces[record["response_en"]], done)
        flags = []
        for side, source, translation in (("prompt", record["prompt_en"], prompt_tgt),
                                          ("response", record["response_en"], response_tgt)):
            found = quality_flags(source, translation, tgt, cfg.max_length_ratio, cfg.lid_min_confidence,
                                  lid_min_letters=cfg.lid_min_letters)
            # a chunk translated on its own whose output stopped at the limit: its text is incomplete
            if any(cache.was_cut(chunk) for chunk in chunks_of(source) if own is None or chunk in own):
                found.append("truncated")
            flags += [f"{side}:{flag}" for flag in found]
        parallel.append({"id": record["id"], "lang": tgt, "prompt_en": record["prompt_en"],
                         "response_en": record["response_en"], "prompt_tgt": prompt_tgt,
                         "response_tgt": response_tgt, "flags": flags})
        if fell_back is not None:  # joint mode: translated part by part because the joint output did not split
            parallel[-1]["joint_fallback"] = fell_back
    return parallel, dict(stats)
