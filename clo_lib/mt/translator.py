"""The translator interface every backend implements: `count_tokens` (to split long texts) and
`translate_batch` (a list of chunks), plus the joint-mode markers and the LLM translators' system prompt."""

from __future__ import annotations

from contextlib import contextmanager

from clo_lib.common.languages import get_language
from clo_lib.config.schema import TranslationConfig
from clo_lib.method import joint

TRANSLATOR_SYSTEM_PROMPT = (
    "You are a professional translator. Translate the user's text from {src} into {tgt}. Keep the meaning, tone, "
    "formatting, numbers, names and code exactly. Reply with the translation only, no notes."
)
# Joint mode with an LLM translator: the Catalyst Statement can be an instruction (SIBLINGS.md 1).
JOINT_INSTRUCTION = (
    " The text is one data point in parts, each behind a marker such as {marker}: keep every marker exactly once, "
    "in the same order, and translate the text after each one."
)


def catalyst_text(cfg: TranslationConfig) -> str | None:
    """The CS sentence of `translation.catalyst`, or None for `none` (the paper's plain concatenation)."""
    return None if cfg.catalyst == "none" else cfg.catalyst_texts[cfg.catalyst]


class Translator:
    backend = "base"

    def __init__(self, model: str):
        self.model = model
        self.use_markers(None, None)
        # Inputs whose output stopped at max_new_tokens (or whose input had to be cut): text was lost. Each backend
        # adds to it in translate_batch; the stage records it in the cache and never splits or trusts such output.
        self.cut: set[str] = set()

    @contextmanager
    def separately(self):
        """Translate as separate mode does inside the block (joint mode's part-by-part fallback): no markers, so a
        chunk gets exactly the prompt, and the translation, it gets in separate mode."""
        saved = self.indicator, self.catalyst
        self.use_markers(None, None)
        try:
            yield self
        finally:
            self.use_markers(*saved)

    def use_markers(self, indicator: str | None, catalyst: str | None) -> None:
        """Joint mode's Indicator Token template and Catalyst Statement (None: separate mode), for the backends
        whose prompt depends on them (few-shot examples, an LLM's instruction, the toy translator's splitting)."""
        self.indicator, self.catalyst = indicator, catalyst
        self.markers = joint.marker_pattern(indicator) if indicator else None

    def marked(self, text: str) -> bool:
        """Whether `text` is a joint input (it holds the markers)."""
        return self.markers is not None and self.markers.search(text) is not None

    def instruction(self, text: str, src: str, tgt: str) -> str:
        """An LLM translator's system prompt for `text`: the plain one, plus keeping the markers for a joint input
        (the Catalyst Statement as an instruction, SIBLINGS.md 1)."""
        system = TRANSLATOR_SYSTEM_PROMPT.format(src=get_language(src).name, tgt=get_language(tgt).name)
        return system + JOINT_INSTRUCTION.format(marker=joint.marker(self.indicator, 1)) if self.marked(text) \
            else system

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def translate_batch(self, texts: list[str], src: str, tgt: str) -> list[str]:
        raise NotImplementedError

    @classmethod
    def check(cls, cfg: TranslationConfig, src: str, tgt: str) -> None:
        """Everything that can be checked about this backend for `src` -> `tgt` without loading a model."""

    @classmethod
    def create(cls, cfg: TranslationConfig, src: str, tgt: str, indicator: str | None) -> "Translator":
        raise NotImplementedError

    @classmethod
    def settings(cls, cfg: TranslationConfig) -> dict:
        """What, besides backend, model, languages and text, changes this backend's translation (cache keys)."""
        return {}
