"""The grid runner: expand a grid file into stages, run them with papermill in dependency order, resume, report.

    python -m clo_lib.grid plan   params/grids/toy.yaml            # every stage, what it waits for, counts
    python -m clo_lib.grid run    params/grids/toy.yaml [--only GLOB] [--slices NAME|all]
                                                            [--executor local|slurm|submitit-local]
    python -m clo_lib.grid status params/grids/toy.yaml            # the same table with each stage's state

A grid file names config layers, models and slices (a product of languages × methods × sizes × seeds); see
params/grids/*.yaml. Slices may have names; `default_slices` says which run when --slices is not given. It
expands into stages, each one notebook (or, for `prepare`, one command):

    prepare/<id>          commands that must finish first (the toy world builds its base model here); one marked
                          `always: true` (idempotent) runs at every `grid run`, so what it rebuilds shows stale
    transfer/<model>-<lang>-s<seed>   for a model with transfer.donor (or transfer.pretrain_steps) set:
                          python -m clo_lib.transfer gives it the donor's vocabulary; that model's runs train and
                          evaluate <output_dir>/transfer/<model>-<lang>-s<seed>/model
    translate/<lang>      01_translate, once per language, for the largest size any run of it needs
    train/<run>           02_train; sft_dpo starts from the SFT run of the same model, language, size and seed
    evaluate/<run>        03_evaluate; waits for the SFT run's evaluation, which it is judged against
    evaluate/<model>-<lang>-base-s<seed>   the untrained model, as method `base`
    analyze               04_analyze: results.csv, figures, report.md

Each stage writes into `<output_dir>/<run>/` (translation into `<output_dir>/data/<lang>/`) and is done when its
marker exists: the corpus's report.json, train_log.json, metrics.json. A run of the grid skips what is done, so after
Ctrl-C or a kill it finishes the rest with nothing run twice (training itself resumes from its checkpoint). A failing
stage leaves `<stage>.failed.json` with the tail of its error; stages that need it are skipped, the others go on,
and the exit code is 1.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from clo_lib import lock
from clo_lib.config import ConfigError, RunConfig, load_config, nest_dotted, read_yaml, save_config
from clo_lib.io import atomic_write_json
from clo_lib.provenance import (
    CHECKPOINT_FINGERPRINT,
    config_fingerprint,
    digest,
    evaluate_fingerprint,
    matches,
    stage_fingerprint,
    train_fingerprint,
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NOTEBOOK_OF = {"translate": "01_translate.ipynb", "train": "02_train.ipynb", "evaluate": "03_evaluate.ipynb",
               "analyze": "04_analyze.ipynb"}
GRID_KEYS = {"name", "description", "output_dir", "layers", "overrides", "models", "slices", "default_slices", "base",
             "prepare", "resources", "same_ids_across_languages"}
SLICE_KEYS = {"name", "models", "languages", "methods", "sizes", "seeds", "overrides"}
STAGE_KINDS = ("prepare", "transfer", "translate", "train", "evaluate", "analyze")


class GridError(ValueError):
    """A grid file that cannot be expanded; the message is one sentence naming the file and the problem."""


@dataclass
class Stage:
    id: str
    kind: str
    workdir: Path  # where the executed notebook, the failure marker and (for runs) everything else go
    done_file: Path
    deps: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    command: list[str] | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # model, lang, size, method, seed: for tables
    config: RunConfig | None = None  # the run's resolved config, saved as run.yaml before it starts
    always: bool = False  # prepare: an idempotent command run at every `grid run` (it rebuilds what is out of date)

    @property
    def failed_file(self) -> Path:
        return self.workdir / f"{self.kind}.failed.json"

    @property
    def lock_file(self) -> Path:
        """Held while a runner runs this stage (clo_lib.lock): another runner leaves the stage alone."""
        return self.workdir / f".{self.id.replace('/', '__')}.lock"

    def own_state(self) -> str:
        """done, stale (made under another fingerprint than the grid now gives), running (another runner holds it),
        failed or pending; see states()."""
        if self.kind == "analyze":
            return "done" if _analysis_current(self) else ("failed" if self.failed_file.exists() else "pending")
        if self.done_file.exists():
            if self.config is None:  # prepare: its command has no config
                return "done"
            marker = json.loads(self.done_file.read_text(encoding="utf-8"))
            if not matches(marker.get("fingerprint"), self.expected_fingerprint()):
                return "stale"
            if self.kind == "translate" and marker.get("usable_records", 0) < (self.config.data.pool_size or 0):
                # a larger size joined the grid, or the corpus came out short: translating again extends it
                return "failed" if self.failed_file.exists() else "pending"
            return "done"
        if self.kind == "train" and _checkpoints_of_another_run(self):
            return "stale"
        if lock.holder_of(self.lock_file) is not None:
            return "running"
        return "failed" if self.failed_file.exists() else "pending"

    def expected_fingerprint(self) -> Any:
        """What this stage's marker must record to count as done under the grid file as it is now."""
        cfg = self.config
        if self.kind in ("translate", "transfer"):
            return stage_fingerprint(cfg, self.kind)
        if self.kind == "train":
            return train_fingerprint(cfg, _training_records_now(cfg))
        trained = self.workdir if self.facts.get("method") != "base" else None
        return evaluate_fingerprint(cfg, trained, self.parameters.get("reference_run"))

    def outputs(self) -> list[Path]:
        """What this stage wrote, moved aside when it is run again as stale."""
        if self.kind in ("translate", "train", "transfer"):
            return [self.workdir]  # the corpus; the run folder (its evaluation depends on it and is stale too)
        if self.kind == "evaluate":
            return [self.workdir / name for name in ("metrics.json", "generations.jsonl", "judgments.jsonl",
                                                     NOTEBOOK_OF["evaluate"], "evaluate.kernel.log")]
        return []


@dataclass
class Grid:
    name: str
    path: Path
    output_dir: Path
    stages: dict[str, Stage]  # in dependency order
    resources: dict[str, dict[str, Any]]


def states(stages: list[Stage]) -> dict[str, str]:
    """Each stage's state, in dependency order. A stage that depends on a stale one is stale too: what it was made
    from is about to be made again. The analysis is pending while anything it reports on is not done."""
    result: dict[str, str] = {}
    for stage in stages:
        state = stage.own_state()
        if stage.kind == "analyze":
            if state == "done" and any(result.get(dep, "done") != "done" for dep in stage.deps):
                state = "pending"
        elif state == "done" and any(result.get(dep) == "stale" for dep in stage.deps):
            state = "stale"
        result[stage.id] = state
    return result


def _training_records_now(cfg: RunConfig) -> list[dict] | None:
    """The records a run of `cfg` would train on from the corpus as it is now; None when it cannot train yet (no
    corpus, or too short: the training stage says so when it runs)."""
    from clo_lib.data import corpus_dir, run_records

    if not (corpus_dir(cfg) / "parallel.jsonl").is_file():
        return None
    try:
        return run_records(cfg)
    except (ValueError, FileNotFoundError):
        return None


def _checkpoints_of_another_run(stage: Stage) -> bool:
    """An unfinished run whose checkpoints were made under another fingerprint (training would refuse them)."""
    # the last stage's checkpoints, and those of earlier stages in folders of their own (sft_dpo: sft/)
    markers = [stage.workdir / "checkpoints" / CHECKPOINT_FINGERPRINT,
               *stage.workdir.glob(f"*/checkpoints/{CHECKPOINT_FINGERPRINT}")]
    return any(not matches(json.loads(m.read_text(encoding="utf-8")).get("fingerprint"),
                           stage.expected_fingerprint()) for m in markers if m.is_file())


def move_aside(grid: Grid, stale: list[Stage]) -> Path:
    """Move what stale stages wrote into <output_dir>/stale/<time>/ (same relative paths), so they run again and
    nothing is lost."""
    import shutil

    aside = grid.output_dir / "stale" / time.strftime("%Y%m%d-%H%M%S")
    for stage in stale:
        for path in stage.outputs():
            if path.exists():
                target = aside / path.resolve().relative_to(grid.output_dir.resolve())
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), str(target))
    return aside


def _analysis_current(stage: Stage) -> bool:
    """The analysis is done when report.md is newer than every metrics.json of the grid."""
    if not stage.done_file.exists():
        return False
    newest = max((p.stat().st_mtime for p in stage.workdir.glob("*/metrics.json")), default=0.0)
    return stage.done_file.stat().st_mtime >= newest


# ---------------------------------------------------------------------------------------------------------------
# Expanding a grid file


def _as_list(value: Any, where: str, path: Path) -> list:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, (str, int)):
        return [value]
    raise GridError(f"{path}: {where} = {value!r}; expected a list")


def _with_seed(value: Any, seed: int, lang: str | None = None) -> Any:
    """`value` with "{seed}" (and, given `lang`, "{lang}") filled in every string (a whole "{seed}" becomes the
    number itself)."""
    if isinstance(value, dict):
        return {k: _with_seed(v, seed, lang) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_seed(v, seed, lang) for v in value]
    if value == "{seed}":
        return seed
    if isinstance(value, str) and lang is not None:
        value = value.replace("{lang}", lang)
    return value.replace("{seed}", str(seed)) if isinstance(value, str) else value


def _check_type(value: Any, kind: type, where: str, expected: str, path: Path) -> None:
    if value is not None and not isinstance(value, kind):
        raise GridError(f"{path}: {where} = {value!r}; expected {expected}")


def _mapping(value: Any, where: str, path: Path) -> dict:
    """A mapping of config overrides (dotted keys allowed), or {} for nothing."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{path}: {where} = {value!r}; expected a mapping of config keys to values "
                        "(e.g. {train.lam: 0.3})")
    return value


def _strings(value: Any, where: str, expected: str, path: Path) -> list[str]:
    items = _as_list(value, where, path)
    if not all(isinstance(item, str) for item in items):
        raise GridError(f"{path}: {where} = {value!r}; expected a list of {expected}")
    return items


def _whole_numbers(value: Any, where: str, minimum: int, path: Path) -> list[int]:
    items = _as_list(value, where, path)
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= minimum for i in items):
        raise GridError(f"{path}: {where} = {value!r}; expected a list of whole numbers ≥ {minimum}")
    return items


def _check_keys(data: dict, allowed: set[str], where: str, path: Path) -> None:
    for key in data:
        if key not in allowed:
            guess = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            raise GridError(f"{path}: unknown key {where}{key!r}{hint}; expected one of {', '.join(sorted(allowed))}")


def _layer_path(layer: str, grid_path: Path) -> str:
    """Layers are repo-relative (params/presets/toy.yaml), grid-relative, or `preset: NAME` style names."""
    for candidate in (Path(layer), REPO / layer, grid_path.parent / layer):
        if candidate.is_file():
            return str(candidate)
    raise GridError(f"{grid_path}: layer {layer!r} does not exist; expected a YAML file such as "
                    "params/presets/toy.yaml")


def _chosen_slices(slices: list, data: dict, asked: list[str] | None, path: Path) -> list:
    """The slices to expand: those named in `asked` (["all"]: every one), else the grid's default_slices, else all."""
    names = asked or _strings(data.get("default_slices"), "default_slices", "slice names", path) or ["all"]
    if names == ["all"]:
        return slices
    known = [piece.get("name") for piece in slices if isinstance(piece, dict) and piece.get("name")]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise GridError(f"{path}: no slice named {', '.join(map(repr, unknown))}; its slices are "
                        f"{', '.join(map(str, known)) or 'unnamed'} (or all)")
    return [piece for piece in slices if isinstance(piece, dict) and piece.get("name") in names]


def run_id(model: str, lang: str, method: str, size: int, seed: int, variant: str = "") -> str:
    return f"{model}-{lang}-{method}-n{size}-s{seed}" + (f"-{variant}" if variant else "")


def slice_variant(piece: dict) -> str:
    """What tells a slice's runs from the plain ones: "" without overrides, else the slice's name, or "o" and a
    digest of its overrides for an unnamed slice (an ablation run of its own, never merged into the plain run)."""
    overrides = piece.get("overrides") or {}
    if not overrides:
        return ""
    return str(piece["name"]) if piece.get("name") else "o" + digest(nest_dotted(overrides))[:6]


def load_grid(path: str | Path, chosen: list[str] | None = None) -> Grid:
    """Read, validate and expand a grid file; every run's config is validated here, before anything runs.

    `chosen`: the names of the slices to expand (["all"]: every one); None: the grid's `default_slices`, or every
    slice when it names none.
    """
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist; the grids are in params/grids/")
    try:
        data = read_yaml(path)
    except ConfigError as err:
        raise GridError(str(err)) from None
    if not isinstance(data, dict):
        raise GridError(f"{path}: expected a mapping of grid keys (name, models, slices, ...)")
    _check_keys(data, GRID_KEYS, "", path)
    for key in ("name", "description", "output_dir"):
        _check_type(data.get(key), str, key, "a string", path)
    _check_type(data.get("base", True), bool, "base", "true or false", path)
    name = str(data.get("name") or path.stem)
    output_dir = Path(data.get("output_dir") or f"outputs/{name}")
    layers = [_layer_path(layer, path) for layer in _strings(data.get("layers"), "layers", "YAML files", path)]
    common = _mapping(data.get("overrides"), "overrides", path)
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise GridError(f"{path}: models must map a short label to its config overrides, e.g. "
                        "{llama3-8b: {model: {name_or_path: meta-llama/Meta-Llama-3-8B}}}")
    for label, settings in models.items():
        _mapping(settings, f"models.{label}", path)
    slices = _as_list(data.get("slices"), "slices", path)
    if not slices:
        raise GridError(f"{path}: slices is empty; expected at least one of languages x methods x sizes x seeds")
    slices = _chosen_slices(slices, data, chosen, path)
    resources = _mapping(data.get("resources"), "resources", path)
    _check_keys(resources, set(STAGE_KINDS), "resources.", path)
    for kind, settings in resources.items():
        if not isinstance(settings, dict):
            raise GridError(f"{path}: resources.{kind} = {settings!r}; expected a mapping of submitit parameters "
                            "(gpus_per_node, mem_gb, timeout_min, ...)")

    # 1. the runs: the union of every slice's product, in a stable order
    wanted: dict[str, dict] = {}
    for number, piece in enumerate(slices, 1):
        if not isinstance(piece, dict):
            raise GridError(f"{path}: slice {number} is {piece!r}; expected a mapping")
        _check_keys(piece, SLICE_KEYS, f"in slice {number}: ", path)
        labels = _as_list(piece.get("models"), f"slice {number} models", path) or list(models)
        for label in labels:
            if label not in models:
                raise GridError(f"{path}: slice {number} names model {label!r}; expected one of {', '.join(models)}")
        for field_name in ("languages", "methods", "sizes"):
            if not piece.get(field_name):
                raise GridError(f"{path}: slice {number} has no {field_name}; expected a list")
        languages = _strings(piece["languages"], f"slice {number} languages", "language codes", path)
        methods = _strings(piece["methods"], f"slice {number} methods", "method names", path)
        sizes = _whole_numbers(piece["sizes"], f"slice {number} sizes", 1, path)
        seeds = _whole_numbers(piece.get("seeds", [0]), f"slice {number} seeds", 0, path)
        _mapping(piece.get("overrides"), f"slice {number} overrides", path)
        _check_type(piece.get("name"), str, f"slice {number} name", "a name of letters, digits, '-', '_' or '.'",
                    path)
        if piece.get("name") and not re.fullmatch(r"[A-Za-z0-9_.-]+", piece["name"]):
            raise GridError(f"{path}: slice {number} name = {piece['name']!r}; expected letters, digits, '-', '_' "
                            "or '.' (it names run folders)")
        variant = slice_variant(piece)
        overrides = nest_dotted(piece.get("overrides") or {})
        for label in labels:
            for lang in languages:
                for method in methods:
                    for size in sizes:
                        for seed in seeds:
                            rid = run_id(label, lang, method, size, seed, variant)
                            spec = wanted.setdefault(rid, {
                                "model": label, "lang": lang, "method": method, "size": size, "seed": seed,
                                "overrides": piece.get("overrides") or {}, "variant": variant, "slice": number})
                            if nest_dotted(spec["overrides"]) != overrides:
                                raise GridError(f"{path}: slices {spec['slice']} and {number} both make run {rid} "
                                                "with different settings (overrides); expected one slice per run: "
                                                "give one of them another name")

    same_ids = data.get("same_ids_across_languages", False)
    _check_type(same_ids, bool, "same_ids_across_languages", "true or false", path)
    # Every language trains on the same source examples: only ids usable in all the grid's corpora count.
    shared_languages = sorted({spec["lang"] for spec in wanted.values()}) if same_ids else []

    def resolve(spec: dict, label_for_error: str) -> RunConfig:
        layer = {"language": spec["lang"], "name": label_for_error, "seed": spec["seed"],
                 "output_dir": str(output_dir), "data": {"size": max(1, int(spec["size"])),
                 **({"same_ids_across_languages": shared_languages} if same_ids else {})},
                 "train": {"method": spec.get("method_for_config", spec["method"])}}
        overrides = [nest_dotted(common), nest_dotted(models[spec["model"]] or {}), nest_dotted(spec["overrides"])]
        try:
            return load_config(*layers, *(_with_seed(o, spec["seed"], spec["lang"]) for o in overrides), layer)
        except ConfigError as err:
            raise GridError(f"{path}: run {label_for_error}: {err}") from None

    stages: dict[str, Stage] = {}
    seeds = sorted({spec["seed"] for spec in wanted.values()})
    prepare_of: dict[int, list[str]] = {seed: [] for seed in seeds}  # the prepare stages a seed's runs wait for
    for number, item in enumerate(_as_list(data.get("prepare"), "prepare", path), 1):
        if (not isinstance(item, dict) or not {"id", "command", "done"} <= set(item)
                or not set(item) <= {"id", "command", "done", "always"}
                or not isinstance(item["command"], list) or not all(isinstance(c, (str, int)) for c in item["command"])
                or not isinstance(item["id"], str) or not isinstance(item["done"], str)
                or not isinstance(item.get("always", False), bool)):
            raise GridError(f"{path}: prepare item {number} = {item!r}; expected id (a name), command (a list of "
                            "words), done (a file it makes) and optionally always (true: an idempotent command that "
                            "runs at every grid run)")
        # An item naming {seed} is one stage per seed of the grid (the toy sweep builds one world per seed).
        per_seed = "{seed}" in json.dumps(item)
        for seed in (seeds if per_seed else [None]):
            concrete = _with_seed(item, seed) if per_seed else item
            stage_id = f"prepare/{concrete['id']}" + (f"-s{seed}" if per_seed else "")
            stages[stage_id] = Stage(id=stage_id, kind="prepare", workdir=output_dir / "prepare",
                                     done_file=Path(concrete["done"]), command=[str(c) for c in concrete["command"]],
                                     always=bool(item.get("always", False)))
            for wanted_seed in ([seed] if per_seed else seeds):
                prepare_of[wanted_seed].append(stage_id)

    # 2. the corpora: one per language and translation setup (the same for every run of a language, unless
    # overrides make the source or its order depend on the seed, as the toy sweep's worlds do), translated for the
    # largest size any of its runs needs and cut into nested subsets
    configs = {rid: resolve(spec, rid) for rid, spec in wanted.items()}
    corpora: dict[tuple[str, str], list[str]] = {}
    for rid, cfg in configs.items():
        corpora.setdefault((cfg.language, config_fingerprint(cfg, "translate")), []).append(rid)
    languages = [lang for lang, _ in corpora]
    corpus_stage: dict[str, str] = {}
    for (lang, fingerprint), rids in corpora.items():
        several = languages.count(lang) > 1
        corpus_name = f"{lang}-{fingerprint[:8]}" if several else lang
        corpus = output_dir / "data" / corpus_name
        pool = max(configs[rid].data.size for rid in rids)
        for rid in rids:
            configs[rid].data.pool_size = pool
            if several:
                configs[rid].data.corpus_dir = str(corpus)
            corpus_stage[rid] = f"translate/{corpus_name}"
        cfg = configs[rids[0]]
        waits = sorted({stage for rid in rids for stage in prepare_of[wanted[rid]["seed"]]})
        stages[f"translate/{corpus_name}"] = Stage(
            id=f"translate/{corpus_name}", kind="translate", workdir=corpus, done_file=corpus / "report.json",
            deps=waits, config=cfg, facts={"lang": lang, "size": pool},
            parameters={"language": lang, "output_dir": str(output_dir)})

    # 3. vocabulary transfers: a model whose settings name transfer.donor (or transfer.pretrain_steps, for method
    # none) is transferred once per language and seed (clo_lib.transfer), and its runs train from the result
    transfer_of: dict[tuple[str, str, int], str] = {}

    def transferred(cfg: RunConfig, spec: dict) -> list[str]:
        """Point `cfg` at its model's transfer (made a stage the first time); the stages it must wait for."""
        if not (cfg.transfer.donor or cfg.transfer.pretrain_steps):
            return []
        key = (spec["model"], spec["lang"], spec["seed"])
        if key not in transfer_of:
            name = f"{spec['model']}-{spec['lang']}-s{spec['seed']}"
            workdir = (output_dir / "transfer" / name).resolve()  # the command runs in the repository
            transfer_of[key] = f"transfer/{name}"
            stages[transfer_of[key]] = Stage(
                id=transfer_of[key], kind="transfer", workdir=workdir, done_file=workdir / "transfer.json",
                deps=list(prepare_of[spec["seed"]]), config=copy.deepcopy(cfg),
                command=["python", "-m", "clo_lib.transfer", str(workdir / "transfer.yaml"), "--out", str(workdir)],
                facts={"model": spec["model"], "lang": spec["lang"], "seed": spec["seed"]})
        cfg.model.name_or_path = str(stages[transfer_of[key]].workdir / "model")
        return [transfer_of[key]]

    evaluate_ids = []
    for rid, spec in wanted.items():
        cfg = configs[rid]
        before_training = transferred(cfg, spec)
        run_dir = output_dir / rid
        facts = {k: spec[k] for k in ("model", "lang", "method", "size", "seed", "variant")}
        # sft_dpo starts from, and every run is judged against, the SFT run of its own slice variant; an ablation
        # slice without SFT runs is judged against the plain SFT run
        sft = run_id(spec["model"], spec["lang"], "sft", spec["size"], spec["seed"], spec["variant"])
        plain_sft = run_id(spec["model"], spec["lang"], "sft", spec["size"], spec["seed"])
        reference = sft if sft in wanted else plain_sft
        # with same_ids_across_languages, every language's corpus of this seed must be there first
        shared = [corpus_stage[other] for other, o in wanted.items() if o["seed"] == spec["seed"]
                  and o["model"] == spec["model"] and o["lang"] in shared_languages]
        train_deps = sorted({corpus_stage[rid], *shared}) + prepare_of[spec["seed"]] + before_training
        if spec["method"] == "sft_dpo" and sft in wanted and cfg.train.trainable != "lora":
            # SFT+DPO's first stage is exactly the SFT run: start from its weights instead of training it again.
            cfg.train.init_from = str(output_dir / sft / "model")
            train_deps.append(f"train/{sft}")
        params = {"language": spec["lang"], "output_dir": str(output_dir), "run_dir": str(run_dir)}
        stages[f"train/{rid}"] = Stage(id=f"train/{rid}", kind="train", workdir=run_dir,
                                       done_file=run_dir / "train_log.json", deps=train_deps, config=cfg,
                                       facts=facts, parameters=dict(params))
        eval_deps = [f"train/{rid}"]
        # every notebook parameter that has a default for hand use is set: an empty reference_run or base_run
        # means none (03's defaults point at the demo's runs)
        eval_params = dict(params, method=spec["method"], model_label=spec["model"], reference_run="", base_run="",
                           variant=spec["variant"])
        if rid != reference and reference in wanted:
            eval_deps.append(f"evaluate/{reference}")
            eval_params["reference_run"] = str(output_dir / reference)
        stages[f"evaluate/{rid}"] = Stage(id=f"evaluate/{rid}", kind="evaluate", workdir=run_dir,
                                          done_file=run_dir / "metrics.json", deps=eval_deps, config=cfg,
                                          facts=facts, parameters=eval_params)
        evaluate_ids.append(f"evaluate/{rid}")

    if data.get("base", True):
        for (label, lang, seed) in sorted({(s["model"], s["lang"], s["seed"]) for s in wanted.values()}):
            rid = f"{label}-{lang}-base-s{seed}"
            spec = {"model": label, "lang": lang, "method": "sft", "size": 1, "seed": seed, "overrides": {},
                    "variant": ""}
            cfg = resolve(spec, rid)
            before_evaluating = transferred(cfg, spec)
            run_dir = output_dir / rid
            sizes = sorted({s["size"] for s in wanted.values() if (s["model"], s["lang"], s["seed"]) ==
                            (label, lang, seed)})
            # The base model is judged against the SFT run of the smallest size, if there is one.
            sft = run_id(label, lang, "sft", sizes[0], seed)
            params = {"language": lang, "output_dir": str(output_dir), "run_dir": str(run_dir), "method": "base",
                      "model_path": cfg.model.name_or_path, "model_label": label, "reference_run": "", "base_run": ""}
            deps = list(prepare_of[seed]) + before_evaluating
            if sft in wanted:
                params["reference_run"] = str(output_dir / sft)
                deps.append(f"evaluate/{sft}")
            stages[f"evaluate/{rid}"] = Stage(id=f"evaluate/{rid}", kind="evaluate", workdir=run_dir,
                                              done_file=run_dir / "metrics.json", deps=deps, config=cfg,
                                              facts={"model": label, "lang": lang, "method": "base", "size": None,
                                                     "seed": seed}, parameters=params)
            evaluate_ids.append(f"evaluate/{rid}")

    stages["analyze"] = Stage(id="analyze", kind="analyze", workdir=output_dir, done_file=output_dir / "report.md",
                              deps=evaluate_ids, parameters={"grid_dir": str(output_dir), "grid_name": name,
                                                             "notes": str(data.get("description") or ""),
                                                             "grid_file": str(path.resolve())})
    return Grid(name=name, path=path, output_dir=output_dir, stages=_in_dependency_order(stages), resources=resources)


def run_states(grid_file: str | Path) -> dict[str, str]:
    """Each evaluated run folder of a grid (every slice, not only the default ones) and its evaluation's state
    under the grid file as it is now: what the report may trust (done) and what it must leave out (stale)."""
    stages = list(load_grid(grid_file, ["all"]).stages.values())
    state = states(stages)  # over every stage: an evaluation is stale when what it was made from is
    return {stage.workdir.name: state[stage.id] for stage in stages if stage.kind == "evaluate"}


def _in_dependency_order(stages: dict[str, Stage]) -> dict[str, Stage]:
    ordered: dict[str, Stage] = {}

    def visit(stage_id: str, trail: tuple) -> None:
        if stage_id in ordered:
            return
        if stage_id in trail:
            raise GridError(f"stages depend on each other in a cycle: {' -> '.join(trail + (stage_id,))}")
        for dep in stages[stage_id].deps:
            visit(dep, trail + (stage_id,))
        ordered[stage_id] = stages[stage_id]

    for stage_id in stages:
        visit(stage_id, ())
    return ordered


def select(grid: Grid, only: list[str] | None) -> list[Stage]:
    """Stages whose id matches any glob in `only` (a bare word matches inside the id), plus what they wait for.

    The analysis is left out of a slice unless asked for; when asked for, it reports on whatever the slice (and
    earlier runs) produced, without pulling in every run of the grid.
    """
    if not only:
        return list(grid.stages.values())
    patterns = [p if any(ch in p for ch in "*?[") else f"*{p}*" for p in only]
    chosen: set[str] = set()

    def take(stage_id: str) -> None:
        if stage_id not in chosen:
            chosen.add(stage_id)
            if stage_id == "analyze":
                return
            for dep in grid.stages[stage_id].deps:
                take(dep)

    for stage_id in grid.stages:
        if any(fnmatch.fnmatchcase(stage_id, p) for p in patterns) and (stage_id != "analyze" or "analyze" in only):
            take(stage_id)
    if not chosen:
        raise GridError(f"--only {' '.join(only)} matches no stage; `python -m clo_lib.grid plan GRID` lists them")
    return [stage for stage_id, stage in grid.stages.items() if stage_id in chosen]


# ---------------------------------------------------------------------------------------------------------------
# Plan and status tables


def table(stages: list[Stage], with_state: bool) -> str:
    state = states(stages) if with_state else {}
    lines = []
    header = f"{'stage':52s} {'model':14s} {'lang':4s} {'size':>5s} {'method':8s} waits for"
    lines.append(("state    " if with_state else "") + header)
    for stage in stages:
        f = stage.facts
        waits = ", ".join(stage.deps) if len(stage.deps) <= 3 else f"{len(stage.deps)} stages"
        size = "" if f.get("size") is None else str(f["size"])
        method = str(f.get("method", "")) + (f"+{f['variant']}" if f.get("variant") else "")
        row = (f"{stage.id:52s} {str(f.get('model', '')):14s} {str(f.get('lang', '')):4s} "
               f"{size:>5s} {method:8s} {waits}")
        lines.append((f"{state[stage.id]:8s} " if with_state else "") + row)
    counts = {kind: sum(s.kind == kind for s in stages) for kind in STAGE_KINDS}
    lines.append("stages: " + ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) + f" ({len(stages)} in all)")
    if with_state:
        counts = list(state.values())
        lines.append(f"done {counts.count('done')}, stale {counts.count('stale')}, failed {counts.count('failed')}, "
                     f"running {counts.count('running')}, left {counts.count('pending')}")
        if counts.count("stale"):
            lines.append("stale: made under another config or data than the grid file now gives; "
                         "`grid run --rerun-stale` moves them aside and runs them again")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Running stages


def _error_tail(err: BaseException, limit: int = 3000) -> str:
    text = f"{type(err).__name__}: {err}"
    return text[-limit:]


def execute_stage(stage: Stage) -> None:
    """Run one stage in a fresh process or kernel; raise on failure. Used by every executor."""
    stage.workdir.mkdir(parents=True, exist_ok=True)
    if stage.command is not None:  # prepare, transfer
        if stage.config is not None:  # a transfer's command reads the model's resolved config
            save_config(stage.config, stage.workdir / "transfer.yaml")
        # "python" means this interpreter (the kit's venv), not whatever python is first on PATH.
        command = [sys.executable if c in ("python", "python3") and i == 0 else c for i, c in enumerate(stage.command)]
        # Streamed line by line to the console and the stage's log: a toy world's pretraining takes minutes.
        lines = []
        with open(stage.workdir / f"{stage.id.split('/')[-1]}.log", "w", encoding="utf-8") as log_file, \
                subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process:
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()
                lines.append(line)
                print(f"  {stage.id} | {line.rstrip()}", flush=True)
        if process.returncode != 0:
            raise RuntimeError(f"command {' '.join(stage.command)} exited {process.returncode}: "
                               f"{''.join(lines)[-2000:]}")
        return
    import papermill as pm

    parameters = dict(stage.parameters)
    if stage.config is not None:
        config_file = stage.workdir / ("translate.yaml" if stage.kind == "translate" else "run.yaml")
        save_config(stage.config, config_file)
        parameters["config_files"] = [str(config_file.resolve())]
    # Paths handed to notebooks are absolute: the kernel starts in notebooks/.
    for key in ("output_dir", "run_dir", "reference_run", "grid_dir"):
        if parameters.get(key):
            parameters[key] = str(Path(parameters[key]).resolve())
    if parameters.get("model_path") and Path(parameters["model_path"]).exists():
        parameters["model_path"] = str(Path(parameters["model_path"]).resolve())
    notebook = NOTEBOOK_OF[stage.kind]
    # The kernel process writes its own warnings to our stderr; keep them in the stage's folder instead.
    with _stderr_to(stage.workdir / f"{stage.kind}.kernel.log"):
        pm.execute_notebook(str(NOTEBOOKS / notebook), str(stage.workdir / notebook), parameters=parameters,
                            cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False, log_output=False)


@contextmanager
def _stderr_to(path: Path):
    """Point file descriptor 2 (inherited by child processes such as kernels) at `path` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _run_and_record(stage: Stage, force: bool = False) -> tuple[str, float | None]:
    """("done" | "failed", seconds), or ("held by pid … on … since …", None) when another runner holds the stage
    (clo_lib.lock). A failure leaves its marker with the error's tail; a stage another runner finished meanwhile
    is done with nothing run, unless `force` (an `always` prepare step)."""
    holder = lock.acquire(stage.lock_file)
    if holder is not None:
        return f"held by {lock.describe(holder)}", None
    try:
        start = time.perf_counter()
        if not force and stage.own_state() == "done":  # another runner finished it since this one planned
            return "done", 0.0
        stage.failed_file.unlink(missing_ok=True)
        try:
            execute_stage(stage)
        except Exception as err:  # any error of a stage is that stage's failure, not the grid's
            atomic_write_json(stage.failed_file, {"stage": stage.id, "error": _error_tail(err),
                                                  "when": time.strftime("%Y-%m-%d %H:%M:%S")})
            return "failed", time.perf_counter() - start
        return "done", time.perf_counter() - start
    finally:
        lock.release(stage.lock_file)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """One line per stage: counts, elapsed time, and time left estimated from the stages of each kind so far."""

    def __init__(self, stages: list[Stage], log: Callable[[str], None]):
        self.left = {s.id: s.kind for s in stages}
        self.done = self.failed = self.blocked = 0
        self.durations: dict[str, list[float]] = {}
        self.start = time.perf_counter()
        self.log = log

    def started(self, stage: Stage) -> None:
        self.log(f"[{time.strftime('%H:%M:%S')}] {stage.id}: started")

    def finished(self, stage: Stage, outcome: str, seconds: float | None = None) -> None:
        self.left.pop(stage.id, None)
        if outcome == "done":
            self.done += 1
        elif outcome == "failed":
            self.failed += 1
        else:
            self.blocked += 1
        if seconds is not None and outcome == "done":
            self.durations.setdefault(stage.kind, []).append(seconds)
        # stages of a kind not seen yet are estimated from the others, never from prepare steps (a toy world's
        # pretraining would make every training run look like a minute and a half)
        everything = [d for kind, ds in self.durations.items() if kind != "prepare" for d in ds]
        fallback = sum(everything) / len(everything) if everything else 0.0
        eta = sum((sum(self.durations[k]) / len(self.durations[k])) if self.durations.get(k) else fallback
                  for k in self.left.values())
        took = f" in {_clock(seconds)}" if seconds is not None else ""
        self.log(f"[done {self.done} · failed {self.failed} · skipped {self.blocked} · left {len(self.left)}] "
                 f"{stage.id}: {outcome}{took} · elapsed {_clock(time.perf_counter() - self.start)}"
                 + (f" · ~{_clock(eta)} left" if self.left and everything else ""))


def run_grid(grid: Grid, only: list[str] | None = None, executor: str = "local",
             log: Callable[[str], None] = print, rerun_stale: bool = False) -> int:
    """Run every selected stage not yet done, in dependency order. Exit code 0 when all are done.

    Stale stages (made under another config or data) stop the grid before anything runs, unless `rerun_stale`:
    then what they wrote moves to <output_dir>/stale/<time>/ and they run again.
    """
    stages = select(grid, only)
    selected = {s.id for s in stages}
    # `always` prepare steps run first, done or not: their commands rebuild what is out of date (a toy world of an
    # older version, a changed GGUF), and the stages built on what they rebuild then read as stale below
    for stage in [s for s in stages if s.kind == "prepare" and s.always and s.done_file.exists()]:
        log(f"[{time.strftime('%H:%M:%S')}] {stage.id}: checking (it rebuilds what is out of date)")
        outcome_of, _ = _run_and_record(stage, force=True)
        if outcome_of != "done":
            raise GridError(f"{stage.id} could not check what it prepares ({outcome_of}; {stage.failed_file}); "
                            "fix it and run the grid again")
    state = states(stages)
    stale = [s for s in stages if state[s.id] == "stale"]
    if stale and not rerun_stale:
        names = ", ".join(s.id for s in stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
        raise GridError(f"{len(stale)} stages were made under another config or data than {grid.path} now gives "
                        f"({names}); rerun with --rerun-stale to move them to {grid.output_dir / 'stale'}/ and run "
                        "them again, or restore the grid file")
    if stale:
        log(f"{len(stale)} stale stages: their outputs move to {move_aside(grid, stale)}")
    todo = [s for s in stages if state[s.id] != "done"]
    log(f"grid {grid.name}: {len(stages)} stages, {len(stages) - len(todo)} already done, {len(todo)} to run "
        f"({executor}); outputs in {grid.output_dir}")
    progress = Progress(todo, log)
    outcome: dict[str, str] = {s.id: "done" for s in stages if s.id not in {t.id for t in todo}}

    def blocked_by(stage: Stage) -> str | None:
        if stage.kind == "analyze":  # it reports on whatever finished, failures included
            return None
        for dep in stage.deps:
            if dep in selected and outcome.get(dep) != "done":
                return dep
        return None

    if executor == "local":
        for stage in todo:
            if (dep := blocked_by(stage)) is not None:
                outcome[stage.id] = "skipped"
                progress.finished(stage, f"skipped (needs {dep})")
                continue
            progress.started(stage)
            state, seconds = _run_and_record(stage)
            outcome[stage.id] = state
            progress.finished(stage, state if seconds is not None else f"skipped: {state}", seconds)
    else:
        _run_with_submitit(grid, todo, outcome, blocked_by, progress, executor)
    failed = [s for s in todo if outcome.get(s.id) != "done"]
    for stage in failed:
        if outcome.get(stage.id, "").startswith("held by"):
            continue
        if stage.failed_file.exists():
            error = json.loads(stage.failed_file.read_text())["error"].strip().splitlines()
            log(f"FAILED {stage.id}: {error[-1] if error else ''} (details: {stage.failed_file})")
    held = [s.id for s in todo if outcome.get(s.id, "").startswith("held by")]
    if held:
        log(f"{len(held)} stages are being run by another runner of this grid ({', '.join(held[:3])}"
            f"{' ...' if len(held) > 3 else ''}): left to it; run again once it has finished")
    return 1 if failed else 0


def _run_with_submitit(grid: Grid, todo: list[Stage], outcome: dict, blocked_by, progress: Progress,
                       executor: str) -> None:
    """Submit stages as jobs, one wave of ready stages at a time, each wave waiting for the one before.

    Waves keep the dependency order without scheduler-specific dependency flags, so the same code runs on SLURM
    and on submitit's local executor (which the tests use). Per-kind resources come from the grid's `resources`.
    """
    try:
        import submitit
    except ImportError:
        raise GridError("--executor slurm needs submitit: pip install -e '.[slurm]'") from None
    folder = grid.output_dir / "slurm" / "%j"
    cluster = "local" if executor == "submitit-local" else "slurm"
    pending = list(todo)
    while pending:
        pending_ids = {p.id for p in pending}
        ready = [s for s in pending if not any(d in pending_ids for d in s.deps)]
        pending = [s for s in pending if s not in ready]
        jobs = []
        for stage in ready:
            if (dep := blocked_by(stage)) is not None:
                outcome[stage.id] = "skipped"
                progress.finished(stage, f"skipped (needs {dep})")
                continue
            job_executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
            resources = dict(grid.resources.get(stage.kind, {}))
            job_executor.update_parameters(name=f"clo-{stage.id.replace('/', '-')}", **resources)
            progress.started(stage)
            jobs.append((stage, job_executor.submit(_run_and_record, stage)))
        for stage, job in jobs:
            try:
                state, seconds = job.result()
            except Exception as err:  # the job itself died (node failure, timeout)
                atomic_write_json(stage.failed_file, {"stage": stage.id, "error": _error_tail(err)})
                state, seconds = "failed", None
            outcome[stage.id] = state
            progress.finished(stage, state if not state.startswith("held by") else f"skipped: {state}", seconds)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m clo_lib.grid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("plan", "run", "status"))
    parser.add_argument("grid", help="grid file, e.g. params/grids/toy.yaml")
    parser.add_argument("--only", nargs="+", metavar="GLOB", help="stages to select (plus what they wait for)")
    parser.add_argument("--slices", nargs="+", metavar="NAME",
                        help="named slices to run (all: every one); default: the grid's default_slices, else all")
    parser.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="run stages made under another config again, their old outputs moved to <grid>/stale/")
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid, args.slices)
        stages = select(grid, args.only)
        if args.command == "plan":
            print(table(stages, with_state=False))
            return 0
        if args.command == "status":
            print(table(stages, with_state=True))
            return 0
        return run_grid(grid, args.only, args.executor, rerun_stale=args.rerun_stale)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages are kept; run the same command again to finish the grid",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
