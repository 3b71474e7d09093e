"""Joint translation of multifaceted data (Moon et al., Findings of EMNLP 2024, arXiv 2404.16257; SIBLINGS.md 1).

Translating a record's prompt and response one by one (`translation.mode: separate`, what the CLO paper describes)
loses the relation between them: a term asked about is translated one way in the question and another in the
answer. In `translation.mode: joint` the components of one record go to the unchanged MT model as one input,

    [0] The following is a question followed by its answer. [1] <prompt> [2] <response>

a Catalyst Statement (CS) saying how the parts relate, then each part behind its Indicator Token (IT). The output
is split back at the ITs, the CS dropped by its own marker ([0]), never by position.

What the paper does not say, chosen here and marked assumed: the CS sentences (`translation.catalyst_texts`), the
IT strings (`translation.indicator`, a template with {i}: `[{i}]`), and what happens to an output that cannot be
split. Here it is translated component by component instead, exactly as separate mode would, and the record says
so (`joint_fallback: true`); nothing is dropped. An output splits only when its markers are exactly 0 (with a CS),
1, ..., n in order, nothing stands before the first, and no part is empty or repeats another part.

The parts are the chunks `clo_lib.translate.segment` gives (lines, sentences; code and URLs never reach the model),
so long responses still work: a record's chunks are packed into joint inputs of at most `max_input_tokens`, the
first always holding the whole prompt and at least the first chunk of the response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from clo_lib.config import TranslationConfig


def marker(template: str, index: int) -> str:
    return template.format(i=index)


def marker_pattern(template: str) -> re.Pattern:
    """A regex for every marker of `template` (`[{i}]` -> `\\[(\\d+)\\]`), capturing the number."""
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)"))


def catalyst_text(cfg: TranslationConfig) -> str | None:
    """The CS sentence of `translation.catalyst`, or None for `none` (the paper's plain concatenation)."""
    return None if cfg.catalyst == "none" else cfg.catalyst_texts[cfg.catalyst]


def compose(parts: Sequence[str], template: str, catalyst: str | None) -> str:
    """One MT input: the CS behind marker 0 (if any), then each part behind markers 1..n."""
    pieces = [f"{marker(template, 0)} {catalyst}"] if catalyst else []
    pieces += [f"{marker(template, index)} {part}" for index, part in enumerate(parts, start=1)]
    return " ".join(pieces)


def split(output: str, parts: int, template: str, with_catalyst: bool) -> list[str] | None:
    """The `parts` translated parts of a joint output, or None when it cannot be split back safely: a marker
    dropped, repeated, moved or added, text before the first marker, an empty part, or a part repeating another."""
    found = list(marker_pattern(template).finditer(output))
    wanted = list(range(0 if with_catalyst else 1, parts + 1))
    if [int(match.group(1)) for match in found] != wanted or output[: found[0].start()].strip():
        return None
    ends = [match.start() for match in found[1:]] + [len(output)]
    texts = [output[match.end(): end].strip() for match, end in zip(found, ends)]
    translated = texts[1:] if with_catalyst else texts
    if not all(translated) or len(set(translated)) < len(translated):
        return None
    return translated


def pack(prompt_chunks: Sequence[str], response_chunks: Sequence[str], count_tokens: Callable[[str], int],
         max_tokens: int, template: str, catalyst: str | None) -> list[list[str]]:
    """A record's chunks as groups, one joint input each: the first holds the whole prompt and the first response
    chunk (even past `max_tokens`: the pair is the point), then more response chunks while the input fits."""
    groups: list[list[str]] = []
    current = list(prompt_chunks) + list(response_chunks[:1])
    for chunk in response_chunks[1:]:
        if count_tokens(compose(current + [chunk], template, catalyst)) <= max_tokens:
            current.append(chunk)
        else:
            groups.append(current)
            current = [chunk]
    if current:
        groups.append(current)
    return groups


@dataclass
class JointResult:
    """Per record, the translation of each of its chunks, and whether any of its joint inputs fell back."""

    translations: list[dict[str, str]]
    fallback: list[bool]
    inputs: int
    split: int


def translate_jointly(chunk_lists: Sequence[tuple[list[str], list[str]]], cfg: TranslationConfig,
                      count_tokens: Callable[[str], int],
                      translate: Callable[[list[str]], dict[str, str]]) -> JointResult:
    """Translate each record's (prompt chunks, response chunks) jointly.

    translate: texts -> {text: translation}, the stage's cached, batched translator; called once with every joint
    input, then once more with the chunks of inputs that could not be split (component by component).
    """
    template, catalyst = cfg.indicator, catalyst_text(cfg)
    groups = [pack(prompt, response, count_tokens, cfg.max_input_tokens, template, catalyst)
              for prompt, response in chunk_lists]
    inputs = {compose(group, template, catalyst) for record in groups for group in record}
    joint = translate(sorted(inputs))
    translations: list[dict[str, str]] = [{} for _ in groups]
    fallback = [False] * len(groups)
    undone: list[tuple[int, list[str]]] = []
    split_count = 0
    for index, record in enumerate(groups):
        for group in record:
            parts = split(joint[compose(group, template, catalyst)], len(group), template, catalyst is not None)
            if parts is None:
                undone.append((index, group))
                fallback[index] = True
            else:
                split_count += 1
                translations[index].update(zip(group, parts))
    if undone:
        separate = translate(sorted({chunk for _, group in undone for chunk in group}))
        for index, group in undone:
            translations[index].update({chunk: separate[chunk] for chunk in group})
    return JointResult(translations, fallback, sum(len(record) for record in groups), split_count)
