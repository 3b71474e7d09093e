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


@dataclass
class JointResult:
    """Per record, the translation of each of its chunks, whether any of its groups went part by part, and which
    chunks did (`parted`); the joint inputs sent and how many of them split."""

    translations: list[dict[str, str]]
    fallback: list[bool]
    inputs: int
    split: int
    parted: list[set[str]]


def translate_jointly(chunk_lists: Sequence[tuple[list[str], list[str]]], cfg: TranslationConfig,
                      count_tokens: Callable[[str], int],
                      translate: Callable[[list[str], bool], dict[str, str]],
                      was_cut: Callable[[str], bool] = lambda text: False) -> JointResult:
    """Translate each record's (prompt chunks, response chunks) jointly.

    translate: (texts, joint) -> {text: translation}, the stage's cached, batched translator; called once with every
    joint input (joint=True), then once with the chunks of the groups that go part by part (joint=False: exactly
    as separate mode translates them). was_cut: whether a text's output reached the translator's max_new_tokens.
    A group goes part by part when it cannot go jointly (goes_jointly), when its output was cut, or when the
    output cannot be split back (split); its record is marked joint_fallback.
    """
    template, catalyst = cfg.indicator, catalyst_text(cfg)
    groups = [pack(prompt, response, count_tokens, cfg.max_input_tokens, template, catalyst)
              for prompt, response in chunk_lists]
    joint_ok = {tuple(group): goes_jointly(group, count_tokens, cfg.max_input_tokens, template, catalyst)
                for record in groups for group in record}
    inputs = {compose(group, template, catalyst) for record in groups for group in record if joint_ok[tuple(group)]}
    joint = translate(sorted(inputs), True)
    translations: list[dict[str, str]] = [{} for _ in groups]
    fallback = [False] * len(groups)
    undone: list[tuple[int, list[str]]] = []
    split_count = 0
    for index, record in enumerate(groups):
        for group in record:
            text = compose(group, template, catalyst)
            parts = split(joint[text], len(group), template, catalyst is not None) \
                if joint_ok[tuple(group)] and not was_cut(text) else None
            if parts is None:
                undone.append((index, group))
                fallback[index] = True
            else:
                split_count += 1
                translations[index].update(zip(group, parts))
    if undone:
        separate = translate(sorted({chunk for _, group in undone for chunk in group}), False)
        for index, group in undone:
            translations[index].update({chunk: separate[chunk] for chunk in group})
    sent = sum(joint_ok[tuple(group)] for record in groups for group in record)
    parted = [{chunk for i, group in undone if i == index for chunk in group} for index in range(len(groups))]
    return JointResult(translations, fallback, sent, split_count, parted)


# ---------------------------------------------------------------------------------------------------------------
# A study on real English data: joint against separate with a local translator (README, "Joint translation")

STUDY_SETTINGS = [("separate", "none", "[{i}]"), ("joint", "none", "[{i}]"), ("joint", "relation", "[{i}]"),
                  ("joint", "none", "<{i}>"), ("joint", "relation", "<{i}>")]
STUDY_FLAGS = ("wrong_language", "ngram_loop", "numbers_changed")


def study_records(response_words: int = 40) -> list[dict]:
    """MT-bench's 30 first-turn questions with GPT-4's reference answers, each answer cut after the first sentence
    that reaches `response_words` words (CPU time: a 270M model writes ~8 tokens/s on 2 cores)."""
    from clo_lib.mtbench import reference_pairs

    records = []
    for pair in reference_pairs():
        kept, words = [], 0
        for line in pair["response"].splitlines():
            if words >= response_words:
                break
            kept.append(line)
            words += len(line.split())
        records.append({"id": pair["id"], "prompt_en": pair["prompt"], "response_en": "\n".join(kept).strip()})
    return records


def shared_terms(prompt: str, response: str, min_letters: int = 5) -> set[str]:
    """Words of at least `min_letters` letters that a prompt and its response both contain (case-folded)."""
    def words(text: str) -> set[str]:
        return {w.casefold() for w in re.findall(rf"[^\W\d_]{{{min_letters},}}", text)}

    return words(prompt) & words(response)


def echoes(record: dict, lang: str) -> bool:
    """Whether a translation reproduces the few-shot example (clo_lib.translate.CausalTranslator's toy-world
    question and answer, in either language) instead of translating: a weak base model's typical failure."""
    from clo_lib import toyworld

    example = toyworld.evaluation_prompts(lang)[0]
    texts = [example[k].casefold() for k in ("prompt_en", "answer_en", "prompt_tgt", "answer_tgt")]
    out = (record["prompt_tgt"] + "\n" + record["response_tgt"]).casefold()
    return any(text in out for text in texts) and not any(text in (record["prompt_en"] + record["response_en"])
                                                          .casefold() for text in texts)


def consistency(records: Sequence[dict]) -> dict[str, float | int]:
    """Of the records whose English prompt and response share a term (shared_terms), the share whose translated
    prompt and response also share one: a crude sign that a term was carried across the two the same way. Over
    records whose translations carry no flag and do not echo the few-shot example: a model that copies the same
    text into both parts would pass it otherwise."""
    candidates = [r for r in records if shared_terms(r["prompt_en"], r["response_en"]) and not r["flags"]
                  and not echoes(r, r["lang"])]
    kept = sum(bool(shared_terms(r["prompt_tgt"], r["response_tgt"])) for r in candidates)
    return {"consistent": kept, "with_shared_terms": len(candidates),
            "consistency": round(kept / len(candidates), 3) if candidates else None}


def study(cfg_translation: TranslationConfig, languages: Sequence[str], records: Sequence[dict], out_dir,
          log=print) -> list[dict]:
    """Every (language, setting) of STUDY_SETTINGS through translate_records with one local translator: the
    reversibility rate, the fallbacks, the quality flags and the consistency measure; rows also written to
    <out_dir>/study.jsonl as they finish (a killed study resumes from its translation cache)."""
    import dataclasses
    import json
    import time
    from pathlib import Path

    from clo_lib.io import append_jsonl
    from clo_lib.translate import TranslationCache, make_translator, translate_records, translation_settings

    out_dir = Path(out_dir)
    translator = make_translator(dataclasses.replace(cfg_translation, mode="joint"), "en", languages[0])
    rows = []
    for lang in languages:
        for mode, catalyst, indicator in STUDY_SETTINGS:
            tcfg = dataclasses.replace(cfg_translation, mode=mode, catalyst=catalyst, indicator=indicator)
            translator.use_markers(indicator if mode == "joint" else None, catalyst_text(tcfg))
            cache = TranslationCache(out_dir / "cache", tcfg.backend, f"{tcfg.model}/{tcfg.gguf_file}", "en", lang,
                                     translation_settings(tcfg))
            start = time.perf_counter()
            parallel, stats = translate_records(records, translator, cache, lang, tcfg, progress=False)
            row = {"language": lang, "mode": mode, "catalyst": catalyst if mode == "joint" else "–",
                   "indicator": indicator if mode == "joint" else "–", "records": len(parallel),
                   "seconds": round(time.perf_counter() - start, 1), **consistency(parallel)}
            if mode == "joint":
                row["reversibility"] = round(sum(not r["joint_fallback"] for r in parallel) / len(parallel), 3)
                row["fallback_records"] = sum(r["joint_fallback"] for r in parallel)
            for flag in STUDY_FLAGS:
                row[flag] = sum(any(f.endswith(flag) for f in r["flags"]) for r in parallel)
            row["unflagged"] = sum(not r["flags"] for r in parallel)
            row["echoes_example"] = sum(echoes(r, lang) for r in parallel)
            rows.append(row)
            append_jsonl(out_dir / "study.jsonl", [row])
            append_jsonl(out_dir / "examples.jsonl", [{**row, "examples": parallel[:3]}])
            log(json.dumps(row))
    return rows


def study_markdown(rows: Sequence[dict]) -> str:
    """The study's rows as one markdown table (written beside study.jsonl as study.md)."""
    lines = ["| language | mode | catalyst | indicator | reversibility | fallback records | unflagged | echoes "
             "example | consistency | wrong_language | ngram_loop | numbers_changed |", "|---" * 12 + "|"]
    for r in rows:
        reversible = f"{r['reversibility']:.0%}" if "reversibility" in r else "–"
        consistent = f"{r['consistent']}/{r['with_shared_terms']}" if r.get("with_shared_terms") else "–"
        lines.append(f"| {r['language']} | {r['mode']} | {r['catalyst']} | `{r['indicator']}` | {reversible} | "
                     f"{r.get('fallback_records', '–')} | {r['unflagged']} | {r['echoes_example']} | {consistent} | "
                     f"{r['wrong_language']} | {r['ngram_loop']} | {r['numbers_changed']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m clo_lib.joint study --model DIR [--gguf-file F] [--languages de sw] [--out DIR]`: joint against
    separate translation of MT-bench's 30 question-answer pairs with a local causal LM (hf_causal)."""
    import argparse
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clo_lib.config import load_config

    parser = argparse.ArgumentParser(prog="python -m clo_lib.joint", description=main.__doc__)
    parser.add_argument("command", choices=["study"])
    parser.add_argument("--model", default="outputs/models/gemma3-270m")
    parser.add_argument("--gguf-file", default="gemma-3-270m-q4_k_m.gguf")
    parser.add_argument("--languages", nargs="+", default=["de", "sw"])
    parser.add_argument("--records", type=int, default=30)
    parser.add_argument("--response-words", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--out", default="outputs/joint_study")
    args = parser.parse_args(argv)
    tcfg = load_config({"language": args.languages[0], "translation": {
        "backend": "hf_causal", "model": args.model, "gguf_file": args.gguf_file or None, "batch_size": 8,
        "max_new_tokens": args.max_new_tokens}}).translation
    from pathlib import Path

    from clo_lib.io import atomic_write_text

    rows = study(tcfg, args.languages, study_records(args.response_words)[: args.records], args.out)
    atomic_write_text(Path(args.out) / "study.md", study_markdown(rows))
    print(study_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
