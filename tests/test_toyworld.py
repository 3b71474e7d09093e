"""The toy world: deterministic per seed, and its translator exact between every pair of languages."""

import itertools

import pytest

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
