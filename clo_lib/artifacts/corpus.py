"""English SFT data in, training records out: the two ends of the data flow around translation.

`load_english(data_config)` reads the English instruction set a run starts from, as `{id, prompt_en, response_en}`
records, from one of these sources (`data.source` in params):

    oasst1  OpenAssistant oasst1 as the paper used it: the first user turn of each English conversation tree and
            its rank-0 assistant reply (data.path: the hub id, or a local JSON/JSONL export of the messages);
            about 4,250 such pairs exist, fewer than the paper's 6,400 (see OASST_HINT for what reaches more)
    oasst2  the same from OpenAssistant oasst2 (a superset of oasst1, collected until late 2023)
    alpaca  Alpaca-style JSON or JSONL: instruction, optional input (appended after a blank line), output
    hf      any Hugging Face dataset (data.path) with the columns data.instruction_field / data.response_field
    jsonl   a local JSON/JSONL file with those columns
    toy     the toy world's English questions (clo_lib.toy.world)

Rows with a missing or empty field are skipped and reported by index (`LoadedData.skipped`), never kept.

`run_records(cfg)` is the other end: the records a run trains on, the first `data.size` usable records of the
translated corpus (see its docstring). The corpus is written in the order of one seeded permutation, and flagged
records are dropped before the cut, so for one corpus the 200-record set lies inside the 400-record set.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from clo_lib.common.errors import CloError, InputError, MissingInputError
from clo_lib.config.schema import RunConfig
from clo_lib.method.pairs import PARALLEL_FIELDS


def read_text(path: Path, what: str, key: str | None = None) -> str:
    """A text file's content, or one sentence for a missing file, a folder or bytes that are not UTF-8."""
    named = f"{key} = {str(path)!r}" if key else str(path)
    if path.is_dir():
        raise MissingInputError(f"{named} is a folder; expected {what}")
    if not path.is_file():
        raise MissingInputError(f"{named} does not exist; expected {what}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{named} is not UTF-8 text (byte {err.start}); expected {what}") from None


def numbered_rows(path: str | Path, what: str = "a JSON or JSONL file", key: str | None = None):
    """(line number, row) of a local JSON list or JSONL file; a bad line is named by file and line number."""
    path = Path(path)
    text = read_text(path, what, key)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); expected {what}") from None
        numbered = [(None, row) for row in rows]
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: not a JSON object ({err.msg}; a truncated line?); expected one "
                                 "record per line") from None
    for number, row in numbered:
        if not isinstance(row, dict):
            where = f"{path}:{number}" if number else str(path)
            raise InputError(f"{where}: a JSON {type(row).__name__}; expected JSON objects (one record each)")
    return numbered


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local JSON list or JSONL file (data.path); a clear error for anything else."""
    return [row for _, row in numbered_rows(path, key="data.path")]


class HubUnreachableError(CloError, ConnectionError):
    pass


@contextmanager
def hub_errors(what: str):
    """Turn the many ways a hub download fails (offline, no DNS, gated, typo) into one sentence."""
    try:
        yield
    except (FileNotFoundError, ValueError):
        raise
    except Exception as err:  # datasets and huggingface_hub raise many unrelated types here
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubUnreachableError(f"could not load {what} from the Hugging Face hub ({first_line}); check the "
                                  "name, your network and HF_TOKEN, or point the config at a local file") from None


# ---------------------------------------------------------------------------------------------------------------
# The translated corpus, and the records a run trains on


class ShortCorpusError(InputError):
    """A corpus with fewer usable records than a run asks for; the message says how many there are."""


VALIDATION_FILE = "validation.jsonl"  # a corpus's held-back prompts (data.validation_size), beside parallel.jsonl


def corpus_dir(cfg: RunConfig) -> Path:
    """Where a language's parallel corpus lives: `data.corpus_dir`, or `<output_dir>/data/<lang>/`."""
    return Path(cfg.data.corpus_dir) if cfg.data.corpus_dir else Path(cfg.output_dir) / "data" / cfg.language


_CORPORA: dict[tuple, list[dict]] = {}  # read_corpus's last few results, by file identity


def read_corpus(path: str | Path) -> list[dict]:
    """The records of a parallel.jsonl, each checked; a bad line is named by file and line number.

    Remembered by path, size and modification time: `grid status` asks for a corpus once per run of its language.
    """
    path = Path(path)
    stat = path.stat() if path.is_file() else None
    identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns) if stat else None
    if identity in _CORPORA:
        return _CORPORA[identity]
    records = []
    for number, record in numbered_rows(path, "the translation stage's parallel.jsonl"):
        for name in PARALLEL_FIELDS:
            value = record.get(name)
            # an empty translation is a record the stage flagged (and training drops); unflagged, it is damage
            if value is None or (isinstance(value, str) and not value.strip() and not record.get("flags")):
                raise InputError(f"{path}:{number}: field {name!r} is missing or empty; expected a non-empty string")
        records.append(record)
    if not records:
        raise ShortCorpusError(f"{path} holds no records; translate again (clo translate)")
    if len(_CORPORA) >= 8:
        _CORPORA.clear()
    _CORPORA[identity] = records
    return records


def usable_records(records: Sequence[dict[str, Any]], keep_flagged: bool = False) -> list[dict]:
    """The records training may use: all with `keep_flagged`, else those whose translation carries no flag."""
    return [r for r in records if keep_flagged or not r.get("flags")]


def run_records(cfg: RunConfig, corpus: str | Path | Sequence[dict] | None = None) -> list[dict]:
    """The records a run of `cfg` trains on, the same for the CLI, the notebook, the grid and a script:

    the first `data.size` usable records of the corpus (its order is one seeded permutation, so the 200-record
    set lies inside the 400-record set). With `data.same_ids_across_languages`, only ids usable in every one of
    those languages' corpora (found beside this one: <data>/<lang>/parallel.jsonl) count, so every language
    trains on the same source examples. Fewer usable records than `data.size` is an error, not a smaller run.

    corpus: a parallel.jsonl path, records already read, or None for `<output_dir>/data/<lang>/parallel.jsonl`.
    """
    path = corpus_dir(cfg) / "parallel.jsonl" if corpus is None else None
    if isinstance(corpus, (str, Path)):
        path = Path(corpus)
    records = read_corpus(path) if path is not None else list(corpus)
    keep = usable_records(records, cfg.data.keep_flagged)
    others = [lang for lang in cfg.data.same_ids_across_languages if lang != cfg.language]
    if others:
        if path is None:
            raise InputError("data.same_ids_across_languages needs the corpus as a file, so the other languages' "
                             "corpora can be found beside it")
        shared = {r["id"] for r in keep}
        for lang in others:
            other = path.parent.parent / lang / "parallel.jsonl"
            if not other.is_file():
                raise ShortCorpusError(f"data.same_ids_across_languages names {lang}, but {other} does not exist; "
                                       f"translate {lang} first")
            shared &= {r["id"] for r in usable_records(read_corpus(other), cfg.data.keep_flagged)}
        keep = [r for r in keep if r["id"] in shared]
    if len(keep) < cfg.data.size:
        where = str(path) if path is not None else "the corpus"
        flagged = len(records) - len(usable_records(records, cfg.data.keep_flagged))
        across = f", {len(keep)} of them usable in all of {', '.join([cfg.language, *others])}" if others else ""
        raise ShortCorpusError(
            f"data.size = {cfg.data.size} but {where} has {len(records) - flagged} usable records ({flagged} "
            f"flagged{across}); translate more (raise data.pool_size), lower data.size, or set data.keep_flagged")
    return keep[:cfg.data.size]
