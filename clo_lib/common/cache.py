"""Digests, and the one append-only JSONL cache every stage keeps (translations, answers, judgments).

`digest` is the kit's one hash of a value (sha256 of its canonical JSON): cache keys, fingerprints, variant names.
A cache row carries its key and a checksum: rows are appended one batch at a time (fsynced, so a kill loses at most
that batch), and a line that does not parse, lacks its key or fails its checksum (a run killed mid-write, an edited
file) is dropped on load, the file rewritten without it, and what it held is made again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from clo_lib.common.io import append_jsonl, atomic_write_text


def text_digest(text: str, length: int | None = 16) -> str:
    """sha256 of `text` (UTF-8), as hex, cut to `length` characters (None: all 64)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def digest(value: Any, length: int | None = 16) -> str:
    """A stable hash of any JSON-able value (its JSON with sorted keys)."""
    return text_digest(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str), length)


class JsonlCache:
    """Rows read back by `key_field`; each appended row gets `sum`, the checksum of the rest of the row. A row
    without `sum` (written before rows carried one) is trusted; one whose `sum` does not match is dropped."""

    key_field = "key"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        self.corrupt_lines = 0
        if not self.path.is_file():
            return
        good_lines = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            row = self._parse(line)
            if row is None:
                self.corrupt_lines += 1
                continue
            good_lines.append(line)
            self.rows[row[self.key_field]] = row
        if self.corrupt_lines:
            atomic_write_text(self.path, "".join(line + "\n" for line in good_lines))

    def _parse(self, line: str) -> dict | None:
        try:
            row = json.loads(line)
            valid = isinstance(row, dict) and isinstance(row[self.key_field], str) and \
                ("sum" not in row or row["sum"] == self.checksum(row))
        except (json.JSONDecodeError, KeyError, TypeError):
            return None
        return row if valid else None

    def checksum(self, row: dict) -> str:
        return digest({k: v for k, v in row.items() if k != "sum"})

    def append(self, rows: Sequence[dict]) -> None:
        """Append one batch in a single fsynced write."""
        rows = [{**row, "sum": self.checksum(row)} for row in rows]
        for row in rows:
            self.rows[row[self.key_field]] = row
        append_jsonl(self.path, rows)
