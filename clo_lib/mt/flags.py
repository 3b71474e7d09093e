"""Quality flags on a translation: empty, too short or long for the language, the wrong language, an n-gram
loop, changed numbers, or cut at the length limit. Flagged records stay in the corpus and out of training.
"""

from __future__ import annotations

import re
from collections import Counter

from clo_lib.common import langid
from clo_lib.common.langid import MIN_LETTERS
from clo_lib.common.languages import SOURCE_LANGUAGE

# ---------------------------------------------------------------------------------------------------------------
# Quality flags

# Rough characters-per-English-character of each script, so that a Chinese translation a third as long as its
# English source is not called "too short". Approximate; unlisted languages count as 1.
CHAR_RATIO = {"zh": 0.3, "ja": 0.35, "ko": 0.45}
FLAGS = ("empty", "too_short", "too_long", "wrong_language", "ngram_loop", "numbers_changed", "truncated")


def _max_ngram_repeats(text: str, n: int = 3) -> int:
    words = text.split()
    if len(words) < n * 2 and len(text) > 2 * len(words) * 4:  # no spaces to speak of (Chinese, Japanese)
        words = [ch for ch in text if not ch.isspace()]
        n = 4
    grams = Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
    return max(grams.values(), default=0)


def quality_flags(source: str, translation: str, tgt: str, max_length_ratio: float = 3.0,
                  lid_min_confidence: float = 0.5, min_chars_for_ratio: int = 20,
                  lid_min_letters: int = MIN_LETTERS) -> list[str]:
    """Which of FLAGS apply to one translation (an empty list means it looks fine)."""
    flags = []
    if not translation.strip():
        return ["empty"] if source.strip() else []
    src_chars = len(re.sub(r"\s", "", source))
    out_chars = len(re.sub(r"\s", "", translation))
    if src_chars >= min_chars_for_ratio:
        ratio = out_chars / (src_chars * CHAR_RATIO.get(tgt, 1.0))
        if ratio < 1 / max_length_ratio:
            flags.append("too_short")
        elif ratio > max_length_ratio:
            flags.append("too_long")
    detected, _ = langid.detect(translation, [SOURCE_LANGUAGE, tgt], lid_min_confidence,
                                lid_min_letters)  # on its prose only
    if detected is not None and detected != tgt:
        flags.append("wrong_language")
    out_repeats = _max_ngram_repeats(translation)
    if out_repeats >= 4 and out_repeats > 2 * max(_max_ngram_repeats(source), 1):
        flags.append("ngram_loop")
    if Counter(re.findall(r"\d+", source)) != Counter(re.findall(r"\d+", translation)):
        flags.append("numbers_changed")
    return flags
