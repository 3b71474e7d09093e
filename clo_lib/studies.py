"""The joint-translation study (SIBLINGS.md 1): joint against separate translation of MT-bench's question-answer
pairs with a local causal LM, scored on the flags, on whether shared terms stay consistent between question and
answer, and on echoes of the few-shot example. `clo study`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from clo_lib.common.io import append_jsonl, atomic_write_text
from clo_lib.config.load import load_config
from clo_lib.config.schema import TranslationConfig
from clo_lib.mt.backends import FEW_SHOT, catalyst_text, make_translator, translation_settings
from clo_lib.mt.cache import TranslationCache
from clo_lib.mt.records import translate_records
from clo_lib.stages.mtbench import reference_pairs

# ---------------------------------------------------------------------------------------------------------------
# A study on real English data: joint against separate with a local translator (README, "Joint translation")

STUDY_SETTINGS = [("separate", "none", "[{i}]"), ("joint", "none", "[{i}]"), ("joint", "relation", "[{i}]"),
                  ("joint", "none", "<{i}>"), ("joint", "relation", "<{i}>")]
STUDY_FLAGS = ("wrong_language", "ngram_loop", "numbers_changed")


def study_records(response_words: int = 40) -> list[dict]:
    """MT-bench's 30 first-turn questions with GPT-4's reference answers, each answer cut after the first sentence
    that reaches `response_words` words (CPU time: a 270M model writes ~8 tokens/s on 2 cores)."""
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
    """Whether a translation reproduces the few-shot example (clo_lib.mt.backends.CausalTranslator's toy-world
    question and answer, in either language) instead of translating: a weak base model's typical failure."""
    texts = [text.casefold() for text in FEW_SHOT["en"] + FEW_SHOT[lang]]
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


def add_arguments(parser) -> None:
    """`clo study --model DIR [--gguf-file F] [--languages de sw] [--out DIR]`: joint against separate translation
    of MT-bench's 30 question-answer pairs with a local causal LM (hf_causal)."""
    parser.add_argument("--model", default="outputs/models/gemma3-270m")
    parser.add_argument("--gguf-file", default="gemma-3-270m-q4_k_m.gguf")
    parser.add_argument("--languages", nargs="+", default=["de", "sw"])
    parser.add_argument("--records", type=int, default=30)
    parser.add_argument("--response-words", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--out", default="outputs/joint_study")


def command(args) -> int:
    tcfg = load_config({"language": args.languages[0], "translation": {
        "backend": "hf_causal", "model": args.model, "gguf_file": args.gguf_file or None, "batch_size": 8,
        "max_new_tokens": args.max_new_tokens}}).translation
    rows = study(tcfg, args.languages, study_records(args.response_words)[: args.records], args.out)
    atomic_write_text(Path(args.out) / "study.md", study_markdown(rows))
    print(study_markdown(rows))
    return 0
