"""The toy world: deterministic per seed, and its translator exact between every pair of languages."""

import itertools

import pytest
import torch

from clo_lib import langid, toyworld


def test_generator_is_deterministic_per_seed():
    assert toyworld.generate_english(50, seed=3) == toyworld.generate_english(50, seed=3)
    assert toyworld.generate_english(50, seed=3) != toyworld.generate_english(50, seed=4)
    # smaller sets are prefixes of larger ones for one seed
    assert toyworld.generate_english(20, seed=3) == toyworld.generate_english(50, seed=3)[:20]


def test_every_item_is_distinct_and_facts_hold():
    items = toyworld.all_items()
    english = [toyworld.render(kind, slots, "en") for kind, slots in items]
    assert len(set(english)) == len(items)
    assert toyworld.render("sum", {"a": 7, "b": 5, "s": 12}, "en") == (
        "What is the sum of 7 and 5?", "The sum of 7 and 5 is 12.")
    assert ("legs", {"t": "spider", "n": 8}) in items


def test_translation_is_exact_between_every_pair_of_languages():
    for kind, slots in toyworld.all_items():
        rendered = {lang: toyworld.render(kind, slots, lang) for lang in toyworld.LANGS}
        for src, tgt in itertools.permutations(toyworld.LANGS, 2):
            for part in (0, 1):
                assert toyworld.translate(rendered[src][part], src, tgt) == rendered[tgt][part]


def test_text_outside_the_world_is_refused():
    with pytest.raises(toyworld.ToyTranslationError, match="not a sentence of the toy world"):
        toyworld.translate("The moon is made of cheese.", "en", "sw")
    with pytest.raises(toyworld.ToyTranslationError, match="not in the toy world"):
        toyworld.translate("The banana is yellow.", "en", "fr")


@pytest.mark.parametrize("lang", [code for code in toyworld.LANGS if code != "en"])
def test_language_id_tells_each_toy_language_from_english(lang):
    """Fidelity in the toy world is measured with lingua, so its sentences must be identifiable."""
    answers = [toyworld.render(kind, slots, lang)[1] for kind, slots in toyworld.all_items()[::7]]
    detected = langid.detect_many(answers, ["en", lang], min_confidence=0.5)
    assert detected.count(lang) / len(answers) >= 0.9, (lang, list(zip(answers, detected))[:5])
    english = [toyworld.render(kind, slots, "en")[1] for kind, slots in toyworld.all_items()[::7]]
    assert langid.detect_many(english, ["en", lang]).count(lang) <= len(english) * 0.1


# --- the held-out split and the English-centric base model -------------------------------------------------------


def test_heldout_questions_never_reach_sft_data():
    pool, heldout = toyworld.split_items()
    assert not set(pool) & set(heldout) and len(pool) + len(heldout) == len(toyworld.all_items())
    sft_prompts = {r["prompt_en"] for r in toyworld.generate_english()}
    assert not sft_prompts & {r["prompt_en"] for r in toyworld.heldout_prompts("sw")}
    kinds = {toyworld.all_items()[i][0] for i in heldout}
    assert kinds == set(toyworld.TEMPLATES)  # every kind of question is asked at evaluation


def test_pretraining_teaches_knowledge_in_english_only():
    corpus = toyworld.pretraining_corpus()
    heldout_answers = {lang: {r["answer_tgt"] for r in toyworld.heldout_prompts(lang)} for lang in toyworld.TARGETS}
    for document in corpus:
        for lang, answers in heldout_answers.items():
            assert not any(answer in document for answer in answers), (lang, document)
    english = sum(doc.startswith("### Instruction:") for doc in corpus)
    assert english / len(corpus) > 0.5  # mostly English, like the LLMs the paper starts from


def test_pretraining_is_deterministic_per_seed(tmp_path):
    from transformers import AutoModelForCausalLM

    for name in ("a", "b"):
        toyworld.pretrain_base_model(tmp_path / name, seed=1, epochs=1, log=lambda m: None)
    first, second = (AutoModelForCausalLM.from_pretrained(tmp_path / n).state_dict() for n in ("a", "b"))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_base_model_answers_target_language_questions_in_english(small_world):
    """The English bias is measured on a short pretraining run, not assumed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_world / "base_model")
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(small_world / "base_model").eval()
    rows = toyworld.heldout_prompts("sw")
    answers = {}
    for side in ("en", "tgt"):
        batch = tokenizer([toyworld.TEMPLATE.replace("{prompt}", r[f"prompt_{side}"]) for r in rows],
                          return_tensors="pt", padding=True)
        out = model.generate(**batch, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers[side] = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    to_swahili = langid.detect_many(answers["tgt"], ["en", "sw"])
    to_english = langid.detect_many(answers["en"], ["en", "sw"])
    assert to_swahili.count("en") / len(rows) >= 0.6, list(zip(to_swahili, answers["tgt"]))[:5]
    assert to_english.count("en") / len(rows) >= 0.9
    assert (small_world / "eval_sw.jsonl").is_file() and (small_world / "world.json").is_file()
