"""Which model family a translation model is (M2M100, NLLB, MADLAD-400, Marian) and how it names a language."""

from __future__ import annotations

import json
from pathlib import Path

from clo_lib.common.errors import InputError
from clo_lib.common.languages import get_language
from clo_lib.config.schema import ConfigError

# ---------------------------------------------------------------------------------------------------------------
# Language codes per model family: checked before any model is loaded


class UnsupportedLanguageError(InputError):
    pass


FAMILIES = ("m2m100", "nllb", "madlad", "marian")


def model_family(model: str) -> str:
    """The family of a translation model, from a local folder's config.json or else from the hub id."""
    config_file = Path(model) / "config.json"
    if config_file.is_file():
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "")
        name = model.lower()
        if model_type == "m2m_100":
            return "nllb" if "nllb" in name else "m2m100"
        if model_type == "marian":
            return "marian"
        if model_type in ("t5", "mt5") and "madlad" in name:
            return "madlad"
    name = model.lower()
    for key, family in (("nllb", "nllb"), ("m2m100", "m2m100"), ("m2m_100", "m2m100"), ("madlad", "madlad"),
                        ("opus-mt", "marian"), ("marian", "marian")):
        if key in name:
            return family
    raise ConfigError(f"translation.model = {model!r}: cannot tell its family; expected an M2M100, NLLB-200, "
                      "MADLAD-400 or Marian opus-mt model (by name or a local folder with its config.json)",
                      key="translation.model")


def language_code(family: str, lang: str) -> str:
    """How `family` names language `lang` (ISO 639-1 in the kit), or a clear UnsupportedLanguageError."""
    row = get_language(lang)
    code = {"m2m100": row.m2m100, "nllb": row.nllb, "madlad": row.code, "marian": row.code}[family]
    if code is None:
        raise UnsupportedLanguageError(f"{row.name} ({lang}) is not supported by {family} models; choose another "
                                       "translation.model (NLLB-200 and MADLAD-400 cover the most languages)")
    return code


def model_for_pair(model: str, src: str, tgt: str) -> str:
    """Marian ships one model per pair: `Helsinki-NLP/opus-mt-{src}-{tgt}` becomes opus-mt-en-sw."""
    return model.replace("{src}", src).replace("{tgt}", tgt)
