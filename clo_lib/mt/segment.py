"""Long texts into chunks a translation model takes: by line, then sentence, then words, never over the token
limit; code blocks, inline code and URLs are kept out of translation and put back unchanged.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from clo_lib.common.langid import CODE_FENCE, PROTECTED_SPAN

# ---------------------------------------------------------------------------------------------------------------
# Splitting texts into chunks, and joining the translations back

_LINE_PREFIX = re.compile(r"^\s*(?:[-*+•]|\d+[.)]|#{1,6}|>)?\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def _pack(pieces: list[str], count_tokens: Callable[[str], int], max_tokens: int, glue: str) -> list[str]:
    """Greedily join consecutive pieces while the result stays within `max_tokens`."""
    chunks: list[str] = []
    for piece in pieces:
        if chunks and count_tokens(chunks[-1] + glue + piece) <= max_tokens:
            chunks[-1] += glue + piece
        else:
            chunks.append(piece)
    return chunks


def _split_long(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[str]:
    """Cut one line at sentence ends, then an overlong sentence between words, so each chunk fits."""
    if count_tokens(text) <= max_tokens:
        return [text]
    chunks = []
    for sentence in _pack(_SENTENCE_END.split(text), count_tokens, max_tokens, " "):
        if count_tokens(sentence) <= max_tokens:
            chunks.append(sentence)
        else:
            chunks.extend(_pack(sentence.split(" "), count_tokens, max_tokens, " "))
    return chunks


def segment(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[tuple[bool, str]]:
    """`text` as (translate?, piece) pairs whose pieces concatenate back to `text` exactly.

    Pieces marked True are the chunks for the model; False pieces (layout, code, URLs) pass through untouched.
    """
    pieces: list[tuple[bool, str]] = []

    def add_prose(prose: str) -> None:
        for line in prose.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            ending = line[len(body):]
            prefix = _LINE_PREFIX.match(body).group(0)
            rest = body[len(prefix):]
            trailing = rest[len(rest.rstrip()):]
            rest = rest.rstrip()
            if prefix:
                pieces.append((False, prefix))
            position = 0
            for match in PROTECTED_SPAN.finditer(rest):
                add_words(rest[position:match.start()])
                pieces.append((False, match.group(0)))
                position = match.end()
            add_words(rest[position:])
            if trailing + ending:
                pieces.append((False, trailing + ending))

    def add_words(words: str) -> None:
        # Keep the spaces around a fragment outside it, so that joining restores them exactly.
        stripped = words.strip()
        if not stripped:
            if words:
                pieces.append((False, words))
            return
        lead = words[: len(words) - len(words.lstrip())]
        tail = words[len(words.rstrip()):]
        if lead:
            pieces.append((False, lead))
        # Pieces with no letters (numbers, punctuation, emoji) have nothing to translate.
        if not re.search(r"[^\W\d_]", stripped):
            pieces.append((False, stripped))
        else:
            for index, chunk in enumerate(_split_long(stripped, count_tokens, max_tokens)):
                if index:
                    pieces.append((False, " "))
                pieces.append((True, chunk))
        if tail:
            pieces.append((False, tail))

    position = 0
    for match in CODE_FENCE.finditer(text):
        add_prose(text[position:match.start()])
        pieces.append((False, match.group(0)))
        position = match.end()
    add_prose(text[position:])
    return pieces


def join(pieces: Sequence[tuple[bool, str]], translations: dict[str, str]) -> str:
    """Rebuild a text: chunks replaced by their translation, everything else as it was."""
    return "".join(translations[piece] if to_translate else piece for to_translate, piece in pieces)
