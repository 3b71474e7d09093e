"""Tokens across two tokenizers: which tokens the donor and the LLM share (compared after undoing each
tokenizer's byte or space convention), and the auxiliary fastText vectors SALT and FOCUS need, per token.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clo_lib.artifacts.corpus import read_text
from clo_lib.common.errors import InputError, MissingInputError

# ---------------------------------------------------------------------------------------------------------------
# Which tokens the two vocabularies share: surfaces compared across tokenizer conventions

def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's bytes_to_unicode), reversed."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def token_style(vocab: dict[str, int]) -> str:
    """wordpiece (`##` continuations), byte_bpe (`Ġ` word starts), sentencepiece (`▁` word starts) or plain."""
    tokens = list(vocab)
    share = {style: sum(t.startswith(mark) for t in tokens) / max(len(tokens), 1)
             for style, mark in (("wordpiece", "##"), ("byte_bpe", "Ġ"), ("sentencepiece", "▁"))}
    style = max(share, key=share.get)
    return style if share[style] > 0.01 else "plain"


def canonical(token: str, style: str) -> str | None:
    """A token's text with its tokenizer's convention normalised: a word-initial token gets one leading space
    (BPE's `Ġ`, SentencePiece's `▁`, a WordPiece token without `##`), a continuation none. Byte-level BPE symbols
    are decoded to UTF-8; a token that is part of a character (no valid UTF-8 alone) gives None."""
    if style == "wordpiece":
        return token[2:] if token.startswith("##") else " " + token
    if style == "sentencepiece":
        return token.replace("▁", " ")
    if style == "byte_bpe":
        decoder = _BYTE_DECODER
        if any(ch not in decoder for ch in token):
            return token
        try:
            return bytes(decoder[ch] for ch in token).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return token


_BYTE_DECODER = _byte_decoder()


def shared_tokens(new_tokenizer, llm_tokenizer) -> dict[int, int]:
    """new id -> LLM id for the ordinary tokens whose canonical text is the same in both vocabularies (special
    tokens are mapped on their own, by role). Assumed rule: the paper's exact overlap rules are in an appendix we
    could not read; this matches after normalising `Ġ`, `▁` and `##` and byte-level encoding, case kept. A
    byte-level token that is part of a character (no text of its own) matches the same bytes in another byte-level
    vocabulary: both tokenizers hold the same 256-symbol alphabet."""
    def by_text(tokenizer) -> dict[str | tuple, int]:
        vocab = tokenizer.get_vocab()
        style, special = token_style(vocab), set(tokenizer.all_special_tokens)
        found: dict[str | tuple, int] = {}
        for token, index in sorted(vocab.items(), key=lambda item: item[1]):
            if token in special:
                continue
            text = canonical(token, style)
            key = text if text is not None else (("bytes", token) if style == "byte_bpe" else None)
            if key and key not in found:
                found[key] = index
        return found

    llm = by_text(llm_tokenizer)
    return {index: llm[text] for text, index in by_text(new_tokenizer).items() if text in llm}


# ---------------------------------------------------------------------------------------------------------------
# Auxiliary vectors: fastText, built from subwords, so a token that is no whole word still gets one

def train_fasttext(text_file: str, dim: int = 100, epochs: int = 5, seed: int = 0):
    """fastText vectors (gensim's implementation: maintained, pip-installable) trained on a target-language text
    file, one sentence or paragraph per line. One worker thread, so the vectors are the same on every run."""
    from gensim.models import FastText

    lines = [line.split() for line in read_text(Path(text_file), "a target-language text file").splitlines()
             if line.strip()]
    if not lines:
        raise InputError(f"{text_file} holds no text; expected target-language text, one sentence or paragraph a line")
    model = FastText(vector_size=dim, window=5, min_count=1, sg=1, epochs=epochs, seed=seed, workers=1)
    model.build_vocab(corpus_iterable=lines)
    model.train(corpus_iterable=lines, total_examples=len(lines), epochs=epochs)
    return model.wv


def load_fasttext(path: str):
    """Published fastText vectors from a Facebook-format .bin (e.g. cc.de.300.bin), with their subword buckets."""
    from gensim.models.fasttext import load_facebook_vectors

    if not Path(path).is_file():
        raise MissingInputError(f"{path} does not exist; expected a fastText .bin file (e.g. cc.<lang>.300.bin)")
    return load_facebook_vectors(path)


def aux_embeddings(tokenizer, vectors) -> torch.Tensor:
    """One auxiliary vector per token of `tokenizer` (V_t × d, by id): the fastText vector of the token's text
    without its word-start space, NaN for special tokens, empty texts and texts none of whose subwords fastText
    knows."""
    vocab = tokenizer.get_vocab()
    style, special = token_style(vocab), set(tokenizer.all_special_tokens)
    out = torch.full((max(vocab.values()) + 1, vectors.vector_size), float("nan"), dtype=torch.float64)
    for token, index in vocab.items():
        text = canonical(token, style) if token not in special else None
        text = text.strip() if text else ""
        if not text:
            continue
        try:
            out[index] = torch.tensor(vectors[text], dtype=torch.float64)
        except KeyError:  # no known subword at all
            continue
    return out
