"""Before loading a model: will this run fit on the GPU? An estimate from the model's config alone.

What training allocates (measured on a tiny model in bfloat16, byte for byte; tests/test_memory.py):
    weights      frozen parameters in the load dtype (2 bytes in bf16), trained ones in float32 (4 bytes): with
                 16-bit weights the trained ones are float32 master weights (clo_lib.modeling.models)
    casts        autocast's 16-bit copies of the trained weights, alive during a step
    gradients    trained parameters in float32 (4 bytes)
    optimizer    AdamW keeps two float32 moments per trained parameter (8 bytes); 8-bit AdamW about 2 bytes
    activations  per layer s·b·h·(34 + 5·a·s/h) bytes in 16-bit (Korthikanti et al. 2022), or about 2·s·b·h bytes
                 with gradient checkpointing; a rough upper bound, since real sequences are mostly shorter than max

Example: Llama-2-13B, attention-only, AdamW, bf16 → 32 GB weights (8.8B frozen in bf16, 4.2B trained in
float32) + 7.8 GB casts + 15.6 GB gradients + 31.3 GB optimizer states before activations: it does not fit one
80 GB GPU; with 8-bit AdamW and 4 rows a step (grad_accum 8 keeps the paper's 32) it does (params/grids/paper.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clo_lib.common.errors import MissingInputError
from clo_lib.config.load import load_config

GB = 1024**3


@dataclass
class MemoryEstimate:
    total_params: int
    trainable_params: int
    weights_gb: float
    casts_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.casts_gb + self.gradients_gb + self.optimizer_gb + self.activations_gb

    def summary(self) -> str:
        share = f"{self.trainable_params / 1e9:.2f}B of {self.total_params / 1e9:.2f}B parameters train"
        if self.total_params < 1e8:  # small models: in millions, not 0.00B
            share = f"{self.trainable_params / 1e6:.2f}M of {self.total_params / 1e6:.2f}M parameters train"
        # below a gigabyte in megabytes: the toy model's "0.0 GB" said nothing
        scale, unit = (1, "GB") if self.total_gb >= 1 else (1024, "MB")
        parts = {"weights": self.weights_gb, "16-bit casts": self.casts_gb, "gradients": self.gradients_gb,
                 "optimizer": self.optimizer_gb, "activations": self.activations_gb}
        terms = " + ".join(f"{name} {value * scale:.1f}" for name, value in parts.items())
        return f"~{self.total_gb * scale:.1f} {unit}: {terms} ({share})"


def _shapes(model_config: Any) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection of one decoder layer, by module name."""
    h = model_config.hidden_size
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or h // heads
    inter = model_config.intermediate_size
    return {"q_proj": (h, heads * head_dim), "k_proj": (h, kv_heads * head_dim), "v_proj": (h, kv_heads * head_dim),
            "o_proj": (heads * head_dim, h), "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def count_params(model_config: Any) -> tuple[int, int, int]:
    """(total, attention q/k/v/o, per-layer attention) parameters of a decoder from its transformers config."""
    shapes = _shapes(model_config)
    h, layers, vocab = model_config.hidden_size, model_config.num_hidden_layers, model_config.vocab_size
    attention = sum(i * o for name, (i, o) in shapes.items() if name in ("q_proj", "k_proj", "v_proj", "o_proj"))
    mlp = sum(i * o for name, (i, o) in shapes.items() if name in ("gate_proj", "up_proj", "down_proj"))
    norms = 2 * h
    embeddings = vocab * h * (1 if getattr(model_config, "tie_word_embeddings", False) else 2)
    total = layers * (attention + mlp + norms) + embeddings + h
    return total, layers * attention, attention


def estimate_memory(model_config: Any, train_cfg: Any, max_length: int, dtype_bytes: int = 2) -> MemoryEstimate:
    """Estimate training memory on one device for `train_cfg` (trainable, optim, batch size, checkpointing)."""
    total, attention, _ = count_params(model_config)
    if train_cfg.trainable == "attention":
        trainable, frozen = attention, total - attention
    elif train_cfg.trainable == "full":
        trainable, frozen = total, 0
    else:  # LoRA: r·(d_in + d_out) per adapted projection, in each layer; the base model stays frozen
        shapes = _shapes(model_config)
        per_layer = sum(train_cfg.lora_r * sum(shapes[name]) for name in train_cfg.lora_target_modules
                        if name in shapes)
        trainable, frozen = model_config.num_hidden_layers * per_layer, total
    master_bytes = max(dtype_bytes, 4)  # trained weights, and so their gradients, are float32
    optimizer_bytes = 2 if "8bit" in train_cfg.optim else 8
    # Preference methods run chosen and rejected sequences in one forward: twice the rows of the batch size.
    rows = train_cfg.batch_size * (2 if train_cfg.method in ("clo", "sft_dpo") else 1)
    h, a, s = model_config.hidden_size, model_config.num_attention_heads, max_length
    if train_cfg.gradient_checkpointing:
        per_layer = 2 * s * rows * h
    else:
        per_layer = s * rows * h * (34 + 5 * a * s / h)
    activations = per_layer * model_config.num_hidden_layers
    return MemoryEstimate(
        total_params=total,
        trainable_params=trainable,
        weights_gb=(frozen * dtype_bytes + trainable * master_bytes) / GB,
        casts_gb=(trainable * dtype_bytes if dtype_bytes < master_bytes else 0) / GB,
        gradients_gb=trainable * master_bytes / GB,
        optimizer_gb=trainable * optimizer_bytes / GB,
        activations_gb=activations / GB,
    )


def check_fits(estimate: MemoryEstimate, available_gb: float) -> str | None:
    """None when the estimate fits in `available_gb`; otherwise one sentence on what to change."""
    if estimate.total_gb <= available_gb:
        return None
    return (f"This run needs {estimate.summary()}, more than the {available_gb:.0f} GB this GPU has; use "
            "train.optim: adamw_8bit, train.gradient_checkpointing: true, a smaller train.batch_size (with a larger "
            "train.grad_accum to keep the step's size), train.trainable: lora, or several GPUs "
            "(accelerate launch --config_file params/accelerate/fsdp.yaml).")


# The paper's base models, from their published config.json files, so estimates for the grid work offline.
PAPER_MODEL_SHAPES = {
    "meta-llama/Llama-2-7b-hf": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "meta-llama/Llama-2-13b-hf": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                      num_attention_heads=40, num_key_value_heads=40, vocab_size=32000),
    "meta-llama/Meta-Llama-3-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "mistralai/Mistral-7B-v0.1": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=8, vocab_size=32000),
    "Qwen/Qwen2.5-3B": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                            num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}


def estimate_for_run(cfg: Any) -> MemoryEstimate:
    """Estimate this run's training memory from the model's config alone (config.json; no weights are read)."""
    from types import SimpleNamespace

    name = cfg.model.name_or_path  # init_from is a run of the same architecture, maybe saved without its config
    if name in PAPER_MODEL_SHAPES:
        model_config = SimpleNamespace(**PAPER_MODEL_SHAPES[name])
    else:
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(name, revision=cfg.model.revision,
                                                  trust_remote_code=cfg.model.trust_remote_code)
    dtype_bytes = 4 if cfg.model.dtype == "float32" else 2
    return estimate_memory(model_config, cfg.train, cfg.model.max_length, dtype_bytes)


def preflight(cfg: Any) -> None:
    """On a GPU, refuse a run that cannot fit before any weight is loaded; elsewhere, nothing to check."""
    import torch

    if not torch.cuda.is_available():
        return
    estimate = estimate_for_run(cfg)
    _free, total = torch.cuda.mem_get_info()
    print(f"Memory estimate: {estimate.summary()}; GPU has {total / GB:.0f} GB.")
    problem = check_fits(estimate, total / GB)
    if problem:
        raise MemoryError(problem)


def add_arguments(parser) -> None:
    """`clo memory RUN.yaml [--gpu-gb 80]`: the estimate for a run, and whether it fits."""
    parser.add_argument("configs", nargs="+", help="YAML layers, later overriding earlier")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="memory of one GPU, in GB")


def command(args) -> int:
    cfg = load_config(*args.configs, overrides=args.overrides)
    try:
        estimate = estimate_for_run(cfg)
    except OSError as err:  # the model's config.json cannot be read
        raise MissingInputError(f"model.name_or_path = {cfg.model.name_or_path!r}: {err}") from err
    print(estimate.summary())
    problem = check_fits(estimate, args.gpu_gb)
    print(problem or f"Fits in {args.gpu_gb:.0f} GB.")
    return 1 if problem else 0
