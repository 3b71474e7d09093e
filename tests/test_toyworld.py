"""The toy world: balanced, deterministic per seed, held-out facts and question forms kept out of everything the
model trains on in a target language, and its translator exact between every pair of languages and phrasings."""

import collections
import itertools

import pytest
import torch

from clo_lib.common import langid
from clo_lib.toy import build, world


def test_generator_is_deterministic_per_seed():
    assert world.generate_english(50, seed=3) == world.generate_english(50, seed=3)
    assert world.generate_english(50, seed=3) != world.generate_english(50, seed=4)
    # smaller sets are prefixes of larger ones for one seed
    assert world.generate_english(20, seed=3) == world.generate_english(50, seed=3)[:20]


def test_kinds_are_balanced_and_facts_hold():
    facts = world.all_facts()
    assert collections.Counter(kind for kind, _ in facts) == {kind: 16 for kind in world.KINDS_OF_QUESTION}
    english = {world.render(kind, slots, "en", p)[0] for kind, slots in facts for p in range(world.PHRASINGS)}
    assert len(english) == 64 * 8  # every phrasing of every fact is a distinct question
    assert world.render("legs", {"t": "spider", "n": 8}, "en", 5) == (
        "Please answer this: What is the number of legs of the spider?", "The spider has 8 legs.")
    assert ("legs", {"t": "spider", "n": 8}) in facts


def test_translation_is_exact_between_every_pair_of_languages_and_keeps_the_phrasing():
    for kind, slots in world.all_facts()[::3]:
        for phrasing in range(world.PHRASINGS):
            rendered = {lang: world.render(kind, slots, lang, phrasing) for lang in world.LANGS}
            for src, tgt in itertools.permutations(world.LANGS, 2):
                for part in (0, 1):
                    assert world.translate(rendered[src][part], src, tgt) == rendered[tgt][part]


def test_text_outside_the_world_is_refused():
    with pytest.raises(world.ToyTranslationError, match="not a sentence of the toy world"):
        world.translate("The moon is made of cheese.", "en", "sw")
    with pytest.raises(world.ToyTranslationError, match="not in the toy world"):
        world.translate("The banana is yellow.", "en", "fr")


@pytest.mark.parametrize("lang", [code for code in world.LANGS if code != "en"])
def test_language_id_tells_each_toy_language_from_english(lang):
    """Fidelity in the toy world is measured with lingua, so its sentences must be identifiable."""
    facts = world.all_facts()[::5]
    answers = [world.render(kind, slots, lang, p)[i] for kind, slots in facts for p in (0, 7) for i in (0, 1)]
    detected = langid.detect_many(answers, ["en", lang], min_confidence=0.5)
    assert detected.count(lang) / len(answers) >= 0.9, (lang, list(zip(answers, detected))[:5])
    english = [world.render(kind, slots, "en", p)[1] for kind, slots in facts for p in (0, 7)]
    assert langid.detect_many(english, ["en", lang]).count(lang) <= len(english) * 0.1


# --- the held-out split and the English-centric base model -------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heldout_facts_and_forms_never_reach_sft_data(seed):
    split = world.world(seed)
    rows = world.evaluation_prompts("sw", seed)
    assert collections.Counter(r["group"] for r in rows) == {"new_phrasing": 144, "new_fact": 96}
    assert len(set(collections.Counter(r["kind"] for r in rows).values())) == 1  # balanced kinds
    sft_prompts = {r["prompt_en"] for r in world.generate_english(world_seed=seed)}
    validation = world.evaluation_prompts("sw", seed, "validation")
    assert not sft_prompts & {r["prompt_en"] for r in rows + validation}
    assert not {r["answer_en"] for r in validation if r["group"] == "new_fact"} & {
        r["response_en"] for r in world.generate_english(world_seed=seed)}  # validation's new facts are new too
    for kind, held in split.heldout_phrasings.items():  # a whole question form: its four frames
        assert len(held) == 4 and len({p % 2 for p in held}) == 1
    assert world.world(seed) != world.world(seed + 3)  # seeds vary the split


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lang", ["sw", "ko", "de"])
def test_validation_questions_are_never_test_questions(seed, lang):
    """Settings are chosen on validation (a grid's search) and reported on test: no validation question, fact asked
    in a form, or prompt text (either language) is a test one, and validation asks both groups of every kind."""
    test, validation = (world.evaluation_prompts(lang, seed, split) for split in world.SPLITS)
    assert collections.Counter(r["group"] for r in validation) == {"new_phrasing": 48, "new_fact": 32}
    assert len(set(collections.Counter(r["kind"] for r in validation).values())) == 1  # balanced kinds

    def fact_in_form(row):  # ids are toy-<fact>-p<phrasing>; the form is the phrasing's parity
        fact, phrasing = row["id"].split("-")[1:]
        return fact, int(phrasing[1:]) % 2

    assert not {r["id"] for r in test} & {r["id"] for r in validation}
    assert not {fact_in_form(r) for r in test} & {fact_in_form(r) for r in validation}
    for side in ("prompt_en", "prompt_tgt"):
        assert not {r[side] for r in test} & {r[side] for r in validation}
    new_facts = {split: {r["id"].split("-")[1] for r in rows if r["group"] == "new_fact"}
                 for split, rows in zip(world.SPLITS, (test, validation))}
    assert len(new_facts["validation"]) == 4 and not new_facts["test"] & new_facts["validation"]
    with pytest.raises(world.InputError, match="split = 'dev'"):
        world.evaluation_prompts(lang, seed, "dev")


def test_version_3_keeps_version_2s_test_split():
    """Validation was drawn after the test split: test's new facts and held-out form are version 2's (checked
    against version 2's rule, written out here), so only known facts moved to validation left test."""
    import random

    rng = random.Random(0)
    by_kind = collections.defaultdict(list)
    for index, (kind, _) in enumerate(world.all_facts()):
        by_kind[kind].append(index)
    facts, forms = set(), {}
    for kind, indices in by_kind.items():
        facts |= set(rng.sample(indices, 3))
        forms[kind] = rng.randrange(2)
    split = world.world(0)
    assert split.heldout_facts == facts
    assert {kind: min(p) % 2 for kind, p in split.heldout_phrasings.items()} == forms


def test_pretraining_teaches_knowledge_in_english_only():
    corpus = build.pretraining_corpus()
    rows = {lang: world.evaluation_prompts(lang) + world.evaluation_prompts(lang, split="validation")
            for lang in world.TARGETS}
    for document in corpus:
        if document.startswith("### Instruction:"):
            continue
        for lang, prompts in rows.items():  # no held-out fact's answer and no held-out form in a target language
            assert not any(r["answer_tgt"] in document or r["prompt_tgt"] in document
                           for r in prompts if r["group"] == "new_fact"), (lang, document)
            assert not any(r["prompt_tgt"] in document for r in prompts if r["group"] == "new_phrasing")
    english = sum(doc.startswith("### Instruction:") for doc in corpus)
    assert english == 64 * 8  # every fact in every English phrasing


def test_pretraining_is_deterministic_per_seed_whatever_the_callers_threads(tmp_path):
    """One epoch under one torch thread and under two gives different weights (measured), so the pretraining pins
    its own thread count: a caller's count changes nothing, and is given back afterwards."""
    from transformers import AutoModelForCausalLM

    before = torch.get_num_threads()
    try:
        for name, threads in (("a", 1), ("b", 2)):
            torch.set_num_threads(threads)
            summary = build.pretrain_base_model(tmp_path / name, seed=1, epochs=1, log=lambda m: None, world_seed=1)
            assert torch.get_num_threads() == threads and summary["threads"] == build.PRETRAIN_THREADS
    finally:
        torch.set_num_threads(before)
    first, second = (AutoModelForCausalLM.from_pretrained(tmp_path / n).state_dict() for n in ("a", "b"))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_base_model_answers_target_language_questions_in_english(small_world):
    """The English bias is measured on a short pretraining run, not assumed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_world / "base_model")
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(small_world / "base_model").eval()
    rows = world.evaluation_prompts("sw")[::4]
    answers = {}
    for side in ("en", "tgt"):
        batch = tokenizer([world.TEMPLATE.replace("{prompt}", r[f"prompt_{side}"]) for r in rows],
                          return_tensors="pt", padding=True)
        out = model.generate(**batch, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers[side] = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    to_swahili = langid.detect_many(answers["tgt"], ["en", "sw"])
    to_english = langid.detect_many(answers["en"], ["en", "sw"])
    assert to_swahili.count("en") / len(rows) >= 0.6, list(zip(to_swahili, answers["tgt"]))[:5]
    assert to_english.count("en") / len(rows) >= 0.9
    for name in ("eval_sw.jsonl", "val_sw.jsonl", "pool.jsonl", "world.json"):
        assert (small_world / name).is_file()


def test_the_donors_text_has_nothing_evaluation_asks_and_a_changed_recipe_rebuilds_it(tmp_path, monkeypatch):
    """The vocabulary-transfer donor learns from the SFT pool's target-language lines only (no held-out fact or
    question form), its held-out lines come last, and a donor built another way is built again, not reused."""
    import json

    lines = build.target_text("sw")
    asked = {r["prompt_tgt"] for split in world.SPLITS for r in world.evaluation_prompts("sw", split=split)}
    assert len(lines) == len(world.world().pool()) and not any(q in line for q in asked for line in lines)
    assert lines == build.target_text("sw") != build.target_text("sw", seed=1)  # an order set by the seed
    monkeypatch.setattr(build, "DONOR_STEPS", 3)
    messages = []
    first = build.build_donor(tmp_path, "sw", log=messages.append)
    assert (tmp_path / "text.txt").read_text().splitlines() == lines and first["curve"][-1]["step"] == 3
    assert (tmp_path / "model" / "config.json").is_file()
    build.build_donor(tmp_path, "sw", log=messages.append)
    assert "already built" in messages[-1]
    monkeypatch.setattr(build, "DONOR_STEPS", 4)
    assert build.build_donor(tmp_path, "sw", log=messages.append)["curve"][-1]["step"] == 4
    assert json.loads((tmp_path / "donor.json").read_text())["recipe"][3] == 4


def test_the_hf_causal_few_shot_examples_are_the_toy_worlds_first_question_and_answer():
    """mt/few_shot.json holds the words the hf_causal translator's base-model prompt always used (the toy world's
    first evaluation question and its answer in each language), so its prompts and cache keys did not change when
    the toy world left the pipeline."""
    from clo_lib.mt.backends import FEW_SHOT

    assert list(FEW_SHOT) == list(world.LANGS)
    for lang in world.TARGETS:
        row = world.evaluation_prompts(lang)[0]
        assert FEW_SHOT[lang] == [row["prompt_tgt"], row["answer_tgt"]]
        assert FEW_SHOT["en"] == [row["prompt_en"], row["answer_en"]]
