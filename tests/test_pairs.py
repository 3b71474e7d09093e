"""Pairing, nesting, baselines' rows, prompt formatting and response-only labels."""

import pytest
from transformers import AutoTokenizer

from clo_lib.method.pairs import (
    build_clo_pairs,
    build_sft_rows,
    encode_response,
    format_prompt,
    group_by_pair,
    nested_subset,
    rows_for_method,
)


def parallel_records(n=5, lang="sw"):
    return [{"id": f"ex{i}", "lang": lang, "prompt_en": f"Question {i}?", "response_en": f"Answer {i}.",
             "prompt_tgt": f"Swali {i}?", "response_tgt": f"Jibu {i}."} for i in range(n)]


def test_two_rows_per_record_differing_only_in_language():
    rows = build_clo_pairs(parallel_records(3))
    assert len(rows) == 6
    en, tgt = rows[0], rows[1]
    assert en == {"prompt": "Question 0?", "chosen": "Answer 0.", "rejected": "Jibu 0.", "is_target": False,
                  "pair_id": "ex0", "lang": "en"}
    assert tgt == {"prompt": "Swali 0?", "chosen": "Jibu 0.", "rejected": "Answer 0.", "is_target": True,
                   "pair_id": "ex0", "lang": "sw"}
    for row in rows:  # the two responses of each row are the two translations of one answer
        assert {row["chosen"], row["rejected"]} in ({f"Answer {i}.", f"Jibu {i}."} for i in range(3))


def test_baseline_rows():
    records = parallel_records(4)
    assert [r["lang"] for r in build_sft_rows(records)] == ["en", "sw"] * 4
    assert [r["response"] for r in rows_for_method("sft_eng", records)] == [f"Answer {i}." for i in range(4)]
    assert [r["prompt"] for r in rows_for_method("sft_tgt", records)] == [f"Swali {i}?" for i in range(4)]
    assert rows_for_method("sft_dpo", records) == rows_for_method("clo", records)
    with pytest.raises(ValueError, match="expected one of"):
        rows_for_method("dpo", records)


def test_bad_record_is_named():
    records = parallel_records(3)
    records[2]["response_tgt"] = "  "
    with pytest.raises(ValueError, match=r"parallel record 2 \(id ex2\): field 'response_tgt' is missing or empty"):
        build_clo_pairs(records)


def test_nested_subsets_are_nested_and_seeded():
    records = list(range(100))
    sizes = [5, 10, 20, 40, 80]
    for seed in (0, 1):
        subsets = [nested_subset(records, s, seed) for s in sizes]
        for small, large in zip(subsets, subsets[1:]):
            assert large[: len(small)] == small
        assert nested_subset(records, 20, seed) == subsets[2]  # deterministic
        assert len(set(subsets[-1])) == 80
    assert nested_subset(records, 20, 0) != nested_subset(records, 20, 1)
    assert nested_subset(records, 20, 0) != records[:20]  # a permutation, not the head of the file
    with pytest.raises(ValueError, match="expected 1 to 100"):
        nested_subset(records, 101, 0)


def test_group_by_pair_keeps_both_directions_together():
    groups = group_by_pair(build_clo_pairs(parallel_records(4)))
    assert len(groups) == 4
    assert all([r["is_target"] for r in g] == [False, True] and len({r["pair_id"] for r in g}) == 1 for g in groups)


def test_prompt_formats(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert format_prompt("Hi {x}?", tokenizer, "template", "Q: {prompt}\nA:") == "Q: Hi {x}?\nA:"
    assert format_prompt("Hi", tokenizer, "chat") == "<|user|>\nHi</s>\n<|assistant|>\n"


def test_labels_cover_exactly_the_response_and_eos(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    prompt = format_prompt("What is the capital of France?", tokenizer)
    enc = encode_response(tokenizer, prompt, "The capital of France is Paris.", max_length=256)
    response_ids = [i for i in enc["labels"] if i != -100]
    assert response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response_ids[:-1]) == "The capital of France is Paris."
    n_prompt = enc["labels"].count(-100)
    assert tokenizer.decode(enc["input_ids"][:n_prompt]) == prompt
    short = encode_response(tokenizer, prompt, "The capital of France is Paris.", max_length=n_prompt + 3)
    assert len(short["input_ids"]) == n_prompt + 3 and short["labels"].count(-100) == n_prompt
