"""The languages the kit knows: ISO 639-1 code, name, the paper's resource level, and how each tool names it.

One table, so that config validation, translation (model-specific codes), and language identification (lingua)
agree on what a language code means. Add a row to support a new language.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, the kit's own key (`language: sw` in params)
    name: str
    resource: str | None  # "high" / "medium" / "low" as in the paper's grid; None for languages outside it
    lingua: str  # name of the `lingua.Language` member used for language identification
    m2m100: str | None  # code in facebook/m2m100_* (None: not supported by M2M100)
    nllb: str | None  # code in facebook/nllb-200-* (FLORES-200)


# The paper's six target languages come first, then English, then others M2M100, NLLB and lingua all cover.
_ROWS = [
    Language("zh", "Chinese", "high", "CHINESE", "zh", "zho_Hans"),
    Language("de", "German", "high", "GERMAN", "de", "deu_Latn"),
    Language("ko", "Korean", "medium", "KOREAN", "ko", "kor_Hang"),
    Language("id", "Indonesian", "medium", "INDONESIAN", "id", "ind_Latn"),
    Language("sw", "Swahili", "low", "SWAHILI", "sw", "swh_Latn"),
    Language("yo", "Yoruba", "low", "YORUBA", "yo", "yor_Latn"),
    Language("en", "English", None, "ENGLISH", "en", "eng_Latn"),
    Language("ar", "Arabic", None, "ARABIC", "ar", "arb_Arab"),
    Language("bn", "Bengali", None, "BENGALI", "bn", "ben_Beng"),
    Language("es", "Spanish", None, "SPANISH", "es", "spa_Latn"),
    Language("fr", "French", None, "FRENCH", "fr", "fra_Latn"),
    Language("hi", "Hindi", None, "HINDI", "hi", "hin_Deva"),
    Language("it", "Italian", None, "ITALIAN", "it", "ita_Latn"),
    Language("ja", "Japanese", None, "JAPANESE", "ja", "jpn_Jpan"),
    Language("pt", "Portuguese", None, "PORTUGUESE", "pt", "por_Latn"),
    Language("ru", "Russian", None, "RUSSIAN", "ru", "rus_Cyrl"),
    Language("th", "Thai", None, "THAI", "th", "tha_Thai"),
    Language("tr", "Turkish", None, "TURKISH", "tr", "tur_Latn"),
    Language("vi", "Vietnamese", None, "VIETNAMESE", "vi", "vie_Latn"),
    Language("zu", "Zulu", None, "ZULU", "zu", "zul_Latn"),
]

LANGUAGES: dict[str, Language] = {row.code: row for row in _ROWS}
PAPER_TARGETS = ("zh", "de", "ko", "id", "sw", "yo")
SOURCE_LANGUAGE = "en"


def get_language(code: str) -> Language:
    """The table row for `code`; a clear KeyError listing the known codes otherwise."""
    try:
        return LANGUAGES[code]
    except KeyError:
        known = ", ".join(sorted(LANGUAGES))
        raise KeyError(f"unknown language code {code!r}; known codes: {known}") from None
