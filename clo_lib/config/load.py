"""Config files in, a validated RunConfig out: YAML read strictly (duplicate keys refused), presets and layers
merged in order, `--set key=value` overrides, notebook parameters, and YAML written back. `clo config`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from clo_lib.common.errors import CloError
from clo_lib.common.io import atomic_write_text
from clo_lib.config.schema import PARAMS_DIR, PRESETS_DIR, ConfigError, RunConfig, describe_markdown
from clo_lib.config.validate import build_checked, check_consistency

# ---------------------------------------------------------------------------------------------------------------
# Loading and merging layers


def load_config(*sources: str | Path | dict, overrides: list[str] | None = None) -> RunConfig:
    """Merge `sources` (YAML paths or dicts; later wins) and `overrides` ("train.lam=0.3"), then validate."""
    if not sources:
        raise ConfigError("load_config needs at least one YAML path or dict.")
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}  # dotted key -> which layer set it, for error messages
    for source in sources:
        _merge_layer(merged, origin, source, depth=0)
    if overrides:
        _merge(merged, origin, parse_overrides(overrides), "the command line")
    config = build_checked(RunConfig, merged, "", origin)
    check_consistency(config, origin)
    return config


def nest_dotted(mapping: dict[str, Any]) -> dict[str, Any]:
    """{"train.lam": 0.3, "model": {"dtype": "float32"}} -> {"train": {"lam": 0.3}, "model": {"dtype": "float32"}}.

    The form notebook parameters and grid files use for overrides; the result is a layer for load_config.
    """
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        node = out
        *parents, leaf = str(key).strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return out


def notebook_config(config_files: Any, overrides: Any, run_dir: str | Path | None = None, **fixed: Any) -> RunConfig:
    """The run config from a notebook's parameters, however papermill hands them over.

    config_files: a list of YAML paths, or the string `papermill -p` gives (one path, or a JSON/YAML list).
    overrides: a mapping of dotted keys, or a string: key=value pairs separated by commas, or a JSON/YAML mapping.
    run_dir: a trained run's folder (03_evaluate): its own config.yaml is the base, so the run's language, size,
      seed, name, model and prompt format are the ones it trained with; config_files and overrides add the
      evaluation settings (`eval.*`, which training ignores) and overrides may change anything.
    fixed: the notebook's own parameters (language, output_dir); empty ones are left out. With run_dir, a language
      other than the run's is refused.
    Paths may be relative to the working folder, the repository root or notebooks/; a missing one names where it
    was looked for.
    """
    files = [notebook_path(name, "config_files", "a YAML file such as params/presets/toy.yaml")
             for name in _as_path_list(config_files)]
    layers, pairs = _override_layers(overrides)
    fixed = {k: v for k, v in fixed.items() if v}
    saved = Path(run_dir) / "config.yaml" if run_dir else None
    if saved is None or not saved.is_file():
        return load_config(*files, fixed, *layers, overrides=pairs)
    run = read_yaml(saved)
    if fixed.get("language") and fixed["language"] != run.get("language"):
        raise ConfigError(f"language = {fixed['language']}, but the run in {run_dir} was trained on "
                          f"{run.get('language')} (its config.yaml); expected that language, or leave language empty.")
    evaluation = load_config(*files, {**fixed, "language": run.get("language")}, *layers, overrides=pairs)
    return load_config(saved, {"eval": evaluation.to_dict()["eval"]}, *layers, overrides=pairs)


def _as_path_list(config_files: Any) -> list:
    if isinstance(config_files, str):
        parsed = yaml.safe_load(config_files) if config_files.strip().startswith("[") else config_files
        config_files = parsed if isinstance(parsed, list) else [config_files]
    if not isinstance(config_files, list) or not config_files:
        raise ConfigError(f"config_files = {config_files!r}; expected a list of YAML files (or one path).")
    return config_files


def notebook_path(name: Any, parameter: str, expected: str) -> Path:
    """A path a notebook parameter names, relative to the working folder, the repository root or notebooks/."""
    places = list(dict.fromkeys([Path.cwd(), PARAMS_DIR.parent, PARAMS_DIR.parent / "notebooks"]))
    found = next((place / str(name) for place in places if (place / str(name)).exists()), None)
    if found is None:
        raise ConfigError(f"{parameter}: {name} does not exist (looked in {', '.join(map(str, places))}); "
                          f"expected {expected}.")
    return found


def _override_layers(overrides: Any) -> tuple[list[dict], list[str] | None]:
    """([a nested mapping], None) or ([], ["key=value", ...]) from the overrides parameter."""
    if isinstance(overrides, str):
        text = overrides.strip()
        parsed = yaml.safe_load(text) if text.startswith("{") else None
        if isinstance(parsed, dict):
            overrides = parsed
        elif not text:
            overrides = {}
        else:
            pairs = re.split(r",\s*(?=[\w.]+\s*=)", text)
            if not all("=" in pair for pair in pairs):
                raise ConfigError(f"overrides = {overrides!r}; expected key=value pairs (train.method=sft, "
                                  "train.lam=0.3) or a mapping.")
            return [], pairs
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides = {overrides!r}; expected key=value pairs or a mapping.")
    return [nest_dotted(overrides)], None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["train.lam=0.3", "language=sw"] -> {"train": {"lam": 0.3}, "language": "sw"} (values parsed as YAML)."""
    pairs: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override {item!r} is not of the form key=value (for example train.lam=0.3).")
        try:
            pairs[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            pairs[key.strip()] = raw
    return nest_dotted(pairs)


class DuplicateKeyError(CloError, yaml.YAMLError):
    """A mapping that gives one key twice (plain YAML keeps the last silently)."""

    def __init__(self, key: str, line: int):
        self.key, self.line = key, line
        super().__init__(f"line {line} gives {key} twice")


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error naming its dotted path and line:
    `train.lam` twice in a run config, or a model defined twice in a grid, would otherwise train on the last one."""

    def construct_document(self, node):
        self._check_duplicates(node, "")
        return super().construct_document(node)

    def _check_duplicates(self, node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None:
                    if key in seen and key != "<<":
                        raise DuplicateKeyError(f"{prefix}{key}", key_node.start_mark.line + 1)
                    seen.add(key)
                self._check_duplicates(value_node, f"{prefix}{key}." if key is not None else prefix)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self._check_duplicates(item, prefix)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML mapping, turning a missing file, bad YAML or an empty file into a ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"Config file {path} is a folder; expected a path to a YAML file.", source=str(path))
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; expected a path to a YAML file.", source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {err.start}); expected a YAML file.",
                          source=str(path)) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err}; expected each key once.", source=str(path), key=err.key) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "unparseable"
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}.", source=str(path)) from None
    if data is None:
        raise ConfigError(f"{path} is empty; expected a mapping of config keys.", source=str(path))
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} holds a {type(data).__name__}; expected a mapping of config keys.", source=str(path)
        )
    return data


def resolve_preset(name: str, relative_to: Path | None = None) -> Path:
    """A preset name (`toy`) or a path to a YAML file, relative to the file that names it."""
    candidates = [PRESETS_DIR / f"{name}.yaml"]
    if relative_to is not None:
        candidates.insert(0, relative_to / name)
    candidates.append(Path(name))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
    raise ConfigError(f"preset = {name!r} names no preset or file; expected one of: {known}, or a path.",
                      key="preset", value=name)


def _merge_layer(merged: dict, origin: dict, source: str | Path | dict, depth: int) -> None:
    if depth > 8:
        raise ConfigError("Presets include each other in a loop; expected a chain of at most 8 presets.")
    if isinstance(source, dict):
        data, label, base_dir = dict(source), "config", None
    elif isinstance(source, (str, Path)):
        data, label, base_dir = read_yaml(source), str(source), Path(source).parent
    else:
        raise ConfigError(f"Config source {source!r} is a {type(source).__name__}; expected a YAML path or a dict.")
    preset = data.pop("preset", None)
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"{label}: preset = {preset!r}; expected a preset name such as toy.", key="preset")
        _merge_layer(merged, origin, resolve_preset(preset, base_dir), depth + 1)
    _merge(merged, origin, data, label)


def _merge(into: dict, origin: dict, layer: dict, label: str, prefix: str = "") -> None:
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict) and value:
            _merge(into[key], origin, value, label, dotted + ".")
        else:
            into[key] = value
        origin[dotted] = label


class _ReadableDumper(yaml.SafeDumper):
    """Writes multi-line strings (prompt templates) as YAML block literals, as a person would."""


_ReadableDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def dump_yaml(data: dict) -> str:
    return yaml.dump(data, Dumper=_ReadableDumper, sort_keys=False, allow_unicode=True)


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what a run records next to its outputs); load_config reads it back."""
    atomic_write_text(path, dump_yaml(config.to_dict()))


def add_arguments(parser) -> None:
    """`clo config FILE... [--set key=value ...]`: the resolved config; `--describe`: every key as a markdown table."""
    parser.add_argument("files", nargs="*", help="YAML layers, later overriding earlier")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--describe", action="store_true", help="print every field as a markdown table")


def command(args) -> int:
    if args.describe:
        print(describe_markdown(), end="")
        return 0
    if not args.files:
        raise ConfigError("clo config: give at least one YAML file (or --describe)")
    print(dump_yaml(load_config(*args.files, overrides=args.overrides).to_dict()), end="")
    return 0
