"""A checked grid spec (clo_lib.grid.spec) expanded into stages, one function per stage kind: the runs every slice
asks for, prepare steps, one translation per corpus, vocabulary transfers, a train and an evaluate stage per run, the
base model's evaluations, and the analysis. Every run's config is built and validated here, before anything runs.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from clo_lib.artifacts.corpus import VALIDATION_FILE, corpus_dir
from clo_lib.artifacts.provenance import config_fingerprint
from clo_lib.config.load import load_config, nest_dotted
from clo_lib.config.schema import ConfigError, RunConfig
from clo_lib.grid.search import VALIDATION, trials_of
from clo_lib.grid.spec import GridError, GridSpec, SliceSpec, chosen_slices, read_spec, run_id, slice_variant, with_seed
from clo_lib.grid.state import Grid, Stage, states


@dataclass
class Expansion:
    """What the stage functions share while a grid is expanded."""

    spec: GridSpec
    path: Path
    output_dir: Path
    runs: dict[str, dict] = field(default_factory=dict)  # run id -> model, lang, method, size, seed, overrides, ...
    stages: dict[str, Stage] = field(default_factory=dict)
    prepare_of: dict[int, list[str]] = field(default_factory=dict)  # the prepare stages a seed's runs wait for
    corpus_of: dict[str, str] = field(default_factory=dict)  # run id -> its translate stage
    transfer_of: dict[tuple, str] = field(default_factory=dict)  # (model, lang, seed) -> its transfer stage

    @property
    def shared_languages(self) -> list[str]:
        """With same_ids_across_languages, every language trains on the same source examples: only ids usable in
        all the grid's corpora count."""
        return sorted({run["lang"] for run in self.runs.values()}) if self.spec.same_ids_across_languages else []

    def config(self, run: dict, label: str) -> RunConfig:
        """A run's config: the grid's layers, its overrides, the model's, the slice's, then the run's own facts."""
        layer = {"language": run["lang"], "name": label, "seed": run["seed"], "output_dir": str(self.output_dir),
                 "data": {"size": max(1, int(run["size"])),
                          **({"same_ids_across_languages": self.shared_languages} if self.shared_languages else {})},
                 "train": {"method": run["method"]}}
        overrides = [nest_dotted(self.spec.overrides), nest_dotted(self.spec.overrides_of(run["model"])),
                     nest_dotted(run["overrides"])]
        try:
            return load_config(*self.spec.layers, *(with_seed(o, run["seed"], run["lang"]) for o in overrides), layer)
        except ConfigError as err:
            raise GridError(f"{self.path}: run {label}: {err}") from None


def load_grid(path: str | Path, chosen: list[str] | None = None) -> Grid:
    """Read, validate and expand a grid file; every run's config is validated here, before anything runs.

    `chosen`: the names of the slices to expand (["all"]: every one); None: the grid's `default_slices`, or every
    slice when it names none.
    """
    path = Path(path)
    spec = read_spec(path)
    name = spec.name or path.stem
    grid = Expansion(spec, path, Path(spec.output_dir or f"outputs/{name}"))
    for number, piece in chosen_slices(spec, chosen, path):
        add_runs(grid, number, piece)
    add_prepare_stages(grid)
    configs = {rid: grid.config(run, rid) for rid, run in grid.runs.items()}
    add_translate_stages(grid, configs)
    evaluations = [add_run_stages(grid, rid, configs[rid]) for rid in grid.runs]
    if spec.search is not None:  # after every run: a tuned SFT+DPO starts from the tuned SFT
        evaluations += [add_search_stages(grid, rid, configs[rid]) for rid in grid.runs]
    if spec.base:
        evaluations += add_base_stages(grid)
    grid.stages["analyze"] = Stage(
        id="analyze", kind="analyze", workdir=grid.output_dir, done_file=grid.output_dir / "report.md",
        deps=evaluations, parameters={"grid_dir": str(grid.output_dir), "grid_name": name,
                                      "notes": spec.description or "", "grid_file": str(path.resolve())})
    return Grid(name=name, path=path, output_dir=grid.output_dir, stages=_in_dependency_order(grid.stages),
                resources=spec.resources)


def add_runs(grid: Expansion, number: int, piece: SliceSpec) -> None:
    """The runs of slice `number`: its product, in a stable order; a run two slices make must be the same run."""
    variant, overrides = slice_variant(piece), nest_dotted(piece.overrides)
    for label in piece.models or list(grid.spec.models):
        for lang in piece.languages:
            for method in piece.methods:
                for size in piece.sizes:
                    for seed in piece.seeds:
                        rid = run_id(label, lang, method, size, seed, variant)
                        run = grid.runs.setdefault(rid, {
                            "model": label, "lang": lang, "method": method, "size": size, "seed": seed,
                            "overrides": piece.overrides, "variant": variant, "slice": number})
                        if nest_dotted(run["overrides"]) != overrides:
                            raise GridError(f"{grid.path}: slices {run['slice']} and {number} both make run {rid} "
                                            "with different settings (overrides); expected one slice per run: give "
                                            "one of them another name")


def add_prepare_stages(grid: Expansion) -> None:
    """One stage per prepare item, or per item and seed when the item names {seed} (the toy sweep builds one world
    per seed)."""
    seeds = sorted({run["seed"] for run in grid.runs.values()})
    grid.prepare_of = {seed: [] for seed in seeds}
    for item in grid.spec.prepare:
        raw = {"id": item.id, "command": item.command, "done": item.done}
        per_seed = "{seed}" in json.dumps(raw)
        for seed in (seeds if per_seed else [None]):
            concrete = with_seed(raw, seed) if per_seed else raw
            stage_id = f"prepare/{concrete['id']}" + (f"-s{seed}" if per_seed else "")
            grid.stages[stage_id] = Stage(id=stage_id, kind="prepare", workdir=grid.output_dir / "prepare",
                                          done_file=Path(concrete["done"]),
                                          command=[str(c) for c in concrete["command"]], always=item.always)
            for wanted_seed in ([seed] if per_seed else seeds):
                grid.prepare_of[wanted_seed].append(stage_id)


def add_translate_stages(grid: Expansion, configs: dict[str, RunConfig]) -> None:
    """One corpus per language and translation setup (the same for every run of a language, unless overrides make
    the source or its order depend on the seed, as the toy sweep's worlds do), translated for the largest size any
    of its runs needs and cut into nested subsets."""
    corpora: dict[tuple[str, str], list[str]] = {}
    for rid, cfg in configs.items():
        corpora.setdefault((cfg.language, config_fingerprint(cfg, "translate")), []).append(rid)
    languages = [lang for lang, _ in corpora]
    for (lang, fingerprint), rids in corpora.items():
        several = languages.count(lang) > 1
        corpus_name = f"{lang}-{fingerprint[:8]}" if several else lang
        corpus = grid.output_dir / "data" / corpus_name
        pool = max(configs[rid].data.size for rid in rids)
        for rid in rids:
            configs[rid].data.pool_size = pool
            if several:
                configs[rid].data.corpus_dir = str(corpus)
            grid.corpus_of[rid] = f"translate/{corpus_name}"
        waits = sorted({stage for rid in rids for stage in grid.prepare_of[grid.runs[rid]["seed"]]})
        grid.stages[f"translate/{corpus_name}"] = Stage(
            id=f"translate/{corpus_name}", kind="translate", workdir=corpus, done_file=corpus / "report.json",
            deps=waits, config=configs[rids[0]], facts={"lang": lang, "size": pool},
            parameters={"language": lang, "output_dir": str(grid.output_dir)})


def add_transfer_stage(grid: Expansion, cfg: RunConfig, run: dict) -> list[str]:
    """A model whose settings name transfer.donor (or transfer.pretrain_steps, for method none) is transferred once
    per language and seed (`clo transfer`), and its runs train from the result: point `cfg` at it (a stage the first
    time) and return the stages to wait for."""
    if not (cfg.transfer.donor or cfg.transfer.pretrain_steps):
        return []
    key = (run["model"], run["lang"], run["seed"])
    if key not in grid.transfer_of:
        name = f"{run['model']}-{run['lang']}-s{run['seed']}"
        workdir = (grid.output_dir / "transfer" / name).resolve()  # the command runs in the repository
        grid.transfer_of[key] = f"transfer/{name}"
        grid.stages[grid.transfer_of[key]] = Stage(
            id=grid.transfer_of[key], kind="transfer", workdir=workdir, done_file=workdir / "transfer.json",
            deps=list(grid.prepare_of[run["seed"]]), config=copy.deepcopy(cfg),
            command=["python", "-m", "clo_lib", "transfer", str(workdir / "transfer.yaml"), "--out", str(workdir)],
            facts={"model": run["model"], "lang": run["lang"], "seed": run["seed"]})
    cfg.model.name_or_path = str(grid.stages[grid.transfer_of[key]].workdir / "model")
    return [grid.transfer_of[key]]


def add_run_stages(grid: Expansion, rid: str, cfg: RunConfig) -> str:
    """A run's train and evaluate stages; returns the evaluate stage's id."""
    run, out = grid.runs[rid], grid.output_dir
    before_training = add_transfer_stage(grid, cfg, run)
    run_dir = out / rid
    facts = {k: run[k] for k in ("model", "lang", "method", "size", "seed", "variant")}
    # sft_dpo starts from, and every run is judged against, the SFT run of its own slice variant; an ablation slice
    # without SFT runs is judged against the plain SFT run
    sft = run_id(run["model"], run["lang"], "sft", run["size"], run["seed"], run["variant"])
    plain_sft = run_id(run["model"], run["lang"], "sft", run["size"], run["seed"])
    reference = sft if sft in grid.runs else plain_sft
    # with same_ids_across_languages, every language's corpus of this seed must be there first
    shared = [grid.corpus_of[other] for other, o in grid.runs.items() if o["seed"] == run["seed"]
              and o["model"] == run["model"] and o["lang"] in grid.shared_languages]
    train_deps = sorted({grid.corpus_of[rid], *shared}) + grid.prepare_of[run["seed"]] + before_training
    if run["method"] == "sft_dpo" and sft in grid.runs and cfg.train.trainable != "lora":
        # SFT+DPO's first stage is exactly the SFT run: start from its weights instead of training it again.
        cfg.train.init_from = str(out / sft / "model")
        train_deps.append(f"train/{sft}")
    params = {"language": run["lang"], "output_dir": str(out), "run_dir": str(run_dir)}
    grid.stages[f"train/{rid}"] = Stage(id=f"train/{rid}", kind="train", workdir=run_dir,
                                        done_file=run_dir / "train_log.json", deps=train_deps, config=cfg,
                                        facts=facts, parameters=dict(params))
    eval_deps = [f"train/{rid}"]
    # every notebook parameter that has a default for hand use is set: an empty reference_run or base_run means
    # none (03's defaults point at the demo's runs)
    eval_params = dict(params, method=run["method"], model_label=run["model"], reference_run="", base_run="",
                       variant=run["variant"])
    if rid != reference and reference in grid.runs:
        eval_deps.append(f"evaluate/{reference}")
        eval_params["reference_run"] = str(out / reference)
    grid.stages[f"evaluate/{rid}"] = Stage(id=f"evaluate/{rid}", kind="evaluate", workdir=run_dir,
                                           done_file=run_dir / "metrics.json", deps=eval_deps, config=cfg,
                                           facts=facts, parameters=eval_params)
    return f"evaluate/{rid}"


def validation_prompts(grid: Expansion, rid: str, cfg: RunConfig) -> str:
    """The file run `rid`'s trials are ranked on: the search's `prompts`, or its corpus's held-back validation.jsonl
    (made by the translation stage when data.validation_size > 0)."""
    run = grid.runs[rid]
    if grid.spec.search.prompts:
        return with_seed(grid.spec.search.prompts, run["seed"], run["lang"])
    if not cfg.data.validation_size:
        raise GridError(f"{grid.path}: search.prompts is not set and run {rid} holds back no validation records "
                        "(data.validation_size = 0); set one of them")
    return str(corpus_dir(cfg) / VALIDATION_FILE)


def add_search_stages(grid: Expansion, rid: str, cfg: RunConfig) -> str:
    """The grid's search for run `rid` (clo_lib.grid.search): a train stage per trial (the trial whose settings are
    the run's own is the run itself), a validate stage per trial, a select stage, and the tuned run's evaluation on
    the test prompts; returns that evaluation's id."""
    search, run, out = grid.spec.search, grid.runs[rid], grid.output_dir
    facts = {k: run[k] for k in ("model", "lang", "method", "size", "seed", "variant")}
    sft = run_id(run["model"], run["lang"], "sft", run["size"], run["seed"], run["variant"])
    shared = grid.stages[f"train/{rid}"]
    trial_dirs, validations = [], []
    for number, settings in enumerate(trials_of(search.space, search.methods, run["method"]), 1):
        try:
            trial = load_config(cfg.to_dict(), nest_dotted(settings))
        except ConfigError as err:
            raise GridError(f"{grid.path}: search trial {number} of run {rid}: {err}") from None
        deps = list(shared.deps)
        if cfg.train.init_from == str(out / sft / "model"):  # SFT+DPO at its best starts from SFT at its best
            trial.train.init_from = str(out / f"{sft}-best" / "model")
            deps = [d for d in deps if d != f"train/{sft}"] + [f"select/{sft}"]
        same = (config_fingerprint(trial, "train") == config_fingerprint(cfg, "train")
                and trial.train.init_from == cfg.train.init_from)
        trial_dir = shared.workdir if same else out / f"{rid}-t{number}"
        if not same:
            grid.stages[f"train/{trial_dir.name}"] = Stage(
                id=f"train/{trial_dir.name}", kind="train", workdir=trial_dir, done_file=trial_dir / "train_log.json",
                deps=deps, config=trial, facts={**facts, "trial": number},
                parameters=dict(shared.parameters, run_dir=str(trial_dir)))
        validation = copy.deepcopy(trial)
        validation.eval.prompts = validation_prompts(grid, rid, cfg)
        validation.eval.seen_prompts, validation.eval.mc_tasks = 0, {}
        # MT-bench counts on validation only where the grid holds part of it out of test; else not at all
        validation.eval.mtbench = trial.eval.mtbench and trial.eval.mtbench_questions == "test"
        validation.eval.mtbench_questions = "validation" if validation.eval.mtbench else "all"
        if not validation.eval.mtbench and any("mtbench" in term for term in search.metric):
            raise GridError(f"{grid.path}: search.metric names an MT-bench metric, but run {rid} does not hold "
                            "MT-bench validation questions out of test; set eval.mtbench: true and "
                            "eval.mtbench_questions: test in the grid's overrides")
        workdir = trial_dir / VALIDATION
        grid.stages[f"validate/{trial_dir.name}"] = Stage(
            id=f"validate/{trial_dir.name}", kind="validate", workdir=workdir, done_file=workdir / "metrics.json",
            deps=[f"train/{trial_dir.name}"], config=validation, facts={**facts, "trial": number},
            parameters={"language": run["lang"], "output_dir": str(out), "run_dir": str(workdir),
                        "model_path": str(trial_dir / "model"), "method": run["method"],
                        "model_label": run["model"], "reference_run": "", "base_run": "", "variant": run["variant"]})
        trial_dirs.append(trial_dir)
        validations.append(f"validate/{trial_dir.name}")
    best = out / f"{rid}-best"
    keys = list(search.methods.get(run["method"], search.space))
    grid.stages[f"select/{rid}"] = Stage(
        id=f"select/{rid}", kind="select", workdir=best, done_file=best / "pick.json", deps=validations, facts=facts,
        command=["python", "-m", "clo_lib", "select", *[f"--metric={term}" for term in search.metric],  # = keeps a
                 "--keys", *keys, "--out", str(best), *map(str, trial_dirs)],  # -NAME term from reading as an option
        parameters={"metric": list(search.metric), "trials": [str(d) for d in trial_dirs], "keys": keys})
    params = dict(grid.stages[f"evaluate/{rid}"].parameters, run_dir=str(best), reference_run="")
    deps = [f"select/{rid}"]
    # judged against SFT at its best: of its own slice variant, else the plain one (as at the shared budget)
    reference = next((r for r in (sft, run_id(run["model"], run["lang"], "sft", run["size"], run["seed"]))
                      if r in grid.runs), None)
    if reference is not None and reference != rid:
        params["reference_run"] = str(out / f"{reference}-best")
        deps.append(f"evaluate/{reference}-best")
    grid.stages[f"evaluate/{rid}-best"] = Stage(
        id=f"evaluate/{rid}-best", kind="evaluate", workdir=best, done_file=best / "metrics.json", deps=deps,
        config=cfg, facts={**facts, "view": "tuned"}, parameters=params)
    return f"evaluate/{rid}-best"


def add_base_stages(grid: Expansion) -> list[str]:
    """The untrained base model, evaluated once per model, language and seed, judged against the SFT run of the
    smallest size when there is one; returns the evaluate stages' ids."""
    ids = []
    for (label, lang, seed) in sorted({(r["model"], r["lang"], r["seed"]) for r in grid.runs.values()}):
        rid = f"{label}-{lang}-base-s{seed}"
        run = {"model": label, "lang": lang, "method": "sft", "size": 1, "seed": seed, "overrides": {}, "variant": ""}
        cfg = grid.config(run, rid)
        before_evaluating = add_transfer_stage(grid, cfg, run)
        run_dir = grid.output_dir / rid
        sizes = sorted({r["size"] for r in grid.runs.values() if (r["model"], r["lang"], r["seed"]) ==
                        (label, lang, seed)})
        sft = run_id(label, lang, "sft", sizes[0], seed)
        params = {"language": lang, "output_dir": str(grid.output_dir), "run_dir": str(run_dir), "method": "base",
                  "model_path": cfg.model.name_or_path, "model_label": label, "reference_run": "", "base_run": ""}
        deps = list(grid.prepare_of[seed]) + before_evaluating
        if sft in grid.runs:
            params["reference_run"] = str(grid.output_dir / sft)
            deps.append(f"evaluate/{sft}")
        grid.stages[f"evaluate/{rid}"] = Stage(
            id=f"evaluate/{rid}", kind="evaluate", workdir=run_dir, done_file=run_dir / "metrics.json", deps=deps,
            config=cfg, facts={"model": label, "lang": lang, "method": "base", "size": None, "seed": seed},
            parameters=params)
        ids.append(f"evaluate/{rid}")
    return ids


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


def run_states(grid_file: str | Path) -> dict[str, str]:
    """Each evaluated run folder of a grid (every slice, not only the default ones) and its evaluation's state
    under the grid file as it is now: what the report may trust (done) and what it must leave out (stale)."""
    stages = list(load_grid(grid_file, ["all"]).stages.values())
    state = states(stages)  # over every stage: an evaluation is stale when what it was made from is
    return {stage.workdir.name: state[stage.id] for stage in stages if stage.kind == "evaluate"}
