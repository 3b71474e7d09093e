"""English SFT sources: oasst1 as the paper used it, Alpaca files, named columns; bad rows reported, never kept."""

import json

import pytest

from clo_lib.config import load_config
from clo_lib.data import english_from_rows, load_english, oasst1_conversations, read_rows, training_records


def oasst_messages():
    def msg(mid, parent, role, text, lang="en", rank=None, deleted=False):
        return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "lang": lang, "rank": rank,
                "deleted": deleted, "message_tree_id": mid if parent is None else "t"}

    return [
        msg("p1", None, "prompter", "What is CLO?"),
        msg("a1", "p1", "assistant", "A second-best answer.", rank=1),
        msg("a2", "p1", "assistant", "Cross-lingual optimization.", rank=0),
        msg("u2", "a2", "prompter", "A second user turn, not used."),
        msg("p2", None, "prompter", "Wie geht es?", lang="de"),  # not English
        msg("a3", "p2", "assistant", "Gut.", lang="de", rank=0),
        msg("p3", None, "prompter", "Unranked prompt"),  # no rank-0 reply: not top-ranked
        msg("a4", "p3", "assistant", "Some reply", rank=None),
        msg("p4", None, "prompter", "   "),  # empty prompt with a rank-0 reply: reported
        msg("a5", "p4", "assistant", "Reply to nothing", rank=0),
        msg("p5", None, "prompter", "Name a colour."),
        msg("a6", "p5", "assistant", "Blue.", rank=0),
    ]


def test_oasst1_takes_first_turn_and_rank0_reply_of_english_trees():
    loaded = oasst1_conversations(oasst_messages())
    assert [(r["prompt_en"], r["response_en"]) for r in loaded.records] == [
        ("What is CLO?", "Cross-lingual optimization."), ("Name a colour.", "Blue.")]
    assert loaded.skipped == [(8, "text missing or empty")]


def test_alpaca_input_joins_the_instruction_and_bad_rows_are_reported(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([
        {"instruction": "Translate", "input": "hello", "output": "hola"},
        {"instruction": "", "input": "", "output": "orphan"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "No output"},
    ]))
    cfg = load_config({"language": "sw", "data": {"source": "alpaca", "path": str(path)}})
    loaded = load_english(cfg.data)
    assert [r["prompt_en"] for r in loaded.records] == ["Translate\n\nhello", "Say hi"]
    assert loaded.skipped == [(1, "instruction missing or empty"), (3, "output missing or empty")]
    assert "skipped 2: row 1" in loaded.summary()


def test_jsonl_with_named_columns_keeps_ids(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"id": 7, "q": "Why?", "a": "Because."}\n\n{"id": 8, "q": "How?", "a": null}\n')
    cfg = load_config({"language": "de", "data": {"source": "jsonl", "path": str(path), "instruction_field": "q",
                                                  "response_field": "a"}})
    loaded = load_english(cfg.data)
    assert loaded.records == [{"id": "7", "prompt_en": "Why?", "response_en": "Because."}]
    assert loaded.skipped == [(1, "a missing or empty")]


def test_unreadable_files_give_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path = .* does not exist"):
        read_rows(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON object"):
        read_rows(bad)


def test_toy_source_is_the_toy_worlds_sft_pool():
    from clo_lib import toyworld

    cfg = load_config({"language": "sw", "data": {"source": "toy"}})
    records = load_english(cfg.data).records
    assert len(records) == len(toyworld.split_items()[0]) and set(records[0]) == {"id", "prompt_en", "response_en"}


def test_training_records_drop_flagged_before_the_cut_and_stay_nested():
    corpus = [{"id": i, "flags": ["response:empty"] if i % 5 == 0 else []} for i in range(20)]
    small, large = training_records(corpus, 4), training_records(corpus, 8)
    assert [r["id"] for r in small] == [1, 2, 3, 4] and large[:4] == small
    assert len(training_records(corpus, 8, keep_flagged=True)) == 8 and training_records(corpus, 1, True)[0]["id"] == 0
    with pytest.warns(UserWarning, match="16 usable records"):
        assert len(training_records(corpus, 18)) == 16
    assert english_from_rows([], "i", "o").records == []


def test_hub_failures_become_one_sentence(monkeypatch):
    import datasets

    from clo_lib.data import HubUnreachableError

    def offline(*args, **kwargs):
        raise RuntimeError("Name or service not known\n  (a long traceback follows)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    cfg = load_config({"language": "sw", "data": {"source": "hf", "path": "someone/some-dataset"}})
    with pytest.raises(HubUnreachableError, match=r"could not load dataset 'someone/some-dataset' from the Hugging "
                                                  r"Face hub \(Name or service not known\); check the name"):
        load_english(cfg.data)


def test_appending_after_a_torn_line_keeps_the_new_rows(tmp_path):
    from clo_lib.evaluate import JsonlCache
    from clo_lib.io import append_jsonl

    path = tmp_path / "cache.jsonl"
    append_jsonl(path, [{"key": "a", "v": 1}])
    with open(path, "a") as handle:
        handle.write('{"key": "b", "v"')  # a kill in the middle of a write
    JsonlCache(path).append([{"key": "c", "v": 3}])
    assert {k: r["v"] for k, r in JsonlCache(path).rows.items()} == {"a": 1, "c": 3}
