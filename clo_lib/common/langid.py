"""Language identification with lingua, restricted to the languages in play (offline: its models ship in the wheel).

Restricting the detector to, say, English and Swahili is what makes short answers reliable: the question is only
ever "which of these", never "which of 75". The rule that places a text (or leaves it undetermined, None):

1. its prose (`prose`: no code, URLs or bare numbers) has at least `min_letters` letters (`eval.lid_min_letters`,
   `translation.lid_min_letters`; default MIN_LETTERS = 5, assumed). Shorter is one short word ("OK", "No", "Ja",
   "Nne"), which languages share or lingua cannot tell apart: it placed "OK" in Swahili at 0.84 against English.
   A character of a script without spaces between words (Han, Hangul, kana) counts as two letters: 猫有4条腿 ("a
   cat has 4 legs") is a sentence;
2. lingua's top language has a confidence of at least `min_confidence` (`*.lid_min_confidence`). With two languages
   the confidences sum to 1, so the top one always reaches 0.5 and the default 0.5 adds nothing: the decision rests
   on rule 1. A higher value asks for a margin; on the toy world's own English and German sentences lingua's top
   confidence is often only 0.6-0.7, so a margin leaves correct short sentences undetermined.

An undetermined answer counts against fidelity and is never decided by language in the judges.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

from clo_lib.common.errors import InputError
from clo_lib.common.languages import get_language

MIN_LETTERS = 5  # the default of *.lid_min_letters (assumed; see above)
_DENSE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_LETTERS = re.compile(r"[^\W\d_]", re.UNICODE)
# Spans that are not prose in any language: fenced code, inline code, URLs. Translation never sends them to the
# model (clo_lib.stages.translate); language ID never looks at them, nor at bare numbers.
CODE_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
PROTECTED_SPAN = re.compile(r"`[^`\n]+`|https?://\S+|www\.\S+")
_NUMBER = re.compile(r"(?<![^\W\d_])[-+]?\d[\d.,:/%]*(?![^\W\d_])")


def prose(text: str) -> str:
    """`text` without code blocks, inline code, URLs and bare numbers: what language ID should judge.

    An answer that is mostly a code block, or a sum, says nothing about its language; left in, code reads as
    English to a detector and digits add noise.
    """
    return _NUMBER.sub(" ", PROTECTED_SPAN.sub(" ", CODE_FENCE.sub(" ", text or "")))


@lru_cache(maxsize=16)
def detector(codes: tuple[str, ...]):
    """A lingua detector for these ISO codes (built once per set; the models load lazily)."""
    from lingua import Language, LanguageDetectorBuilder

    languages = [getattr(Language, get_language(code).lingua) for code in sorted(set(codes))]
    if len(languages) < 2:
        raise InputError(f"language ID needs at least two languages to choose between; got {codes}")
    return LanguageDetectorBuilder.from_languages(*languages).build()


def _code_of(lingua_name: str, codes: Sequence[str]) -> str:
    for code in codes:
        if get_language(code).lingua == lingua_name:
            return code
    raise KeyError(lingua_name)


def detect(text: str, codes: Sequence[str], min_confidence: float = 0.5,
           min_letters: int = MIN_LETTERS) -> tuple[str | None, float]:
    """(code, confidence) of the most likely of `codes` for the prose of `text` (see `prose`); code None when the
    prose has fewer than `min_letters` letters or the detector is unsure (the module docstring's rule)."""
    text = prose(text)
    letters = len(_LETTERS.findall(text)) + len(_DENSE.findall(text))  # dense scripts count twice
    if not letters:
        return None, 0.0
    values = detector(tuple(sorted(set(codes)))).compute_language_confidence_values(text)
    if not values:
        return None, 0.0
    best = values[0]
    code = _code_of(best.language.name, codes)
    placed = best.value >= min_confidence and letters >= min_letters
    return (code if placed else None), float(best.value)


def detect_many(texts: Sequence[str], codes: Sequence[str], min_confidence: float = 0.5,
                min_letters: int = MIN_LETTERS) -> list[str | None]:
    return [detect(text, codes, min_confidence, min_letters)[0] for text in texts]
