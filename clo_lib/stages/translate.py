"""Translation stage: an English SFT set to the parallel corpus CLO trains on (PAPER.md, "The data", step 2).

    load English records ─► split each text into chunks the model can take ─► translate the chunks not yet cached,
    longest first, in batches ─► join the chunks back ─► flag doubtful translations ─► parallel.jsonl + dataset

Splitting keeps the layout: every line is translated on its own, leading list markers and blank lines stay as they
are, fenced code blocks, inline code and URLs are never sent to the model, and a line longer than
`translation.max_input_tokens` is cut at sentence ends (or, for one overlong sentence, between words). Numbers stay
inside their sentence, where the model needs them for grammar, and are checked afterwards: a translation whose
digits differ from the source's is flagged `numbers_changed`.

Backends (`translation.backend`):
    hf      a seq2seq model through generate(): M2M100 (the paper's facebook/m2m100_1.2B), NLLB-200, MADLAD-400,
            Marian opus-mt (one model per pair; `{src}`/`{tgt}` in the model id are filled in)
    hf_causal  a local causal LM (also from GGUF): through its chat template, or few-shot for a base model
    openai  an OpenAI-compatible chat endpoint as an LLM translator (key from the environment variable only)
    toy     the toy world's exact translator (clo_lib.toy.translator, reached by name)
The library parts are in clo_lib.mt (segment, backends, cache, flags, records); this module is the stage.

Every chunk's translation is cached on disk, keyed by (backend, model, source, target, text): a rerun translates
nothing twice and a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from clo_lib.artifacts.corpus import VALIDATION_FILE, ShortCorpusError, corpus_dir, usable_records
from clo_lib.artifacts.provenance import stage_fingerprint
from clo_lib.common.io import atomic_write_json, atomic_write_text, write_jsonl
from clo_lib.common.languages import SOURCE_LANGUAGE, get_language
from clo_lib.config.load import load_config
from clo_lib.config.schema import RunConfig
from clo_lib.method.pairs import nested_subset
from clo_lib.mt.backends import check_pair, make_translator
from clo_lib.mt.cache import translation_cache
from clo_lib.mt.records import translate_records
from clo_lib.stages.sources import OASST_HINT, load_english


def run_translate(cfg: RunConfig, out_dir: str | Path | None = None, progress: bool = True,
                    english: Any = None) -> dict[str, Any]:
    """Load the English set, translate it in one seeded order until `data.pool_size` (or `data.size`) records are
    usable (unflagged, unless data.keep_flagged), and write parallel.jsonl, dataset/ and report.{json,md}.

    A source with fewer records than that is refused before anything is translated. If every source record is
    translated and still too few are usable, the corpus and its report are written and ShortCorpusError is raised.
    english: the `LoadedData` already read by the caller (the notebook shows it first), so it is not read twice.
    """
    out_dir = Path(out_dir) if out_dir else corpus_dir(cfg)
    tcfg, tgt = cfg.translation, cfg.language
    check_pair(tcfg, SOURCE_LANGUAGE, tgt)  # before reading data or loading a model
    loaded = english if english is not None else load_english(cfg.data)
    needed = cfg.data.pool_size or cfg.data.size
    if needed > len(loaded.records):
        raise ShortCorpusError(f"data.pool_size (or data.size) = {needed} but {loaded.summary()}; lower it or use "
                               f"a larger source{OASST_HINT if cfg.data.source in ('oasst1', 'oasst2') else ''}")
    # The whole source in one seeded order; the corpus is a prefix of it, so training's first N usable records
    # (and a larger corpus made later) keep the nesting. Validation prompts come from the order's far end,
    # translated first, so no corpus however large reaches them.
    order = nested_subset(loaded.records, len(loaded.records), cfg.data.subset_seed)
    cache = translation_cache(cfg)
    corrupt = cache.corrupt_lines
    translator = make_translator(tcfg, SOURCE_LANGUAGE, tgt)
    totals: Counter = Counter()
    held_back: list[dict] = []
    if cfg.data.validation_size:
        if needed + cfg.data.validation_size > len(order):
            raise ShortCorpusError(f"data.pool_size (or data.size) + data.validation_size = {needed} + "
                                   f"{cfg.data.validation_size} but {loaded.summary()}; lower one of them")
        held_back = _translate_usable(order[::-1][: len(order) - needed], cfg.data.validation_size, translator,
                                      cache, cfg, totals, progress)
    parallel = _translate_usable(order[: len(order) - len(held_back)], needed, translator, cache, cfg, totals,
                                 progress)
    usable = len(usable_records(parallel, cfg.data.keep_flagged))
    flag_counts = Counter(flag for record in parallel for flag in record["flags"])
    report = {
        "language": tgt, "backend": tcfg.backend, "model": tcfg.model, "source": loaded.source,
        "source_records": len(loaded.records), "skipped_source_rows": [list(s) for s in loaded.skipped],
        "records": len(parallel), "usable_records": usable, "needed_records": needed,
        "flagged_records": sum(bool(r["flags"]) for r in parallel),
        "flags": dict(sorted(flag_counts.items())), "cache_file": str(cache.path),
        "cache_corrupt_lines_redone": corrupt, **{k: v for k, v in totals.items() if not k.startswith("joint_")},
        "seconds": round(totals["seconds"], 3),
        "chunks_per_s": round(totals["translated"] / totals["seconds"], 2) if totals["seconds"] else None,
        "fingerprint": stage_fingerprint(cfg, "translate"),
        "mode": tcfg.mode,
    }
    if tcfg.mode == "joint":
        split_records = sum(not r["joint_fallback"] for r in parallel)
        report["joint"] = {"catalyst": tcfg.catalyst, "indicator": tcfg.indicator,
                           "inputs": totals["joint_inputs"], "inputs_split": totals["joint_split"],
                           "records_split": split_records, "fallback_records": len(parallel) - split_records,
                           "reversibility": round(split_records / len(parallel), 4) if parallel else None}
    if held_back:
        kept = usable_records(held_back, cfg.data.keep_flagged)[: cfg.data.validation_size]
        report["validation"] = {"file": VALIDATION_FILE, "records": len(kept), "translated": len(held_back)}
        write_jsonl(out_dir / VALIDATION_FILE, [validation_row(record) for record in kept])
    write_parallel(out_dir, parallel)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", report_markdown(report, parallel))
    if held_back and report["validation"]["records"] < cfg.data.validation_size:
        raise ShortCorpusError(f"only {report['validation']['records']} of the {cfg.data.validation_size} "
                               f"validation records (data.validation_size) are usable in {out_dir / VALIDATION_FILE}; "
                               "lower it or use a larger source")
    if usable < needed:
        raise ShortCorpusError(f"all {len(parallel)} records of {loaded.source} are translated and {usable} are "
                               f"usable ({report['flagged_records']} flagged), fewer than the {needed} needed; the "
                               f"corpus is in {out_dir}: lower data.pool_size, set data.keep_flagged, or use a "
                               "larger source")
    return report


def _translate_usable(order: Sequence[dict], needed: int, translator, cache, cfg: RunConfig, totals: Counter,
                     progress: bool) -> list[dict]:
    """Translate `order` from its start until `needed` records are usable (or all are translated); the counts
    go into `totals`."""
    parallel: list[dict] = []
    batch = needed
    while True:
        part, stats = translate_records(order[len(parallel): len(parallel) + batch], translator, cache, cfg.language,
                                        cfg.translation, progress)
        parallel += part
        totals.update({k: v for k, v in stats.items() if k in ("chunks", "translated", "cached", "seconds",
                                                               "joint_inputs", "joint_split")})
        usable = len(usable_records(parallel, cfg.data.keep_flagged))
        if usable >= needed or len(parallel) == len(order):
            return parallel
        # Translate as many more as the usable share so far says are missing, with a margin.
        share = max(usable / len(parallel), 0.05)
        batch = math.ceil((needed - usable) / share * 1.1) + 1


def validation_row(record: dict) -> dict:
    """A held-back record as an evaluation prompt row: its prompts, and its responses as references for the
    per-token NLL (ref_nll_en, ref_nll_tgt; clo_lib.stages.evaluate), not for accuracy (they are free text)."""
    return {"id": record["id"], "prompt_en": record["prompt_en"], "prompt_tgt": record["prompt_tgt"],
            "reference_en": record["response_en"], "reference_tgt": record["response_tgt"]}


def write_parallel(out_dir: Path, parallel: list[dict]) -> None:
    """parallel.jsonl (atomic) and the same rows as a `datasets` dataset (written aside, then swapped in)."""
    import shutil

    import datasets

    write_jsonl(out_dir / "parallel.jsonl", parallel)
    staging = out_dir / ".dataset.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # saving a few MB needs no progress bar
    try:
        datasets.Dataset.from_list(parallel).save_to_disk(str(staging))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    final = out_dir / "dataset"
    old = out_dir / ".dataset.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def report_markdown(report: dict, parallel: Sequence[dict], examples: int = 3) -> str:
    lines = [f"# Translation into {get_language(report['language']).name} ({report['language']})", "",
             f"- source: {report['source']} ({report['source_records']} usable English records, "
             f"{len(report['skipped_source_rows'])} rows skipped)",
             f"- backend: {report['backend']}, model: {report['model']}",
             f"- records: {report['records']}, flagged: {report['flagged_records']} (dropped from training unless "
             f"data.keep_flagged); usable: {report['usable_records']} of the {report['needed_records']} needed",
             f"- chunks: {report['chunks']} distinct, {report['translated']} translated now, {report['cached']} "
             f"from the cache, {report['seconds']} s" + (f", {report['chunks_per_s']} chunks/s"
                                                         if report["chunks_per_s"] else "")]
    if report.get("joint"):
        j = report["joint"]
        lines.append(f"- joint translation (catalyst {j['catalyst']}, indicator {j['indicator']}): "
                     f"{j['records_split']} of {report['records']} records split back cleanly (reversibility "
                     f"{j['reversibility']:.1%}); {j['fallback_records']} translated part by part instead "
                     f"(joint_fallback); {j['inputs_split']} of {j['inputs']} joint inputs split")
    lines.append("")
    if report["flags"]:
        lines += ["| flag | records |", "|---|---|"] + [f"| {k} | {v} |" for k, v in report["flags"].items()] + [""]
    lines += ["## Examples", ""]
    for record in parallel[:examples]:
        lines += [f"**{record['id']}** {' '.join(record['flags'])}", "",
                  f"> EN: {record['prompt_en']}", ">", f"> {report['language'].upper()}: {record['prompt_tgt']}", "",
                  f"> EN: {record['response_en']}", ">", f"> {report['language'].upper()}: {record['response_tgt']}",
                  ""]
    return "\n".join(lines)


def add_arguments(parser) -> None:
    """`clo translate RUN.yaml [--set key=value] [--out DIR]`: write the run's parallel corpus."""
    parser.add_argument("configs", nargs="+", help="YAML layers, later overriding earlier")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="folder for the corpus (default: <output_dir>/data/<language>)")


def command(args) -> int:
    report = run_translate(load_config(*args.configs, overrides=args.overrides), args.out)
    summary = {k: report[k] for k in ("language", "records", "flagged_records", "translated", "cached", "seconds")}
    print(json.dumps(summary))
    return 0
