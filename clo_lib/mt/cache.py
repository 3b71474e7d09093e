"""The translation cache: one JSONL file per backend, model and language pair, keyed by every setting that
changes a translation, appended after every batch, so a killed run resumes and a rerun translates nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from clo_lib.common.cache import JsonlCache, digest, text_digest
from clo_lib.common.languages import SOURCE_LANGUAGE
from clo_lib.config.schema import RunConfig
from clo_lib.mt.backends import translation_settings


def translation_cache(cfg: RunConfig) -> "TranslationCache":
    """The run's translation cache: shared by all runs of an output folder, keyed by every setting that matters."""
    tcfg = cfg.translation
    return TranslationCache(cache_dir(cfg), tcfg.backend, tcfg.model, SOURCE_LANGUAGE, cfg.language,
                            translation_settings(tcfg))


# ---------------------------------------------------------------------------------------------------------------
# The cache: one JSONL file per (backend, model, source, target), appended after every batch


class TranslationCache(JsonlCache):
    """Chunk translations on disk, keyed by sha256 of (backend, model, src, tgt, settings, text).

    `settings` are whatever else changes a translation (see `translation_settings`): entries made under other
    settings stay in the file for those settings but are never served for these. Each line carries its key and a
    checksum of the translation (clo_lib.common.cache: a line that does not parse or check out is dropped on load,
    the file rewritten without it, and its chunk translated again).
    """

    key_field = "k"

    def __init__(self, directory: str | Path, backend: str, model: str, src: str, tgt: str,
                 settings: dict[str, Any] | None = None):
        self.identity = (backend, model, src, tgt, json.dumps(settings or {}, sort_keys=True))
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/"))[-80:]
        super().__init__(Path(directory) / f"{backend}__{slug}__{src}-{tgt}.jsonl")
        # only this identity's entries are served; others' stay in the file
        mine = [row for key, row in self.rows.items() if key == self.key(row["src"])]
        self.entries: dict[str, str] = {row["k"]: row["out"] for row in mine}
        self.cut_keys = {row["k"] for row in mine if row.get("cut")}  # stopped at max_new_tokens, or a cut input
        self.hits = 0

    def key(self, text: str) -> str:
        return digest([*self.identity, text], length=None)

    def checksum(self, row: dict) -> str:
        return text_digest(row["out"])  # the translation's own checksum (caches written before keep checking out)

    def _parse(self, line: str) -> dict | None:
        row = super()._parse(line)
        valid = row is not None and "sum" in row and isinstance(row.get("out"), str) and isinstance(row.get("src"), str)
        return row if valid else None

    def get(self, text: str) -> str | None:
        found = self.entries.get(self.key(text))
        if found is not None:
            self.hits += 1
        return found

    def was_cut(self, text: str) -> bool:
        """Whether the cached translation of `text` stopped at the translator's limit (text was lost)."""
        return self.key(text) in self.cut_keys

    def put_many(self, pairs: Sequence[tuple[str, str]], cut: set[str] = frozenset()) -> None:
        """Append one batch in a single fsynced write, so a kill loses at most this batch. `cut`: the texts whose
        translation stopped at the translator's limit, recorded with them."""
        rows = []
        for text, out in pairs:
            key = self.key(text)
            self.entries[key] = out
            rows.append({"k": key, "src": text, "out": out, **({"cut": True} if text in cut else {})})
            if text in cut:
                self.cut_keys.add(key)
        self.append(rows)


def cache_dir(cfg: RunConfig) -> Path:
    return Path(cfg.translation.cache_dir or Path(cfg.output_dir) / "cache" / "translations")
