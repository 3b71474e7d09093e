"""From a parallel corpus to the training rows of each method (PAPER.md, "The data").

A parallel record is `{id, lang, prompt_en, response_en, prompt_tgt, response_tgt}`. CLO turns each into two
preference rows whose responses differ only in language:

    English input x_en: chosen y_en, rejected y_tgt      (keep answering English in English)
    Target input x_tgt: chosen y_tgt, rejected y_en      (answer the target language in the target language)

The baselines use the same records as plain SFT rows: sft (English + target), sft_eng, sft_tgt. sft_dpo is SFT
followed by DPO on the CLO pairs (METHOD_STAGES holds this table, the only place it is written). Both rows of one
record share a `pair_id`, and the trainer keeps them in one batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from clo_lib.common.errors import InputError

PARALLEL_FIELDS = ("id", "lang", "prompt_en", "response_en", "prompt_tgt", "response_tgt")

# The English/target axis has one vocabulary everywhere in the kit: a row's *side* is the language of its prompt,
# "en" or "tgt" (as in the record fields prompt_en / prompt_tgt, the metrics' _en / _tgt suffixes and the train
# log's en/ and tgt/ prefixes). SFT methods pick the sides that get rows; CLO's loss picks the sides that get NLL
# (train.nll_sides) and DPO (train.dpo_sides).
SIDES = ("en", "tgt")

# The instruction template base models are prompted with (assumed: the paper does not give one); model.prompt_template.
DEFAULT_PROMPT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


def _check_sides(sides: Sequence[str], name: str) -> None:
    if isinstance(sides, str) or any(side not in SIDES for side in sides):
        raise InputError(f"{name} = {sides!r}; expected a list of sides out of en, tgt")


def check_parallel(parallel: Sequence[dict]) -> None:
    """Raise one clear ValueError naming the first record and field that is missing or empty."""
    for index, record in enumerate(parallel):
        for name in PARALLEL_FIELDS:
            value = record.get(name) if isinstance(record, dict) else None
            if value is None or (isinstance(value, str) and not value.strip()):
                raise InputError(
                    f"parallel record {index} (id {record.get('id') if isinstance(record, dict) else '?'}): "
                    f"field {name!r} is missing or empty; expected a non-empty string"
                )


def build_clo_pairs(parallel: Sequence[dict]) -> list[dict[str, Any]]:
    """Two preference rows per parallel record, in TRL's format plus `is_target`, `pair_id` and `lang`.

    `lang` is the language of the row's prompt; `is_target` is True for the target-language-input row.
    """
    check_parallel(parallel)
    rows = []
    for record in parallel:
        rows.append({"prompt": record["prompt_en"], "chosen": record["response_en"],
                     "rejected": record["response_tgt"], "is_target": False, "pair_id": record["id"], "lang": "en"})
        rows.append({"prompt": record["prompt_tgt"], "chosen": record["response_tgt"],
                     "rejected": record["response_en"], "is_target": True, "pair_id": record["id"],
                     "lang": record["lang"]})
    return rows


def build_sft_rows(parallel: Sequence[dict], sides: Sequence[str] = SIDES) -> list[dict[str, Any]]:
    """Prompt/response rows of the given prompt sides: ("en", "tgt") is the SFT baseline, ("en",) SFT-eng and
    ("tgt",) SFT-tgt."""
    _check_sides(sides, "sides")
    check_parallel(parallel)
    rows = []
    for record in parallel:
        for side in SIDES:  # English row first, as in the preference pairs
            if side in sides:
                rows.append({"prompt": record[f"prompt_{side}"], "response": record[f"response_{side}"],
                             "lang": "en" if side == "en" else record["lang"], "pair_id": record["id"]})
    return rows


@dataclass(frozen=True)
class TrainingStage:
    """One training stage of a method: SFT on the rows of some prompt sides, or the CLO preference pairs."""

    kind: str  # "sft" or "preference"
    sides: tuple[str, ...] = SIDES  # for "sft": whose prompts get rows

    def rows(self, parallel: Sequence[dict]) -> list[dict[str, Any]]:
        return build_sft_rows(parallel, self.sides) if self.kind == "sft" else build_clo_pairs(parallel)


# What each method trains on, stage by stage (PAPER.md, "Experimental grid"). sft_dpo is SFT, then the same loss
# as clo with λ = 0 on the same pairs; every other method is one stage.
METHOD_STAGES: dict[str, tuple[TrainingStage, ...]] = {
    "sft": (TrainingStage("sft", ("en", "tgt")),),
    "sft_eng": (TrainingStage("sft", ("en",)),),
    "sft_tgt": (TrainingStage("sft", ("tgt",)),),
    "sft_dpo": (TrainingStage("sft", ("en", "tgt")), TrainingStage("preference")),
    "clo": (TrainingStage("preference"),),
}
PREFERENCE_METHODS = tuple(m for m, stages in METHOD_STAGES.items() if stages[-1].kind == "preference")


def rows_for_method(method: str, parallel: Sequence[dict]) -> list[dict[str, Any]]:
    """The rows of the method's last (defining) stage: SFT rows, or CLO preference pairs for clo and sft_dpo."""
    if method not in METHOD_STAGES:
        raise InputError(f"method = {method!r}; expected one of {', '.join(METHOD_STAGES)}")
    return METHOD_STAGES[method][-1].rows(parallel)


def nested_subset(records: Sequence[Any], size: int, seed: int = 0) -> list[Any]:
    """The first `size` records of one seeded permutation: for a fixed seed, the 200 set lies inside the 400 set."""
    if size < 1 or size > len(records):
        raise InputError(f"size = {size}; expected 1 to {len(records)} (the number of records available)")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in order[:size]]


def group_by_pair(rows: Iterable[dict]) -> list[list[dict]]:
    """Rows grouped by `pair_id`, in first-seen order: one group per source example, the unit a batch is built of."""
    groups: dict[Any, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["pair_id"], []).append(row)
    return list(groups.values())


# ---------------------------------------------------------------------------------------------------------------
# Prompt formatting and tokenization: the loss only ever sees response tokens


def format_prompt(prompt: str, tokenizer: Any, prompt_format: str = "template",
                  template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """The text the model sees before its answer: a base-model instruction template, or the chat template."""
    if prompt_format == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    # str.replace, not str.format: prompts and templates may hold other braces (code, JSON).
    return template.replace("{prompt}", prompt)


def encode_response(tokenizer: Any, prompt_text: str, response: str, max_length: int,
                    chat: bool = False) -> dict[str, list[int]]:
    """Token ids of prompt + response + EOS, with labels −100 on the prompt: the loss sees response tokens only.

    Prompt and response are tokenized separately and concatenated, so the boundary is exact. Too-long examples
    lose the end of the response first; a prompt longer than the limit keeps its last half-limit tokens.
    """
    # A chat template already writes the BOS token into the text; a base template relies on the tokenizer's.
    prompt_ids = tokenizer(prompt_text, add_special_tokens=not chat)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) >= max_length:
        prompt_ids = prompt_ids[-(max_length // 2):]
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return {"input_ids": prompt_ids + response_ids, "labels": [-100] * len(prompt_ids) + response_ids}
