"""English SFT data in: OpenAssistant (first turns, English, top-ranked replies), Alpaca, any hub dataset or
JSON/JSONL file, or the toy world's pool (reached by name, so the real pipeline does not import the toy world).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from clo_lib.artifacts.corpus import hub_errors, read_rows
from clo_lib.common.errors import InputError
from clo_lib.common.registry import resolve
from clo_lib.config.schema import DataConfig

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


# The toy world's English pool, by name (clo_lib.common.registry): the real pipeline does not import the toy world.
TOY_POOL = "clo_lib.toy.world:generate_english"


def load_english(cfg: DataConfig) -> LoadedData:
    """The English SFT set named by `cfg.source` (see the module docstring)."""
    source = cfg.source
    if source == "toy":
        # a built world's pool (data.path: its folder), or world 0's, generated
        rows = read_rows(Path(cfg.path) / "pool.jsonl") if cfg.path else resolve(TOY_POOL)()
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
            raise InputError("data.path is required for data.source: jsonl; expected a JSON or JSONL file")
        return english_from_rows(read_rows(cfg.path), cfg.instruction_field, cfg.response_field,
                                 id_field="id", source=Path(cfg.path).name)
    if source == "hf":
        if not cfg.path:
            raise InputError("data.path is required for data.source: hf; expected a dataset id or folder")
        return english_from_rows(_hub_rows(cfg.path, cfg.split), cfg.instruction_field, cfg.response_field,
                                 id_field="id", source=cfg.path)
    raise InputError(f"data.source = {source!r}; expected oasst1, alpaca, hf, jsonl or toy")
