"""The one validation engine: a layered mapping becomes typed dataclasses (schema.py), each value coerced and
range-checked against its field's metadata, unknown or renamed keys named with a suggestion, and the settings
that only make sense together checked together. Every error names the key, the value, the layer it came from and
what was expected.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any, Literal

from clo_lib.common.languages import LANGUAGES, SOURCE_LANGUAGE
from clo_lib.config.schema import ENV_VAR_NAME, RENAMED_KEYS, ConfigError, RunConfig
from clo_lib.method.pairs import PREFERENCE_METHODS, SIDES

# ---------------------------------------------------------------------------------------------------------------
# Validation: one pass over the dataclass tree, coercing YAML values to the declared types


def _fail(origin: dict, key: str, value: Any, expected: str) -> ConfigError:
    source = _source_of(origin, key)
    where = f"{source}: " if source else ""
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ConfigError(f"{where}{key} = {shown}; expected {expected}.", key=key, value=value, source=source)


def _source_of(origin: dict, key: str) -> str | None:
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        label = origin.get(".".join(parts[:i]))
        if label:
            return label
    return None


def build_checked(cls: type, data: Any, prefix: str, origin: dict) -> Any:
    where = prefix.rstrip(".") or "the config"
    if not isinstance(data, dict):
        raise _fail(origin, where, data, f"a mapping with keys {', '.join(f.name for f in fields(cls))}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            guess = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {prefix}{guess[0]}?)" if guess else ""
            if f"{prefix}{key}" in RENAMED_KEYS:
                hint = f" (renamed: use {RENAMED_KEYS[f'{prefix}{key}']})"
            source = _source_of(origin, f"{prefix}{key}")
            at = f"{source}: " if source else ""
            raise ConfigError(
                f"{at}unknown key {prefix}{key}{hint}; expected one of: {', '.join(sorted(known))}.",
                key=f"{prefix}{key}", value=data[key], source=source,
            )
    values = {}
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in data:
            if f.metadata.get("required"):
                source = _source_of(origin, prefix.rstrip(".")) if prefix else None
                at = f"{source}: " if source else ""
                wanted = f.metadata["help"][0].lower() + f.metadata["help"][1:-1]
                raise ConfigError(f"{at}{key} is missing; expected {wanted}.", key=key, source=source)
            continue
        values[f.name] = _coerce(hints[f.name], data[f.name], key, f.metadata, origin)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str, meta: dict, origin: dict) -> Any:
    origin_type = typing.get_origin(hint)
    args = typing.get_args(hint)
    if is_dataclass(hint):
        return build_checked(hint, {} if value is None else value, key + ".", origin)
    if origin_type in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _coerce(inner[0], value, key, meta, origin)
    if origin_type is Literal:
        if value not in args:
            guess = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_text = f" (did you mean {guess[0]}?)" if guess else ""
            raise _fail(origin, key, value, f"one of {', '.join(map(str, args))}{hint_text}")
        return value
    if origin_type is list:
        return _coerce_list(args[0], value, key, meta, origin)
    if origin_type is dict:
        key_type, value_type = args
        if not isinstance(value, dict):
            raise _fail(origin, key, value, "a mapping")
        return {str(k): _coerce(value_type, v, f"{key}.{k}", {}, origin) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(origin, key, value, "true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(origin, key, value, _range_text("an integer", meta))
        return _check_range(value, key, meta, origin, "an integer")
    if hint is float:
        # YAML 1.1 reads 8e-6 (no dot) as a string: accept numeric strings for float fields.
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise _fail(origin, key, value, _range_text("a finite number", meta))
        _check_range(number, key, meta, origin, "a number")
        return float(number)
    if hint is str:
        if not isinstance(value, str):
            raise _fail(origin, key, value, "a string")
        return value
    if hint is Any:  # free-form (config overrides inside a grid file: checked when each run's config is built)
        return value
    raise TypeError(f"config field {key} has an unsupported type {hint!r}")  # a bug in this module, not user input


def _coerce_list(item: Any, value: Any, key: str, meta: dict, origin: dict) -> list:
    """A list field: of dataclasses (each built and checked, named key[1], key[2], ...), or of plain values of the
    item type, each in the field's range; `meta["items"]` names the items in the error (default: the type)."""
    if is_dataclass(item):
        if not isinstance(value, list):
            raise _fail(origin, key, value, f"a list of mappings ({', '.join(f.name for f in fields(item))})")
        return [build_checked(item, entry, f"{key}[{number}].", origin) for number, entry in enumerate(value, 1)]
    name = meta.get("items") or {int: "whole numbers"}.get(item) or getattr(item, "__name__", str(item))
    expected = _range_text(f"a list of {name}", meta)
    whole = item is int
    if not isinstance(value, list) or not all(isinstance(v, item) and not (whole and isinstance(v, bool))
                                              for v in value):
        raise _fail(origin, key, value, expected)
    if whole and any(_out_of_range(v, meta) for v in value):
        raise _fail(origin, key, value, expected)
    return list(value)


def _range_text(kind: str, meta: dict) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    lo_op = ">" if meta.get("min_exclusive") else "≥"
    hi_op = "<" if meta.get("max_exclusive") else "≤"
    if lo is not None and hi is not None:
        left = "(" if meta.get("min_exclusive") else "["
        right = ")" if meta.get("max_exclusive") else "]"
        return f"{kind} in {left}{lo}, {hi}{right}"
    if lo is not None:
        return f"{kind} {lo_op} {lo}"
    if hi is not None:
        return f"{kind} {hi_op} {hi}"
    return kind


def _out_of_range(value: Any, meta: dict) -> bool:
    lo, hi = meta.get("min"), meta.get("max")
    too_low = lo is not None and (value <= lo if meta.get("min_exclusive") else value < lo)
    too_high = hi is not None and (value >= hi if meta.get("max_exclusive") else value > hi)
    return too_low or too_high


def _check_range(value: Any, key: str, meta: dict, origin: dict, kind: str) -> Any:
    if _out_of_range(value, meta):
        raise _fail(origin, key, value, _range_text(kind, meta))
    return value


def check_consistency(config: RunConfig, origin: dict) -> None:
    """Rules that tie fields together or need the language table."""
    if config.language not in LANGUAGES:
        guess = difflib.get_close_matches(config.language, sorted(LANGUAGES), n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        raise _fail(origin, "language", config.language,
                    f"a known language code{hint}: {', '.join(sorted(c for c in LANGUAGES if c != 'en'))}")
    if config.language == SOURCE_LANGUAGE:
        raise _fail(origin, "language", config.language, "a target language other than English")
    for lang in config.data.same_ids_across_languages:
        if lang not in LANGUAGES or lang == SOURCE_LANGUAGE:
            raise _fail(origin, "data.same_ids_across_languages", config.data.same_ids_across_languages,
                        "a list of target language codes")
    for lang in config.eval.mc_tasks:
        if lang not in LANGUAGES:
            raise _fail(origin, f"eval.mc_tasks.{lang}", config.eval.mc_tasks[lang], "a known language code as key")
    if config.eval.judge == "llm" and not config.eval.judge_base_url:
        raise _fail(origin, "eval.judge_base_url", None, "the judge's endpoint URL when eval.judge is llm")
    indicator = config.translation.indicator
    if indicator.count("{i}") != 1 or not indicator.replace("{i}", "").strip() or "{" in indicator.replace("{i}", ""):
        raise _fail(origin, "translation.indicator", indicator, "a marker template with one {i} and other "
                    "characters around it, such as [{i}] or <{i}>")
    if config.translation.catalyst != "none" and config.translation.catalyst not in config.translation.catalyst_texts:
        raise _fail(origin, "translation.catalyst_texts", config.translation.catalyst_texts,
                    f"a sentence for translation.catalyst = {config.translation.catalyst}")
    if "{prompt}" not in config.model.prompt_template:
        raise _fail(origin, "model.prompt_template", config.model.prompt_template, "a template with a {prompt} slot")
    train = config.train
    if train.method in PREFERENCE_METHODS and train.batch_size % 2:
        raise _fail(origin, "train.batch_size", train.batch_size,
                    f"an even number for {train.method}, so both pairs of a source example share a batch")
    for key in ("nll_sides", "dpo_sides"):
        sides = getattr(train, key)
        if any(side not in SIDES for side in sides) or len(set(sides)) != len(sides):
            raise _fail(origin, f"train.{key}", sides, "a list of distinct sides out of en, tgt")
    if train.trainable == "lora" and not train.lora_target_modules:
        raise _fail(origin, "train.lora_target_modules", [], "at least one module name for trainable: lora")
    if train.trainable == "attention" and not train.attention_modules:
        raise _fail(origin, "train.attention_modules", [], "at least one module name for trainable: attention")
    if config.data.pool_size is not None and config.data.pool_size < config.data.size:
        raise _fail(origin, "data.pool_size", config.data.pool_size, f"at least data.size ({config.data.size})")
    for key, name in (("translation.api_key_env", config.translation.api_key_env),
                      ("eval.judge_api_key_env", config.eval.judge_api_key_env)):
        # Keys come from the environment only: a value that is not a variable name may be a pasted secret,
        # so it is neither echoed back nor accepted.
        if not ENV_VAR_NAME.match(name):
            raise ConfigError(
                f"{_source_of(origin, key) or 'config'}: {key} must name an environment variable "
                "(like OPENAI_API_KEY), not hold a key; put the key in the environment instead.", key=key)
