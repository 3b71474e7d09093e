"""The toy world's exact translator, `translation.backend: toy` (reached by name from clo_lib.mt.backends)."""

from __future__ import annotations

import re
from typing import Sequence

from clo_lib.common.languages import get_language
from clo_lib.config.schema import TranslationConfig
from clo_lib.mt.codes import UnsupportedLanguageError
from clo_lib.mt.translator import Translator
from clo_lib.toy import world


class ToyTranslator(Translator):
    """The toy world's exact translator, sentence by sentence. In joint mode it keeps the indicator markers and
    translates the text between them; the Catalyst Statement, which is not in the world, passes unchanged."""

    backend = "toy"

    @classmethod
    def check(cls, cfg: TranslationConfig, src: str, tgt: str) -> None:
        for lang in (src, tgt):
            if lang not in world.LANGS:
                raise UnsupportedLanguageError(f"{get_language(lang).name} ({lang}) is not in the toy world; "
                                               f"it has {', '.join(world.LANGS)}")

    @classmethod
    def create(cls, cfg: TranslationConfig, src: str, tgt: str, indicator: str | None) -> Translator:
        return cls("toy", indicator, cfg.catalyst_texts.values())

    @classmethod
    def settings(cls, cfg: TranslationConfig) -> dict:
        return {"generator": world.WORLD_VERSION}

    def __init__(self, model: str, indicator: str | None = None, catalysts: Sequence[str] = ()):
        super().__init__(model)
        self.use_markers(indicator, None)
        self.catalysts = set(catalysts)

    def translate_batch(self, texts: list[str], src: str, tgt: str) -> list[str]:
        return [self._translate(text, src, tgt) for text in texts]

    def _translate(self, text: str, src: str, tgt: str) -> str:
        if self.marked(text):
            pieces, position = [], 0
            for match in self.markers.finditer(text):
                pieces += [self._translate(text[position: match.start()], src, tgt), match.group(0)]
                position = match.end()
            pieces.append(self._translate(text[position:], src, tgt))
            return " ".join(piece for piece in pieces if piece)
        if text.strip() in self.catalysts:
            return text.strip()
        return " ".join(world.translate(s, src, tgt) for s in re.split(r"(?<=[.?!。？])\s*", text) if s.strip())
