"""Where a stage's result came from: fingerprints of its config, its data and the runs it starts from.

Every stage records one in its done-marker (the corpus's report.json, a run's train_log.json, metrics.json).
`clo grid status` compares it with what the grid file asks for now and shows `stale` where they
differ; `grid run` never counts a stale stage as done; and training never continues a run or a checkpoint made
under another fingerprint.

Settings that cannot change a stage's result (where files go, how often to log or checkpoint, how a model is
saved, which variable holds a key) are left out, so changing them never makes a run stale.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from clo_lib.common.cache import digest
from clo_lib.config.schema import RunConfig
from clo_lib.method.pairs import PARALLEL_FIELDS

# What each stage's result depends on: top-level keys or sections of the resolved config, less the ignored keys.
# Evaluation depends on the trained model through the run's train fingerprint, not through the train settings.
DEPENDS_ON = {
    "translate": ("language", "data", "translation"),
    "train": ("language", "seed", "model", "data", "translation", "train"),
    "evaluate": ("language", "seed", "model", "translation", "eval"),
    "transfer": ("seed", "model", "transfer"),
}
_NEVER = {"translation.cache_dir", "translation.device", "translation.api_key_env", "eval.judge_api_key_env",
          "data.corpus_dir"}
IGNORED = {
    # the corpus is one seeded order of the source, translated as far as the pool needs (a larger pool extends
    # it, see clo_lib.grid.run); which records a run takes from it (size, flags) is the run's business
    "translate": _NEVER | {"data.size", "data.pool_size", "data.keep_flagged"},
    # nested subsets: a larger pool leaves a run's records unchanged (its data fingerprint says if they changed);
    # init_from is a path, the run it names counts through its own fingerprint; held-back validation records lie
    # outside every training subset
    "train": _NEVER | {"data.pool_size", "data.validation_size", "train.logging_steps", "train.report_to",
                       "train.save_steps", "train.save", "train.init_from"},
    "evaluate": _NEVER,
    "transfer": _NEVER,
}
# Written beside a training stage's checkpoints: the fingerprint (and config) they were made under.
CHECKPOINT_FINGERPRINT = "clo_fingerprint.json"


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key in ("model", "data", "translation", "train", "eval",
                                                                "transfer"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Keys added after outputs were made under fingerprints without them: left out while they hold the value that
# reproduces the behaviour from before they existed, so adding a key never makes finished work stale.
NEUTRAL = {"translation.mode": "separate", "translation.gguf_file": None, "data.validation_size": 0,
           "eval.mtbench_questions": "all"}
JOINT_ONLY = ("translation.catalyst", "translation.catalyst_texts", "translation.indicator")  # unused when separate


def relevant_settings(cfg: RunConfig | dict, kind: str) -> dict[str, Any]:
    """The dotted settings a `kind` stage's result depends on."""
    flat = _flatten(cfg if isinstance(cfg, dict) else cfg.to_dict())
    unused = set(JOINT_ONLY) if flat.get("translation.mode", "separate") == "separate" else set()
    unused |= {key for key, neutral in NEUTRAL.items() if flat.get(key, neutral) == neutral}
    return {key: value for key, value in flat.items()
            if key.split(".")[0] in DEPENDS_ON[kind] and key not in IGNORED[kind] and key not in unused}


def config_fingerprint(cfg: RunConfig | dict, kind: str) -> str:
    return digest(relevant_settings(cfg, kind))


def changed_settings(old: RunConfig | dict, new: RunConfig | dict, kind: str) -> list[str]:
    """`key: old → new` for every relevant setting that differs, for messages."""
    before, after = relevant_settings(old, kind), relevant_settings(new, kind)
    return [f"{key}: {before.get(key)!r} → {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)]


# ---------------------------------------------------------------------------------------------------------------
# What a path in the config points to: a path alone says nothing when the file or folder behind it is made again
# (a toy world after a version bump, a re-fetched model, a rebuilt donor, an edited prompt file)

# The config keys that name a file or folder each stage reads, less those another part already covers (a kit run
# through its own fingerprint, a transferred model through its transfer's).
PATH_KEYS = {
    "translate": ("data.path", "translation.model"),
    "train": ("model.name_or_path", "train.init_from"),
    "evaluate": ("model.name_or_path", "eval.prompts", "eval.mc_task_dir"),
    "transfer": ("model.name_or_path", "transfer.donor", "transfer.aux_vectors", "transfer.aux_text",
                 "transfer.pretrain_text"),
}
WHOLE_FILE_BYTES = 64 * 2**20  # files up to this size are hashed whole; larger ones by size and 16 spread samples
SAMPLES, SAMPLE_BYTES = 16, 2**20


def _file_digest(path: Path) -> str:
    """sha256 of a file, or for a large one (weights) of its size and 16 blocks of 1 MiB spread evenly over it: a
    new training run changes bytes throughout its weights, and reading all of a 16 GB model at every `grid status`
    would take minutes."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            for i in range(SAMPLES):
                handle.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
                h.update(handle.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _content_digest(root: str, listing: tuple) -> str:
    base = Path(root)
    return digest([[name, _file_digest(base / name if name else base)] for name, _, _ in listing])


def path_digest(path: str | Path | None) -> str | None:
    """A digest of what a file or folder holds (every file in it, hidden files such as locks left out), or None
    for no path or one that is not on this machine (a hub id: its revision stands in the config)."""
    if not path:
        return None
    root = Path(path)
    if root.is_file():
        stat = root.stat()
        return _content_digest(str(root), (("", stat.st_size, stat.st_mtime_ns),))
    if not root.is_dir():
        return None
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(root).parts))
    listing = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _content_digest(str(root), listing)


def paths_fingerprint(cfg: RunConfig, kind: str) -> dict[str, str | None]:
    """{config key: path_digest} for the paths a `kind` stage reads (PATH_KEYS); a key whose path is covered
    elsewhere (a kit run for train.init_from, a transfer for model.name_or_path) or absent is None."""
    flat = _flatten(cfg.to_dict())
    parts = {}
    for key in PATH_KEYS[kind]:
        value = flat.get(key)
        if isinstance(value, str):
            value = value.replace("{lang}", cfg.language)
        covered = (key == "train.init_from" and init_run_dir(cfg) is not None) or \
            (key == "model.name_or_path" and transferred_fingerprint(cfg) is not None)
        parts[key] = None if covered else path_digest(value)
    return parts


def stage_fingerprint(cfg: RunConfig, kind: str) -> dict[str, Any]:
    """A translation's or a transfer's fingerprint: {config, paths}."""
    return {"config": config_fingerprint(cfg, kind), "paths": paths_fingerprint(cfg, kind)}


def records_fingerprint(records: Sequence[dict]) -> str:
    """The training records' content (flags left out: they only decide which records are there)."""
    return digest([[record.get(key) for key in PARALLEL_FIELDS] for record in records])


def run_fingerprint(run_dir: str | Path) -> str | None:
    """A digest of a finished run's train fingerprint (what its weights came from), or None if there is none."""
    log = Path(run_dir) / "train_log.json"
    if not log.is_file():
        return None
    return digest(json.loads(log.read_text(encoding="utf-8")).get("fingerprint"))


def init_run_dir(cfg: RunConfig) -> Path | None:
    """The run folder that `train.init_from` names (its model/ folder's parent), if it is a kit run."""
    if not cfg.train.init_from:
        return None
    folder = Path(cfg.train.init_from)
    return folder.parent if (folder.parent / "train_log.json").is_file() or folder.name == "model" else None


def transferred_fingerprint(cfg: RunConfig) -> str | None:
    """A digest of the transfer that made `model.name_or_path` (a transfer stage's DIR/model beside its
    transfer.json), or None for any other model: the path stays the same when the transfer is made again."""
    marker = Path(cfg.model.name_or_path).parent / "transfer.json"
    if Path(cfg.model.name_or_path).name != "model" or not marker.is_file():
        return None
    return digest(json.loads(marker.read_text(encoding="utf-8")).get("fingerprint"))


def _with_base(fingerprint: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    # only for transferred models, so the fingerprints of everything made before transfers existed still match
    base = transferred_fingerprint(cfg)
    return {**fingerprint, "base": base} if base else fingerprint


def train_fingerprint(cfg: RunConfig, records: Sequence[dict] | None) -> dict[str, Any]:
    """{config, data, init[, base]}: the settings, the training records (None: not known yet), the run it starts
    from, and for a transferred base model the transfer that made it."""
    init_dir = init_run_dir(cfg)
    return _with_base({"config": config_fingerprint(cfg, "train"),
                       "data": records_fingerprint(records) if records is not None else None,
                       "init": run_fingerprint(init_dir) if init_dir else None,
                       "paths": paths_fingerprint(cfg, "train")}, cfg)


def evaluate_fingerprint(cfg: RunConfig, run_dir: str | Path | None, reference_run: str | Path | None) -> dict:
    """{config, model, reference[, base]}: the evaluation settings, the evaluated run's weights (None for a base
    model), the SFT run it is judged against, and for a transferred base model the transfer that made it."""
    return _with_base({"config": config_fingerprint(cfg, "evaluate"),
                       "model": run_fingerprint(run_dir) if run_dir else None,
                       "reference": run_fingerprint(reference_run) if reference_run else None,
                       "paths": paths_fingerprint(cfg, "evaluate")}, cfg)


def matches(stored: Any, expected: dict[str, Any] | str) -> bool:
    """Whether a recorded fingerprint is the expected one; parts of `expected` that are None are not known yet
    (a corpus not translated, a path not on this machine) and are not compared, at any depth."""
    if isinstance(expected, str) or not isinstance(stored, dict):
        return stored == expected
    return all(value is None or (matches(stored.get(key), value) if isinstance(value, dict)
                                 else stored.get(key) == value) for key, value in expected.items())
