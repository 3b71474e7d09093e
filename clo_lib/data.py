"""English SFT data in, training records out: the two ends of the data flow around translation.

`load_english(data_config)` reads the English instruction set a run starts from, as `{id, prompt_en, response_en}`
records, from one of these sources (`data.source` in params):

    oasst1  OpenAssistant oasst1 as the paper used it: the first user turn of each English conversation tree and
            its rank-0 assistant reply (data.path: the hub id, or a local JSON/JSONL export of the messages)
    alpaca  Alpaca-style JSON or JSONL: instruction, optional input (appended after a blank line), output
    hf      any Hugging Face dataset (data.path) with the columns data.instruction_field / data.response_field
    jsonl   a local JSON/JSONL file with those columns
    toy     the toy world's English questions (clo_lib.toyworld)

Rows with a missing or empty field are skipped and reported by index (`LoadedData.skipped`), never kept.

`training_records(parallel, size, keep_flagged)` is the other end: the first `size` usable records of the translated
corpus. The corpus is written in the order of one seeded permutation, and flagged records are dropped before the
cut, so for one corpus the 200-record set lies inside the 400-record set.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from clo_lib.config import DataConfig

OASST1_ID = "OpenAssistant/oasst1"
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


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local JSON list or JSONL file; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path = {str(path)!r} does not exist; expected a JSON or JSONL file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{number}: not a JSON object ({err.msg}); expected one record per line") from None
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path}: expected JSON objects (one record each)")
    return rows


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


def oasst1_conversations(messages: Sequence[dict], lang: str = "en") -> LoadedData:
    """The paper's oasst1 set: each English tree's first user turn with its rank-0 assistant reply.

    `messages` are oasst1 message rows (message_id, parent_id, role, lang, text, rank, deleted). Trees whose
    prompt has no rank-0 reply are left out (they are not "top-ranked"); empty texts are reported as skipped.
    """
    loaded = LoadedData(records=[], source="oasst1")
    best_reply: dict[str, tuple[int, dict]] = {}
    for index, row in enumerate(messages):
        if row.get("role") == "assistant" and row.get("rank") == 0 and not row.get("deleted"):
            best_reply[row.get("parent_id")] = (index, row)
    for index, row in enumerate(messages):
        if row.get("parent_id") is not None or row.get("role") != "prompter" or row.get("lang") != lang:
            continue
        if row.get("deleted") or row["message_id"] not in best_reply:
            continue
        reply_index, reply = best_reply[row["message_id"]]
        if _text(row, "text") is None or _text(reply, "text") is None:
            bad = index if _text(row, "text") is None else reply_index
            loaded.skipped.append((bad, "text missing or empty"))
            continue
        loaded.records.append({"id": f"oasst1-{row['message_id']}", "prompt_en": row["text"].strip(),
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

        return LoadedData(records=[{k: r[k] for k in ("id", "prompt_en", "response_en")}
                                   for r in toyworld.generate_english()], source="toy")
    if source == "oasst1":
        path = cfg.path or OASST1_ID
        rows = read_rows(path) if Path(path).is_file() else _hub_rows(path, cfg.split)
        return oasst1_conversations(rows)
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


def training_records(parallel: Sequence[dict[str, Any]], size: int, keep_flagged: bool = False) -> list[dict]:
    """The first `size` records of the corpus after dropping flagged ones (unless `keep_flagged`).

    Fewer usable records than `size` is a warning, not an error: the run trains on what there is and its log says so.
    """
    usable = [r for r in parallel if keep_flagged or not r.get("flags")]
    if len(usable) < size:
        dropped = len(parallel) - len(usable)
        warnings.warn(f"data.size = {size} but the corpus has {len(usable)} usable records ({dropped} flagged and "
                      "dropped); training on those. Raise data.pool_size or set data.keep_flagged to reach it.",
                      stacklevel=2)
    return usable[:size]
