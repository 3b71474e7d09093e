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

The parts are the chunks `clo_lib.mt.segment.segment` gives (lines, sentences; code and URLs never reach the model),
so long responses still work: a record's chunks are packed into joint inputs of at most `max_input_tokens`, counted
on the composed input with its markers, the first holding the whole prompt and the first chunk of the response when
they fit together. No input is ever sent over that limit (a translator would cut it, and a cut after the last
marker still splits cleanly: text lost without a trace). Two more cases go part by part from the start: a group
whose composed input cannot be split back into its own parts (text inside a part that looks like a marker, `x[2]`
or a citation `[1]`), and a single chunk too long to go jointly at all. An output that reached the translator's
`max_new_tokens` is never split either: the record falls back.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence


def marker(template: str, index: int) -> str:
    return template.format(i=index)


def marker_pattern(template: str) -> re.Pattern:
    """A regex for every marker of `template` (`[{i}]` -> `\\[(\\d+)\\]`), capturing the number."""
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)"))


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
    """A record's chunks as groups in order, one joint input each, none of whose composed input counts more than
    `max_tokens`: the first holds the whole prompt and the first response chunk when they fit together (the pair
    is the point), else the prompt goes on as far as it fits; then as many chunks a group as fit. A chunk that
    does not fit even alone with its markers is a group of its own (joint_groups sends it part by part)."""
    def fits(group: list[str]) -> bool:
        return count_tokens(compose(group, template, catalyst)) <= max_tokens

    groups: list[list[str]] = []
    current: list[str] = []
    for chunk in [*prompt_chunks, *response_chunks]:
        if current and fits(current + [chunk]):
            current.append(chunk)
        else:
            if current:
                groups.append(current)
            current = [chunk]
    if current:
        groups.append(current)
    return groups


def goes_jointly(group: Sequence[str], count_tokens: Callable[[str], int], max_tokens: int, template: str,
                 catalyst: str | None) -> bool:
    """Whether a group may be sent as one joint input: it fits the limit, and its composed input splits back into
    exactly its own parts (a part holding marker-like text, `x[2]` or `[1]`, would let a damaged output split with
    text moved between parts)."""
    text = compose(group, template, catalyst)
    return count_tokens(text) <= max_tokens and split(text, len(group), template, catalyst is not None) == list(group)
