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
    toy     the toy world's English questions (clo_lib.toyworld)

Rows with a missing or empty field are skipped and reported by index (`LoadedData.skipped`), never kept.

`run_records(cfg)` is the other end: the records a run trains on, the first `data.size` usable records of the
translated corpus (see its docstring). The corpus is written in the order of one seeded permutation, and flagged
records are dropped before the cut, so for one corpus the 200-record set lies inside the 400-record set.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from clo_lib.config import DataConfig, RunConfig

OASST_IDS = {"oasst1": "OpenAssistant/oasst1", "oasst2": "OpenAssistant/oasst2"}
ALPACA_DEFAULT = "tatsu-lab/alpaca"


@dataclass
class LoadedData:
    records: list[dict]  # {id, prompt_en, response_en}
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (row index in the source, why)
    source: str = ""

    def summary(self) -> str:
        text = f"{len(self.records)} English records from {self.source}"
        if self.skipped:
            shown = "; ".join(f"row {i}: {why}" for i, why in self.skipped[:5])
            more = f" (and {len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
            text += f"; skipped {len(self.skipped)}: {shown}{more}"
        return text


def _read_text(path: Path, what: str, key: str | None = None) -> str:
    """A text file's content, or one sentence for a missing file, a folder or bytes that are not UTF-8."""
    named = f"{key} = {str(path)!r}" if key else str(path)
    if path.is_dir():
        raise FileNotFoundError(f"{named} is a folder; expected {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{named} does not exist; expected {what}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{named} is not UTF-8 text (byte {err.start}); expected {what}") from None


def numbered_rows(path: str | Path, what: str = "a JSON or JSONL file", key: str | None = None):
    """(line number, row) of a local JSON list or JSONL file; a bad line is named by file and line number."""
    path = Path(path)
    text = _read_text(path, what, key)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); expected {what}") from None
        numbered = [(None, row) for row in rows]
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON object ({err.msg}; a truncated line?); expected one "
                                 "record per line") from None
    for number, row in numbered:
        if not isinstance(row, dict):
            where = f"{path}:{number}" if number else str(path)
            raise ValueError(f"{where}: a JSON {type(row).__name__}; expected JSON objects (one record each)")
    return numbered


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local JSON list or JSONL file (data.path); a clear error for anything else."""
    return [row for _, row in numbered_rows(path, key="data.path")]


def _text(row: dict, name: str) -> str | None:
    value = row.get(name)
    return value if isinstance(value, str) and value.strip() else None


def english_from_rows(rows: Iterable[dict], instruction_field: str, response_field: str,
                      input_field: str | None = None, id_field: str | None = None, source: str = "") -> LoadedData:
    """`{id, prompt_en, response_en}` from rows with named columns; rows with an empty field are skipped."""
    loaded = LoadedData(records=[], source=source)
    for index, row in enumerate(rows):
        prompt, response = _text(row, instruction_field), _text(row, response_field)
        missing = [name for name, value in ((instruction_field, prompt), (response_field, response)) if value is None]
        if missing:
            loaded.skipped.append((index, f"{' and '.join(missing)} missing or empty"))
            continue
        extra = _text(row, input_field) if input_field else None
        if extra:  # Alpaca's `input` is part of the instruction
            prompt = f"{prompt}\n\n{extra}"
        record_id = str(row[id_field]) if id_field and row.get(id_field) is not None else f"{source or 'row'}-{index}"
        loaded.records.append({"id": record_id, "prompt_en": prompt.strip(), "response_en": response.strip()})
    return loaded


# Published counts (dataset cards of derived sets, train and validation together; not re-counted here, no network):
# oasst1 has about 4,250 English top-1 conversations, oasst2 about 5,400. The paper's 6,400 "top-ranked single-turn
# conversations" are more than oasst1's English first turns: how the authors reached 6,400 is unknown.
OASST_HINT = ("; English first turns with a rank-0 reply number about 4,250 in oasst1 (train and validation) and "
              "5,400 in oasst2: try data.split: train+validation, data.source: oasst2, or data.oasst_turns: all")


def oasst_conversations(messages: Sequence[dict], lang: str = "en", turns: str = "first",
                        source: str = "oasst1") -> LoadedData:
    """Single-turn records from OpenAssistant message rows (oasst1 and oasst2 share the format: message_id,
    parent_id, role, lang, text, rank, deleted).

    turns="first" (the paper's set): each English tree's first user turn with its rank-0 assistant reply; trees
    whose prompt has no rank-0 reply are left out (they are not "top-ranked").
    turns="all" (assumed, to reach larger pools): every English user turn on a tree's top-ranked path (every
    message above it rank 0) with its rank-0 reply; the turns before it go into the instruction as context.
    Empty texts are reported as skipped.
    """
    loaded = LoadedData(records=[], source=source)
    by_id = {row.get("message_id"): (index, row) for index, row in enumerate(messages)}
    best_reply: dict[str, tuple[int, dict]] = {}
    for index, row in enumerate(messages):
        if row.get("role") == "assistant" and row.get("rank") == 0 and not row.get("deleted"):
            best_reply[row.get("parent_id")] = (index, row)

    def path_to(row: dict) -> list[dict] | None:
        """The messages from the root to `row`, or None when one is off the top-ranked path or not in `lang`."""
        path = [row]
        while path[0].get("parent_id") is not None:
            parent = by_id.get(path[0]["parent_id"])
            if parent is None:
                return None
            path.insert(0, parent[1])
        above = path[1:-1]  # the root has no rank
        if any(m.get("rank") != 0 or m.get("deleted") or m.get("lang") != lang for m in above):
            return None
        return path

    for index, row in enumerate(messages):
        if row.get("role") != "prompter" or row.get("lang") != lang or row.get("deleted"):
            continue
        if turns == "first" and row.get("parent_id") is not None:
            continue
        if row.get("message_id") not in best_reply:
            continue
        path = path_to(row)
        if path is None:
            continue
        reply_index, reply = best_reply[row["message_id"]]
        if any(_text(m, "text") is None for m in path) or _text(reply, "text") is None:
            bad = reply_index if _text(reply, "text") is None else by_id[next(
                m["message_id"] for m in path if _text(m, "text") is None)][0]
            loaded.skipped.append((bad, "text missing or empty"))
            continue
        prompt = row["text"].strip()
        if len(path) > 1:
            said = "\n".join(f"{'User' if m['role'] == 'prompter' else 'Assistant'}: {m['text'].strip()}"
                              for m in path[:-1])
            prompt = f"Earlier in this conversation:\n{said}\n\n{prompt}"
        loaded.records.append({"id": f"{source}-{row['message_id']}", "prompt_en": prompt,
                               "response_en": reply["text"].strip()})
    return loaded


def _hub_rows(path: str, split: str) -> list[dict]:
    """Rows of a hub dataset (or a local dataset folder); real code, never reached by the offline tests."""
    from datasets import load_dataset, load_from_disk

    if Path(path).is_dir():
        dataset = load_from_disk(path)
        dataset = dataset[split] if hasattr(dataset, "keys") else dataset
    else:
        with hub_errors(f"dataset {path!r}"):
            dataset = load_dataset(path, split=split)
    return list(dataset)


class HubUnreachableError(ConnectionError):
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


def load_english(cfg: DataConfig) -> LoadedData:
    """The English SFT set named by `cfg.source` (see the module docstring)."""
    source = cfg.source
    if source == "toy":
        from clo_lib import toyworld

        # a built world's pool (data.path: its folder), or world 0's, generated
        rows = read_rows(Path(cfg.path) / "pool.jsonl") if cfg.path else toyworld.generate_english()
        return LoadedData(records=[{k: r[k] for k in ("id", "prompt_en", "response_en")} for r in rows],
                          source="toy")
    if source in ("oasst1", "oasst2"):
        path = cfg.path or OASST_IDS[source]
        rows = read_rows(path) if Path(path).is_file() else _hub_rows(path, cfg.split)
        return oasst_conversations(rows, turns=cfg.oasst_turns, source=source)
    if source == "alpaca":
        path = cfg.path or ALPACA_DEFAULT
        rows = read_rows(path) if Path(path).is_file() else _hub_rows(path, cfg.split)
        return english_from_rows(rows, "instruction", "output", input_field="input", source="alpaca")
    if source == "jsonl":
        if not cfg.path:
            raise ValueError("data.path is required for data.source: jsonl; expected a JSON or JSONL file")
        return english_from_rows(read_rows(cfg.path), cfg.instruction_field, cfg.response_field,
                                 id_field="id", source=Path(cfg.path).name)
    if source == "hf":
        if not cfg.path:
            raise ValueError("data.path is required for data.source: hf; expected a dataset id or folder")
        return english_from_rows(_hub_rows(cfg.path, cfg.split), cfg.instruction_field, cfg.response_field,
                                 id_field="id", source=cfg.path)
    raise ValueError(f"data.source = {source!r}; expected oasst1, alpaca, hf, jsonl or toy")


# ---------------------------------------------------------------------------------------------------------------
# The translated corpus, and the records a run trains on


class ShortCorpusError(ValueError):
    """A corpus with fewer usable records than a run asks for; the message says how many there are."""


def corpus_dir(cfg: RunConfig) -> Path:
    """Where a language's parallel corpus lives: `data.corpus_dir`, or `<output_dir>/data/<lang>/`."""
    return Path(cfg.data.corpus_dir) if cfg.data.corpus_dir else Path(cfg.output_dir) / "data" / cfg.language


_CORPORA: dict[tuple, list[dict]] = {}  # read_corpus's last few results, by file identity


def read_corpus(path: str | Path) -> list[dict]:
    """The records of a parallel.jsonl, each checked; a bad line is named by file and line number.

    Remembered by path, size and modification time: `grid status` asks for a corpus once per run of its language.
    """
    from clo_lib.pairs import PARALLEL_FIELDS

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
                raise ValueError(f"{path}:{number}: field {name!r} is missing or empty; expected a non-empty string")
        records.append(record)
    if not records:
        raise ShortCorpusError(f"{path} holds no records; translate again (python -m clo_lib.translate)")
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
            raise ValueError("data.same_ids_across_languages needs the corpus as a file, so the other languages' "
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
