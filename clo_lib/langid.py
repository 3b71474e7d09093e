"""Language identification with lingua, restricted to the languages in play (offline: its models ship in the wheel).

Restricting the detector to, say, English and Swahili is what makes short answers reliable: the question is only
ever "which of these", never "which of 75". Below `min_confidence` a text counts as undetermined (None), so a
two-word answer is not called wrong on a coin flip.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

from clo_lib.languages import get_language

_LETTERS = re.compile(r"[^\W\d_]", re.UNICODE)
# Spans that are not prose in any language: fenced code, inline code, URLs. Translation never sends them to the
# model (clo_lib.translate); language ID never looks at them, nor at bare numbers.
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
        raise ValueError(f"language ID needs at least two languages to choose between; got {codes}")
    return LanguageDetectorBuilder.from_languages(*languages).build()


def _code_of(lingua_name: str, codes: Sequence[str]) -> str:
    for code in codes:
        if get_language(code).lingua == lingua_name:
            return code
    raise KeyError(lingua_name)


def detect(text: str, codes: Sequence[str], min_confidence: float = 0.5) -> tuple[str | None, float]:
    """(code, confidence) of the most likely of `codes` for the prose of `text` (see `prose`); code None when
    there is no prose with letters or the detector is unsure."""
    text = prose(text)
    if not _LETTERS.search(text):
        return None, 0.0
    values = detector(tuple(sorted(set(codes)))).compute_language_confidence_values(text)
    if not values:
        return None, 0.0
    best = values[0]
    code = _code_of(best.language.name, codes)
    return (code if best.value >= min_confidence else None), float(best.value)


def detect_many(texts: Sequence[str], codes: Sequence[str], min_confidence: float = 0.5) -> list[str | None]:
    return [detect(text, codes, min_confidence)[0] for text in texts]
