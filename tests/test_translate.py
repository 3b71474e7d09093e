"""Translation stage: code maps, splitting, the HF / LLM / toy backends, the cache, resume, flags, outputs."""

import dataclasses
import json
import random
import subprocess
import sys

import pytest
from datasets import load_from_disk

from clo_lib.common import endpoint as common_endpoint
from clo_lib.common import languages
from clo_lib.common.io import read_jsonl
from clo_lib.config.load import load_config
from clo_lib.config.schema import ConfigError
from clo_lib.mt import backends, codes
from clo_lib.mt.cache import TranslationCache
from clo_lib.mt.codes import UnsupportedLanguageError, language_code, model_family
from clo_lib.mt.flags import quality_flags
from clo_lib.mt.records import translate_records
from clo_lib.mt.segment import segment
from clo_lib.mt.translator import Translator
from clo_lib.stages.translate import run_translate
from clo_lib.toy import translator as toy_translator
from clo_lib.toy import world


def words(text):
    return len(text.split())


# --- language codes and model families ---------------------------------------------------------------------------


def test_language_codes_per_model_family():
    assert [language_code("m2m100", c) for c in ("zh", "de", "ko", "id", "sw", "yo")] == [
        "zh", "de", "ko", "id", "sw", "yo"]
    assert [language_code("nllb", c) for c in ("en", "zh", "sw", "yo")] == ["eng_Latn", "zho_Hans", "swh_Latn",
                                                                           "yor_Latn"]
    assert language_code("madlad", "ko") == "ko" and language_code("marian", "de") == "de"
    assert codes.model_for_pair("Helsinki-NLP/opus-mt-{src}-{tgt}", "en", "sw") == "Helsinki-NLP/opus-mt-en-sw"


def test_unsupported_language_is_a_clear_error(monkeypatch):
    row = dataclasses.replace(languages.LANGUAGES["yo"], m2m100=None)
    monkeypatch.setitem(languages.LANGUAGES, "yo", row)
    with pytest.raises(UnsupportedLanguageError, match=r"Yoruba \(yo\) is not supported by m2m100"):
        language_code("m2m100", "yo")


@pytest.mark.parametrize("name,family", [("facebook/m2m100_1.2B", "m2m100"), ("facebook/nllb-200-distilled-600M",
                                         "nllb"), ("google/madlad400-3b-mt", "madlad"),
                                         ("Helsinki-NLP/opus-mt-en-de", "marian")])
def test_model_family_from_hub_ids(name, family):
    assert model_family(name) == family


def test_model_family_from_local_folders_and_unknown_names(tiny_model_dir):
    assert model_family(str(tiny_model_dir("m2m100"))) == "m2m100"
    assert model_family(str(tiny_model_dir("nllb"))) == "nllb"
    assert model_family(str(tiny_model_dir("marian"))) == "marian"
    with pytest.raises(ConfigError, match="translation.model = 'acme/unknown': cannot tell its family"):
        model_family("acme/unknown")


def test_bad_pairs_fail_before_any_data_or_model_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr("clo_lib.stages.translate.load_english", lambda cfg: pytest.fail("data was loaded"))
    cfg = load_config({"preset": "toy", "language": "ar", "output_dir": str(tmp_path)})
    with pytest.raises(UnsupportedLanguageError, match=r"Arabic \(ar\) is not in the toy world"):
        run_translate(cfg)
    cfg = load_config({"language": "sw", "output_dir": str(tmp_path), "translation": {"model": "acme/unknown"}})
    with pytest.raises(ConfigError, match="cannot tell its family"):
        run_translate(cfg)
    assert not (tmp_path / "data").exists()


# --- splitting and joining ---------------------------------------------------------------------------------------

TEXTS = [
    "Plain sentence.",
    "First sentence is here. Second one follows! A third? Yes, and it goes on for a while longer than the rest.",
    "Steps:\n1. Open https://example.org/a?b=1 in a browser.\n2. Run `pip install clo-kit` then wait 30 seconds.\n",
    "Code:\n```python\nfor i in range(3):\n    print(i)\n```\nDone.  \n\n- item one\n* item two\n> quoted text",
    "   leading and trailing spaces   ",
    "12345",
    "",
    "中文句子。第二句！",
]


@pytest.mark.parametrize("max_tokens", [2, 5, 200])
def test_segments_join_back_exactly_and_respect_the_limit(max_tokens):
    for text in TEXTS:
        pieces = segment(text, words, max_tokens)
        assert "".join(piece for _, piece in pieces) == text
        for to_translate, piece in pieces:
            if to_translate:
                assert piece == piece.strip() and piece
                assert words(piece) <= max_tokens or words(piece) == 1


def test_code_urls_and_layout_pass_through_untouched(tmp_path):
    class Upper(Translator):
        backend = "upper"

        def translate_batch(self, texts, src, tgt):
            return [t.upper() for t in texts]

    record = {"id": 0, "prompt_en": TEXTS[2], "response_en": TEXTS[3]}
    cfg = load_config({"language": "sw"}).translation
    [row], _ = translate_records([record], Upper("u"), TranslationCache(tmp_path, "upper", "u", "en", "sw"), "sw", cfg,
                                 progress=False)
    out = row["prompt_tgt"] + row["response_tgt"]
    code_block = "```python\nfor i in range(3):\n    print(i)\n```"
    for kept in ("https://example.org/a?b=1", "`pip install clo-kit`", code_block, "\n1. ", "\n2. ", "\n- ", "\n* ",
                 "\n> ", "30"):
        assert kept in out
    assert "OPEN" in out and "QUOTED TEXT" in out and "DONE." in out


def test_long_lines_are_cut_at_sentence_ends_first():
    pieces = segment(TEXTS[1], words, 8)
    chunks = [p for t, p in pieces if t]
    assert chunks[:2] == ["First sentence is here. Second one follows!", "A third?"]
    assert all(words(c) <= 8 for c in chunks)


# --- flags -------------------------------------------------------------------------------------------------------


def test_quality_flags_each_fire_on_their_case():
    src = "The quick brown fox jumps over the lazy dog near the river bank."
    good = "Mbweha mwepesi wa kahawia anaruka juu ya mbwa mvivu karibu na ukingo wa mto."
    assert quality_flags(src, good, "sw") == []
    assert quality_flags(src, "   ", "sw") == ["empty"]
    assert "too_short" in quality_flags(src, "Mbweha.", "sw")
    assert "too_long" in quality_flags(src, good * 4, "sw")
    assert "wrong_language" in quality_flags(src, "The quick brown fox jumps over the lazy dog by the river.", "sw")
    loop = "Mbweha anaruka juu ya mbwa " * 6
    assert "ngram_loop" in quality_flags(src, loop, "sw")
    assert "numbers_changed" in quality_flags("I have 3 apples and 12 pears today.", "Nina tufaha 3 na pea 13 leo.",
                                              "sw")
    # Chinese is about a third as long as English in characters: that is not "too short"
    assert "too_short" not in quality_flags(src, "敏捷的棕色狐狸跳过了河岸边懒惰的狗。", "zh")


# --- the stage end to end on tiny local models -------------------------------------------------------------------


def english_file(tmp_path, n=6):
    path = tmp_path / "english.jsonl"
    rows = [{"id": i, "instruction": f"Question number {i}: how do birds fly?",
             "output": f"Birds fly with wings. See https://birds.example/{i} for more."} for i in range(n)]
    rows.append({"id": "bad", "instruction": "", "output": "x"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def hf_config(tmp_path, model_dir, **translation):
    return load_config({
        "language": "sw", "output_dir": str(tmp_path / "out"),
        # a random model's translations are all flagged: keep them, or the stage would refuse a short corpus
        "data": {"source": "jsonl", "path": str(english_file(tmp_path)), "size": 6, "keep_flagged": True},
        "translation": {"backend": "hf", "model": str(model_dir), "num_beams": 2, "max_new_tokens": 8,
                        "batch_size": 4, **translation},
    })


@pytest.mark.parametrize("arch", ["m2m100", "marian"])
def test_hf_backend_writes_the_corpus_and_a_rerun_translates_nothing(tmp_path, tiny_model_dir, arch, monkeypatch):
    cfg = hf_config(tmp_path, tiny_model_dir(arch))
    report = run_translate(cfg, progress=False)
    out = tmp_path / "out" / "data" / "sw"
    rows = list(read_jsonl(out / "parallel.jsonl"))
    assert len(rows) == report["records"] == 6
    assert report["skipped_source_rows"] == [[6, "instruction missing or empty"]]
    assert set(rows[0]) == {"id", "lang", "prompt_en", "response_en", "prompt_tgt", "response_tgt", "flags"}
    assert all("__sw__" not in r["response_tgt"] for r in rows)
    # URLs never reach the model: each survives verbatim in the joined translation
    assert all(f"https://birds.example/{r['id']}" in r["response_tgt"] for r in rows)
    assert load_from_disk(str(out / "dataset")).to_list() == rows
    assert report["translated"] > 0 and (out / "report.md").read_text().startswith("# Translation into Swahili")

    def no_calls(self, texts, src, tgt):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(backends.HFTranslator, "translate_batch", no_calls)
    again = run_translate(cfg, progress=False)
    assert again["translated"] == 0 and again["cached"] == report["chunks"]
    assert list(read_jsonl(out / "parallel.jsonl")) == rows


def test_nllb_uses_flores_codes_for_source_and_target(tiny_model_dir):
    translator = backends.HFTranslator(str(tiny_model_dir("nllb")), "en", "sw", num_beams=1, max_new_tokens=4)
    assert translator.family == "nllb" and translator.tokenizer.src_lang == "eng_Latn"
    assert translator.generate_kwargs["forced_bos_token_id"] == translator.tokenizer.convert_tokens_to_ids("swh_Latn")
    assert translator.tokenizer("Hello.")["input_ids"][0] == translator.tokenizer.convert_tokens_to_ids("eng_Latn")
    assert len(translator.translate_batch(["Hello world.", "Good night."], "en", "sw")) == 2


def test_m2m100_forces_the_target_language_token(tiny_model_dir):
    translator = backends.HFTranslator(str(tiny_model_dir("m2m100")), "en", "yo", num_beams=1, max_new_tokens=4)
    assert translator.generate_kwargs["forced_bos_token_id"] == translator.tokenizer.convert_tokens_to_ids("__yo__")
    assert translator.tokenizer.src_lang == "en"
    assert translator.device == "cpu" and str(translator.dtype) == "torch.float32"


def toy_config(tmp_path, size=40, **translation):
    return load_config({"preset": "toy", "language": "ko", "output_dir": str(tmp_path),
                        "data": {"size": size}, "translation": {"batch_size": 4, **translation}})


def test_toy_backend_translates_exactly(tmp_path):

    report = run_translate(toy_config(tmp_path), progress=False)
    rows = list(read_jsonl(tmp_path / "data" / "ko" / "parallel.jsonl"))
    assert report["flagged_records"] == 0 and len(rows) == 40
    for row in rows:
        assert row["prompt_tgt"] == world.translate(row["prompt_en"], "en", "ko")
        assert row["response_tgt"] == world.translate(row["response_en"], "en", "ko")


def test_a_killed_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    calls = []
    real = toy_translator.ToyTranslator.translate_batch

    def dies_on_third_batch(self, texts, src, tgt):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, texts, src, tgt)

    monkeypatch.setattr(toy_translator.ToyTranslator, "translate_batch", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run_translate(toy_config(tmp_path), progress=False)
    assert not (tmp_path / "data" / "ko" / "parallel.jsonl").exists()
    monkeypatch.setattr(toy_translator.ToyTranslator, "translate_batch", real)
    report = run_translate(toy_config(tmp_path), progress=False)
    assert report["cached"] == 8 and report["translated"] == report["chunks"] - 8


def test_corrupt_cache_lines_are_detected_and_redone(tmp_path):
    cfg = toy_config(tmp_path, size=10)
    first = run_translate(cfg, progress=False)
    rows = list(read_jsonl(tmp_path / "data" / "ko" / "parallel.jsonl"))
    cache_file = tmp_path / "cache" / "translations" / "toy__toy__en-ko.jsonl"
    lines = cache_file.read_text().splitlines()
    tampered = json.loads(lines[0])
    tampered["out"] = "garbage"  # checksum no longer matches
    lines[0] = json.dumps(tampered, ensure_ascii=False)
    cache_file.write_text("\n".join(lines) + "\n" + lines[1][: len(lines[1]) // 2])  # and a torn last write
    second = run_translate(cfg, progress=False)
    # the torn line's chunk is still intact on line 2, so only the tampered chunk is translated again
    assert second["cache_corrupt_lines_redone"] == 2 and second["translated"] == 1
    assert list(read_jsonl(tmp_path / "data" / "ko" / "parallel.jsonl")) == rows
    assert first["chunks"] == second["chunks"]
    assert TranslationCache(cache_file.parent, "toy", "toy", "en", "ko").corrupt_lines == 0


def test_cache_keys_separate_backend_model_and_languages(tmp_path):
    keys = {TranslationCache(tmp_path, *identity).key("Hello.") for identity in
            [("hf", "m", "en", "sw"), ("hf", "m", "en", "yo"), ("hf", "n", "en", "sw"), ("openai", "m", "en", "sw")]}
    assert len(keys) == 4


def test_cache_keys_hold_every_setting_that_changes_a_translation(tmp_path, monkeypatch):
    """Beams, max tokens, the model's revision, the endpoint's system prompt and the toy generator's version each
    give another key; entries made under other settings stay in the file but are never served."""
    from dataclasses import replace

    from clo_lib.mt.backends import translation_settings

    base = load_config({"language": "sw"}).translation
    hf = [base, replace(base, num_beams=2), replace(base, max_new_tokens=64), replace(base, revision="abc123")]

    def key(cfg):
        return TranslationCache(tmp_path, cfg.backend, "m", "en", "sw", translation_settings(cfg)).key("Hello.")

    keys = {key(c) for c in hf}
    endpoint, toy = replace(base, backend="openai"), replace(base, backend="toy")
    keys |= {key(endpoint), key(toy)}
    monkeypatch.setattr(backends, "TRANSLATOR_SYSTEM_PROMPT", "Translate {src} to {tgt}, formally.")
    monkeypatch.setattr(world, "WORLD_VERSION", world.WORLD_VERSION + 1)
    keys |= {key(endpoint), key(toy)}
    assert len(keys) == 8
    four = TranslationCache(tmp_path, "hf", "m", "en", "sw", {"num_beams": 4})
    four.put_many([("Hello.", "Habari.")])
    two = TranslationCache(tmp_path, "hf", "m", "en", "sw", {"num_beams": 2})
    assert two.get("Hello.") is None and two.corrupt_lines == 0  # another setting's entry: kept, not served
    two.put_many([("Hello.", "Jambo.")])
    assert TranslationCache(tmp_path, "hf", "m", "en", "sw", {"num_beams": 4}).get("Hello.") == "Habari."


def _dropping(every: int):
    """A toy translator whose translation of every `every`-th text (by checksum) comes back empty: flagged."""
    import zlib

    real = toy_translator.ToyTranslator.translate_batch

    def translate_batch(self, texts, src, tgt):
        outs = real(self, texts, src, tgt)
        return ["" if zlib.crc32(t.encode()) % every == 0 else out for t, out in zip(texts, outs)]

    return translate_batch


def test_translation_goes_on_until_the_pool_is_usable_and_keeps_the_order(tmp_path, monkeypatch):
    """A run labelled 40 examples used to get whatever was left of 40 after flags. Now the stage translates more
    records, in the same seeded order, until 40 are usable: a run can take its 40, and smaller runs still nest."""
    from clo_lib.artifacts.corpus import run_records

    plain = tmp_path / "plain"
    run_translate(toy_config(plain), progress=False)
    order = [r["id"] for r in read_jsonl(plain / "data" / "ko" / "parallel.jsonl")]
    monkeypatch.setattr(toy_translator.ToyTranslator, "translate_batch", _dropping(3))
    report = run_translate(toy_config(tmp_path), progress=False)
    rows = list(read_jsonl(tmp_path / "data" / "ko" / "parallel.jsonl"))
    assert report["flagged_records"] > 0 and report["usable_records"] >= 40 == report["needed_records"]
    assert report["records"] == len(rows) > 40
    assert [r["id"] for r in rows][:40] == order  # a prefix of the same seeded order
    assert len(run_records(toy_config(tmp_path))) == 40


def test_a_source_too_small_for_the_flags_is_written_and_refused(tmp_path, monkeypatch):
    from clo_lib.artifacts.corpus import ShortCorpusError

    monkeypatch.setattr(toy_translator.ToyTranslator, "translate_batch", _dropping(1))  # every translation empty
    pool = len(world.world().pool())  # 192 on world version 3
    with pytest.raises(ShortCorpusError, match=rf"all {pool} records of toy are translated and 0 are usable"):
        run_translate(toy_config(tmp_path), progress=False)
    report = json.loads((tmp_path / "data" / "ko" / "report.json").read_text())
    assert report["records"] == pool and report["usable_records"] == 0  # kept for inspection


def test_flagged_records_are_written_with_their_flags(tmp_path):
    class Broken(Translator):
        backend = "broken"

        def translate_batch(self, texts, src, tgt):
            return ["" if "1" in t else "Ndege huruka kwa mabawa yao kila siku." for t in texts]

    records = [{"id": i, "prompt_en": f"Question {i}: how do birds fly?", "response_en": "Birds fly with wings."}
               for i in range(3)]
    cfg = load_config({"language": "sw"}).translation
    cache = TranslationCache(tmp_path, "broken", "b", "en", "sw")
    parallel, _ = translate_records(records, Broken("b"), cache, "sw", cfg, progress=False)
    assert parallel[1]["flags"] == ["prompt:empty"]
    assert "prompt:numbers_changed" in parallel[0]["flags"]  # the 0 of "Question 0" was lost


# --- the LLM translator behind an OpenAI-compatible endpoint (a stub on loopback) ---------------------------------


@pytest.fixture
def stub_endpoint(chat_stub):
    """Answers "[sw] <text>", after failing the very first request with a 503 (to exercise the retry)."""
    failures = [503]
    url, requests = chat_stub(lambda body: failures.pop() if failures else f"[sw] {body['messages'][-1]['content']}")
    yield url, {"requests": requests}


def test_openai_backend_translates_through_the_endpoint_with_retries(tmp_path, stub_endpoint, monkeypatch):
    url, seen = stub_endpoint
    monkeypatch.setenv("CLO_TEST_KEY", "sk-test-secret")
    monkeypatch.setattr("clo_lib.common.endpoint.ChatEndpoint.backoff_s", 0.0)
    translator = backends.OpenAITranslator("my-llm", url, "CLO_TEST_KEY", concurrency=2)
    assert translator.translate_batch(["Hello there.", "Good night."], "en", "sw") == ["[sw] Hello there.",
                                                                                    "[sw] Good night."]
    assert len(seen["requests"]) == 3  # one 503, retried
    first = seen["requests"][-1]
    assert first["auth"] == "Bearer sk-test-secret" and first["body"]["model"] == "my-llm"
    assert "into Swahili" in first["body"]["messages"][0]["content"]


def test_openai_backend_without_its_key_fails_before_any_request(tmp_path, stub_endpoint, monkeypatch):
    url, seen = stub_endpoint
    monkeypatch.delenv("CLO_TEST_KEY", raising=False)
    cfg = load_config({"language": "sw", "output_dir": str(tmp_path), "data": {"source": "toy", "size": 4},
                       "translation": {"backend": "openai", "model": "m", "api_base_url": url,
                                       "api_key_env": "CLO_TEST_KEY"}})
    with pytest.raises(common_endpoint.EndpointError, match="CLO_TEST_KEY is not set"):
        run_translate(cfg, progress=False)
    assert seen["requests"] == []


def test_cli_reports_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("preset: toy\nlanguage: fr\n")
    result = subprocess.run([sys.executable, "-m", "clo_lib", "translate", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: French (fr) is not in the toy world; it has en, zh, de, ko, id, sw, yo"


def test_cli_writes_the_corpus(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(f"preset: toy\nlanguage: yo\noutput_dir: {tmp_path}\ndata:\n  size: 5\n")
    result = subprocess.run([sys.executable, "-m", "clo_lib", "translate", str(run)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["records"] == 5
    assert random.choice(list(read_jsonl(tmp_path / "data" / "yo" / "parallel.jsonl")))["lang"] == "yo"


def test_validation_records_are_held_back_from_every_training_pool_and_stay_the_same(tmp_path, monkeypatch):
    """data.validation_size: the held-back prompts (validation.jsonl) come from the far end of the seeded order,
    so neither this corpus nor a larger one made later holds one of them, and flagged ones are skipped."""
    from clo_lib.method.pairs import nested_subset

    def translate(name, size):
        cfg = load_config({"preset": "toy", "language": "ko", "output_dir": str(tmp_path / name),
                           "data": {"size": size, "validation_size": 24}, "translation": {"batch_size": 4}})
        report = run_translate(cfg, progress=False)
        rows = list(read_jsonl(tmp_path / name / "data" / "ko" / "validation.jsonl"))
        training = {r["id"] for r in read_jsonl(tmp_path / name / "data" / "ko" / "parallel.jsonl")}
        assert len(rows) == 24 == report["validation"]["records"] and not training & {r["id"] for r in rows}
        assert all(set(r) == {"id", "prompt_en", "prompt_tgt", "reference_en", "reference_tgt"} and
                   all(r.values()) for r in rows)
        return [r["id"] for r in rows]

    from clo_lib.stages.sources import load_english

    pool = load_english(load_config({"preset": "toy", "language": "ko"}).data).records
    far_end = [r["id"] for r in reversed(nested_subset(pool, len(pool), 0))][:24]  # written out by hand
    assert translate("small", 40) == translate("large", len(pool) - 24) == far_end
    monkeypatch.setattr(toy_translator.ToyTranslator, "translate_batch", _dropping(4))
    flagged = translate("flagged", 40)  # the flagged ones (empty translations) are skipped, more are translated
    assert flagged != far_end and set(flagged) - set(far_end)


def test_a_validation_set_that_does_not_fit_beside_the_pool_is_refused_before_translating(tmp_path):
    from clo_lib.artifacts.corpus import ShortCorpusError

    pool = len(world.world().pool())
    cfg = load_config({"preset": "toy", "language": "ko", "output_dir": str(tmp_path),
                       "data": {"size": pool - 10, "validation_size": 11}})
    with pytest.raises(ShortCorpusError, match=rf"\+ data.validation_size = {pool - 10} \+ 11"):
        run_translate(cfg, progress=False)
    assert not (tmp_path / "data" / "ko").exists()
