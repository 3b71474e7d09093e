"""A grid file, read and checked: the same validation engine as run configs (clo_lib.config.validate) over the
dataclasses below, so a bad field gets the same one sentence (the file, the key, the value, what was expected), then
the checks between fields (models a slice names, slice names, resources per stage kind, layer files).
clo_lib.grid.expand turns a checked spec into stages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clo_lib.common.cache import digest
from clo_lib.common.errors import InputError
from clo_lib.config.load import nest_dotted, read_yaml
from clo_lib.config.schema import REPO, ConfigError, required_setting, setting
from clo_lib.config.validate import build_checked
from clo_lib.grid.state import STAGE_KINDS

SLICE_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a slice's name ends its runs' folder names


class GridError(InputError):
    """A grid file that cannot be expanded; the message is one sentence naming the file and the problem."""


@dataclass
class SliceSpec:
    languages: list[str] = required_setting("Target language codes.", items="language codes")
    methods: list[str] = required_setting("Training methods (clo_lib.method.pairs.METHOD_STAGES).",
                                         items="method names")
    sizes: list[int] = required_setting("Training-set sizes (examples per run).", min=1)
    seeds: list[int] = setting([0], "Seeds; each run and its data subset per seed.", min=0)
    models: list[str] = setting([], "Model labels of `models` (default: every one).", items="model labels")
    name: str | None = setting(None, "The slice's name: --slices picks it, and a slice with overrides names its "
                                    "runs' variant by it (letters, digits, '-', '_', '.').")
    overrides: dict[str, Any] = setting({}, "Config overrides for this slice's runs (dotted keys allowed).")


@dataclass
class PrepareItem:
    id: str = required_setting("A name for the step.")
    command: list[str | int] = required_setting("The command, as a list of words (python: this interpreter).",
                                         items="words")
    done: str = required_setting("A file the command makes: the step is done when it exists.")
    always: bool = setting(False, "Run at every grid run, before states are read (an idempotent rebuild).")


@dataclass
class SearchSpec:
    """Each method at its own best on validation prompts (clo_lib.grid.search): every trial trains, is evaluated on
    `prompts` only, and the best by `metric` is the one evaluated on the test prompts."""

    space: dict[str, Any] = required_setting("Dotted config keys, each with the values to try (a list); the trials "
                                             "are their product, the same for every method.")
    metric: list[str] = required_setting("Validation metrics (metrics.json names) summed to rank trials; `-name` "
                                         "subtracts one where lower is better (an NLL); the first trial in the "
                                         "space's order wins a tie.", items="metric names")
    prompts: str | None = setting(None, "The validation prompt file ({lang} and {seed} filled in), disjoint from "
                                  "the test prompts (eval.prompts); None: the held-back validation.jsonl of each "
                                  "run's translated corpus (data.validation_size).")
    methods: dict[str, dict[str, Any]] = setting({}, "A method's own space instead (e.g. train.beta for a preference "
                                                     "method); it must give as many trials as `space`.")


@dataclass
class GridSpec:
    models: dict[str, dict[str, Any] | None] = required_setting("Model labels, each with its config overrides.")
    slices: list[SliceSpec] = required_setting("Languages x methods x sizes x seeds to run.")
    name: str | None = setting(None, "The grid's name (default: the file's name).")
    description: str | None = setting(None, "What the grid is for; the report's notes.")
    output_dir: str | None = setting(None, "Where everything goes (default: outputs/<name>).")
    layers: list[str] = setting([], "Config files every run starts from, in order.", items="YAML files")
    overrides: dict[str, Any] = setting({}, "Config overrides for every run (dotted keys allowed).")
    default_slices: list[str] = setting([], "The slices run when --slices is not given (default: all).",
                                       items="slice names")
    base: bool = setting(True, "Evaluate the untrained base model too.")
    same_ids_across_languages: bool = setting(False, "Every language trains on the same source examples.")
    prepare: list[PrepareItem] = setting([], "Commands that make what runs need (a world, a model).")
    resources: dict[str, dict[str, Any]] = setting({}, "submitit parameters per stage kind (gpus_per_node, ...).")
    search: SearchSpec | None = setting(None, "Tune every method on validation prompts; the report shows the tuned "
                                              "runs beside the runs at the shared budget.")

    def overrides_of(self, label: str) -> dict[str, Any]:
        return self.models[label] or {}


class _FromFile(dict):
    """The validation engine's origin map, for a grid: every key comes from the one file."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = str(path)

    def get(self, key: Any, default: Any = None) -> str:
        return self.path


def read_spec(path: str | Path) -> GridSpec:
    """The grid file at `path`, checked field by field and across fields; layer paths resolved."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist; the grids are in params/grids/")
    try:
        spec = build_checked(GridSpec, read_yaml(path), "", _FromFile(path))
    except ConfigError as err:
        raise GridError(str(err)) from None
    _check_across_fields(spec, path)
    spec.layers = [_layer_path(layer, path) for layer in spec.layers]
    return spec


def _check_across_fields(spec: GridSpec, path: Path) -> None:
    if not spec.models:
        raise GridError(f"{path}: models is empty; expected a short label per model with its config overrides, "
                        "e.g. {llama3-8b: {model: {name_or_path: meta-llama/Meta-Llama-3-8B}}}")
    if not spec.slices:
        raise GridError(f"{path}: slices is empty; expected at least one of languages x methods x sizes x seeds")
    for number, piece in enumerate(spec.slices, 1):
        unknown = [label for label in piece.models if label not in spec.models]
        if unknown:
            raise GridError(f"{path}: slices[{number}].models names {unknown[0]!r}; expected one of "
                            f"{', '.join(spec.models)}")
        if piece.name is not None and not SLICE_NAME.fullmatch(piece.name):
            raise GridError(f"{path}: slices[{number}].name = {piece.name!r}; expected letters, digits, '-', '_' "
                            "or '.' (it names run folders)")
    if spec.search is not None:
        _check_search(spec.search, path)
    unknown_kinds = sorted(set(spec.resources) - set(STAGE_KINDS))
    if unknown_kinds:
        raise GridError(f"{path}: unknown key resources.{unknown_kinds[0]}; expected one of {', '.join(STAGE_KINDS)}")


def _check_search(search: SearchSpec, path: Path) -> None:
    """Every space a mapping of dotted keys to non-empty lists, and as many trials for every method."""
    for where, space in [("search.space", search.space)] + [(f"search.methods.{m}", s)
                                                           for m, s in search.methods.items()]:
        if not space:
            raise GridError(f"{path}: {where} is empty; expected dotted config keys with the values to try, e.g. "
                            "{train.learning_rate: [1.5e-4, 3e-4, 6e-4]}")
        for key, values in space.items():
            if not str(key).startswith("train."):
                raise GridError(f"{path}: {where}.{key}: expected train.* settings only (a trial changes how a run "
                                "trains, never its data, translation or evaluation)")
            if not isinstance(values, list) or not values:
                raise GridError(f"{path}: {where}.{key} = {values!r}; expected a non-empty list of values to try")
    counts = {method: trial_count(space) for method, space in search.methods.items()}
    unequal = {m: n for m, n in counts.items() if n != trial_count(search.space)}
    if unequal:
        method, n = next(iter(unequal.items()))
        raise GridError(f"{path}: search.methods.{method} gives {n} trials and search.space "
                        f"{trial_count(search.space)}; expected the same number of trials for every method")
    if not search.metric:
        raise GridError(f"{path}: search.metric is empty; expected the validation metrics that rank trials, e.g. "
                        "[fidelity_tgt, accuracy_tgt]")


def trial_count(space: dict[str, list]) -> int:
    count = 1
    for values in space.values():
        count *= len(values)
    return count


def _layer_path(layer: str, grid_path: Path) -> str:
    """Layers are repo-relative (params/presets/toy.yaml), grid-relative, or `preset: NAME` style names."""
    for candidate in (Path(layer), REPO / layer, grid_path.parent / layer):
        if candidate.is_file():
            return str(candidate)
    raise GridError(f"{grid_path}: layer {layer!r} does not exist; expected a YAML file such as "
                    "params/presets/toy.yaml")


def chosen_slices(spec: GridSpec, asked: list[str] | None, path: Path) -> list[tuple[int, SliceSpec]]:
    """The slices to expand, with their numbers in the file: those named in `asked` (["all"]: every one), else the
    grid's default_slices, else all."""
    names = asked or spec.default_slices or ["all"]
    numbered = list(enumerate(spec.slices, 1))
    if names == ["all"]:
        return numbered
    known = [piece.name for piece in spec.slices if piece.name]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise GridError(f"{path}: no slice named {', '.join(map(repr, unknown))}; its slices are "
                        f"{', '.join(map(str, known)) or 'unnamed'} (or all)")
    return [(number, piece) for number, piece in numbered if piece.name in names]


def run_id(model: str, lang: str, method: str, size: int, seed: int, variant: str = "") -> str:
    return f"{model}-{lang}-{method}-n{size}-s{seed}" + (f"-{variant}" if variant else "")


def slice_variant(piece: SliceSpec) -> str:
    """What tells a slice's runs from the plain ones: "" without overrides, else the slice's name, or "o" and a
    digest of its overrides for an unnamed slice (an ablation run of its own, never merged into the plain run)."""
    if not piece.overrides:
        return ""
    return piece.name if piece.name else "o" + digest(nest_dotted(piece.overrides))[:6]


def with_seed(value: Any, seed: int, lang: str | None = None) -> Any:
    """`value` with "{seed}" (and, given `lang`, "{lang}") filled in every string (a whole "{seed}" becomes the
    number itself)."""
    if isinstance(value, dict):
        return {k: with_seed(v, seed, lang) for k, v in value.items()}
    if isinstance(value, list):
        return [with_seed(v, seed, lang) for v in value]
    if value == "{seed}":
        return seed
    if isinstance(value, str) and lang is not None:
        value = value.replace("{lang}", lang)
    return value.replace("{seed}", str(seed)) if isinstance(value, str) else value
