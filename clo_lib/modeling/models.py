"""Models in and out: the backend that loads them, the weights that train, their precision, and run folders.

    load_model_and_tokenizer(cfg, path)  a base model, or a trained run's model/ in any of its forms, through the
                                         hf or unsloth backend
    select_trainable(model, train_cfg)   freeze all but the attention projections (the paper's), everything, or LoRA
    keep_trained_in_float32(model)       16-bit weights: the trained ones become float32 master weights
    save_trained(trainer, model_dir)     model/ as `train.save` says; returns what was written

Precision. With weights in bfloat16, AdamW's updates at the paper's learning rate (8e-6) are mostly smaller than
half a bfloat16 step of the weight they update, so they round away: a probe trained 15 % of the attention weights'
elements in bfloat16 against 100 % in float32. The trained weights therefore train as float32 master weights,
under autocast (the compute stays 16-bit), while frozen weights stay in the dtype they loaded in, so memory stays
low: for attention-only training of an 8B model, 1.3B float32 weights beside 6.7B bfloat16 ones.

Run folders. `model/` holds one of
    full       the whole model (save_pretrained; the trained tensors in float32 when they trained so)
    trainable  only the trained tensors (trained.safetensors) and the base model's id and revision
    adapter    a LoRA adapter (peft)
and a manifest, clo_trained.json, saying which and naming the trained tensors. Everything that loads a run (the
evaluation, sft_dpo's `init_from`, the notebooks) goes through `load_model_and_tokenizer`, which reads all three.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from clo_lib.common.errors import CloError, InputError
from clo_lib.common.io import atomic_write_json
from clo_lib.config.schema import ConfigError, RunConfig

MANIFEST = "clo_trained.json"
TRAINED_TENSORS = "trained.safetensors"
HALF_DTYPES = (torch.bfloat16, torch.float16)


class BackendError(CloError, RuntimeError):
    """The requested backend or precision cannot run here (for example unsloth without CUDA)."""


def resolve_backend(requested: str) -> str:
    """`hf` or `unsloth`. auto prefers unsloth when CUDA and the package are there, and says when it falls back."""
    has_cuda = torch.cuda.is_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "hf":
        return "hf"
    if requested == "unsloth":
        if not has_cuda:
            raise BackendError("model.backend = unsloth needs a CUDA GPU and none is visible; use backend: hf or auto.")
        if not has_unsloth:
            raise BackendError("model.backend = unsloth, but unsloth is not installed; pip install -e '.[gpu]'.")
        return "unsloth"
    if has_cuda and has_unsloth:
        return "unsloth"
    why = "no CUDA GPU" if not has_cuda else "unsloth is not installed"
    print(f"model.backend = auto: using hf (transformers + peft), since {why}.")
    return "hf"


def torch_dtype(name: str) -> torch.dtype:
    """The dtype `model.dtype` loads weights in: auto is bfloat16 on GPUs that compute in it natively (compute
    capability 8.0 and up: A100, L4, H100), float32 elsewhere. `torch.cuda.is_bf16_supported()` is not asked: it is
    True on a T4 (7.5), where bfloat16 is emulated and slow."""
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def check_training_precision(cfg: RunConfig) -> torch.dtype:
    """The dtype weights load in for training; float16 is refused where the Trainer cannot scale the loss.

    float16 gradients underflow without loss scaling, and accelerate scales the loss on CUDA only.
    """
    dtype = torch_dtype(cfg.model.dtype)
    if dtype == torch.float16 and not torch.cuda.is_available():
        raise BackendError("model.dtype = float16 trains only on a CUDA GPU (where the loss is scaled so float16 "
                           "gradients do not underflow); use bfloat16 or float32 here.")
    return dtype


def training_autocast(dtype: torch.dtype, device: torch.device):
    """The autocast that training runs under for weights loaded in `dtype` (nothing for float32).

    The Trainer enters the same autocast (bf16=True / fp16=True); the reference pass enters this one, so the
    policy's first step and the reference compute exactly the same numbers.
    """
    if dtype not in HALF_DTYPES:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# Loading

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_source(name_or_path: str, key: str = "model.name_or_path", gguf_file: str | None = None) -> None:
    """Before any weight loads: a local folder that holds a model (or a kit run's model/), a hub id, or a GGUF file.

    One sentence instead of transformers' traceback for the usual slips: a path that does not exist, a file, a
    folder without a model, a GGUF checkpoint without the gguf package or of an architecture transformers cannot
    load. A name shaped like a hub id (organisation/name) is left to the hub.
    """
    if gguf_file:
        check_gguf(name_or_path, gguf_file)
        return
    path = Path(name_or_path)
    if path.is_file():
        hint = " (a GGUF file: set model.gguf_file)" if path.suffix == ".gguf" else ""
        raise ConfigError(f"{key} = {name_or_path!r} is a file{hint}; expected a model folder (with config.json) or "
                          "a hub id.", key=key)
    if path.is_dir():
        if not any((path / name).is_file() for name in ("config.json", MANIFEST, "adapter_config.json")):
            raise ConfigError(f"{key} = {name_or_path!r} holds no config.json (nor a trained run's {MANIFEST}); "
                              "expected a model folder or a hub id.", key=key)
        return
    if not _HUB_ID.match(str(name_or_path)):
        raise ConfigError(f"{key} = {name_or_path!r}: no such folder here, and not a hub id (organisation/name); "
                          "expected a model folder or a hub id.", key=key)


def gguf_location(name_or_path: str | Path, gguf_file: str) -> tuple[str, str]:
    """(folder, file name) of `model.gguf_file`: a path of its own (absolute, or relative to here) when one exists
    there, else a file inside `name_or_path`; transformers takes the two apart."""
    own = Path(gguf_file)
    if own.is_absolute() or own.is_file():
        return str(own.parent), own.name
    return str(name_or_path), gguf_file


def check_gguf(name_or_path: str | Path, gguf_file: str, key: str = "model.gguf_file") -> str:
    """The GGUF file's architecture, once it is known that transformers can load it; else one clear sentence."""
    folder, name = gguf_location(name_or_path, gguf_file)
    path = Path(folder) / name
    if not path.is_file():
        raise ConfigError(f"{key} = {gguf_file!r}: no such file (looked for {path}); expected a .gguf file "
                          "inside the model folder or a path to one.", key=key)
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{key} = {gguf_file!r} needs the gguf package, which transformers reads GGUF "
                          "files with: pip install 'gguf>=0.17'.", key=key)
    import gguf
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        field = gguf.GGUFReader(str(path)).fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, ValueError, IndexError) as err:
        raise ConfigError(f"{key} = {path}: not a readable GGUF file with a general.architecture "
                          f"({err}).", key=key) from err
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        supported = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
        raise ConfigError(f"{key} = {path}: its architecture {arch!r} is not one transformers loads from "
                          f"GGUF ({supported}); convert it to an HF folder another way.", key=key)
    return arch


def load_model_and_tokenizer(cfg: RunConfig, name_or_path: str | Path | None = None, backend: str | None = None,
                             for_training: bool = False):
    """The model to train or evaluate and its tokenizer: a base model, or a trained run's model/ in any form.

    Weights load in `model.dtype`. With `for_training`, the tensors a kit run trained are restored in the dtype
    they trained in (float32 master weights), so a later stage (sft_dpo after its SFT run) goes on from them
    exactly rather than from their 16-bit rounding.
    """
    path = str(name_or_path or cfg.train.init_from or cfg.model.name_or_path)
    backend = backend or resolve_backend(cfg.model.backend)
    manifest = read_manifest(path)
    if manifest and manifest["format"] == "trainable":
        model, _ = _load_base(cfg, manifest["base_model"], manifest.get("revision"), backend, manifest.get("gguf_file"))
        tokenizer = _load_tokenizer(cfg, path)
        _overlay(model, _saved_tensors(Path(path), manifest["trained_tensors"]), keep_dtype=for_training)
    elif (Path(path) / "adapter_config.json").is_file():
        from peft import PeftModel

        base, _ = _load_base(cfg, cfg.model.name_or_path, cfg.model.revision, backend, cfg.model.gguf_file)
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
        tokenizer = _load_tokenizer(cfg, path)
    else:
        is_base = path == cfg.model.name_or_path
        model, tokenizer = _load_base(cfg, path, cfg.model.revision if is_base else None, backend,
                                      cfg.model.gguf_file if is_base else None)
        if manifest and for_training:
            _overlay(model, _saved_tensors(Path(path), manifest["trained_tensors"]), keep_dtype=True)
    if manifest:
        model.clo_base_model = manifest["base_model"]
        model.clo_base_revision = manifest.get("revision")
        model.clo_base_gguf_file = manifest.get("gguf_file")
        model.clo_trained_names = set(manifest["trained_tensors"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # base Llama tokenizers ship without a pad token
    return model, tokenizer


def _load_tokenizer(cfg: RunConfig, path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)


def _load_base(cfg: RunConfig, path: str, revision: str | None, backend: str, gguf_file: str | None = None):
    """Weights and tokenizer of a model folder, hub id or GGUF file, through the backend's own loader, in
    model.dtype."""
    dtype = torch_dtype(cfg.model.dtype)
    if backend == "unsloth":
        if gguf_file:
            raise BackendError("model.gguf_file: the unsloth backend does not load GGUF files; convert the model to "
                               "an HF folder first (clo fetch, or load it once with backend: hf and "
                               "save_pretrained).")
        # Unsloth patches transformers and trl on import, so it must come first; imported only on this path.
        # Models without a plain linear head (Gemma's soft-capping) take response_logps' logits path, and Unsloth
        # returns logits only when asked to.
        os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")
        from unsloth import FastLanguageModel

        return FastLanguageModel.from_pretrained(
            model_name=path, max_seq_length=cfg.model.max_length, dtype=dtype, load_in_4bit=False,
            full_finetuning=cfg.train.trainable != "lora", revision=revision,
            trust_remote_code=cfg.model.trust_remote_code,
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf_file:
        return load_gguf(path, gguf_file, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=cfg.model.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype,
                                                 trust_remote_code=cfg.model.trust_remote_code)
    return model, tokenizer


def load_gguf(name_or_path: str | Path, gguf_file: str, dtype: torch.dtype, key: str = "model.gguf_file"):
    """Model and tokenizer (with its chat template) of a GGUF checkpoint, dequantised into `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(name_or_path, gguf_file, key)
    folder, name = gguf_location(name_or_path, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    return dequantised(model), tokenizer


def dequantised(model):
    """A model loaded from GGUF as the plain model it now is. transformers dequantises GGUF weights into the
    requested dtype as it loads them but keeps the GGUF quantizer attached, which makes save_pretrained (and the
    Trainer) refuse the model; nothing of it is quantised any more, so the marks go."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest of a kit run's model/ folder, or None for anything else (a base model, a hub id)."""
    file = Path(path) / MANIFEST
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def _saved_tensors(folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors of a saved model folder, in the dtype they were saved in."""
    from safetensors import safe_open

    files = [folder / TRAINED_TENSORS] if (folder / TRAINED_TENSORS).is_file() else sorted(folder.glob("*.safetensors"))
    wanted, found = set(names), {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in wanted & set(handle.keys()):
                found[key] = handle.get_tensor(key)
    missing = wanted - set(found)
    if missing:
        raise InputError(f"{folder}: {MANIFEST} names trained tensors that no safetensors file there holds "
                         f"({', '.join(sorted(missing)[:3])}...); the run folder is incomplete, train it again.")
    return found


def _overlay(model, tensors: dict[str, torch.Tensor], keep_dtype: bool) -> None:
    """Put saved tensors into the model's parameters, in their own dtype (`keep_dtype`) or the parameter's."""
    with torch.no_grad():
        for name, tensor in tensors.items():
            param = model.get_parameter(name)
            param.data = tensor.to(device=param.device, dtype=tensor.dtype if keep_dtype else param.dtype)


# ---------------------------------------------------------------------------------------------------------------
# What trains, in what precision


def select_trainable(model, train_cfg, backend: str = "hf") -> tuple[Any, dict[str, Any]]:
    """Freeze all but the chosen weights: attention projections (full weights), everything, or LoRA adapters."""
    if train_cfg.trainable == "lora" and backend == "unsloth":
        # Unsloth's own LoRA wrapper: its fused LoRA kernels only apply to adapters it adds itself.
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            model, r=train_cfg.lora_r, lora_alpha=train_cfg.lora_alpha, lora_dropout=train_cfg.lora_dropout,
            target_modules=train_cfg.lora_target_modules, bias="none",
            use_gradient_checkpointing="unsloth" if train_cfg.gradient_checkpointing else False,
        )
    elif train_cfg.trainable == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=train_cfg.lora_r, lora_alpha=train_cfg.lora_alpha, lora_dropout=train_cfg.lora_dropout,
            target_modules=train_cfg.lora_target_modules, task_type="CAUSAL_LM",
        ))
    else:
        wanted = set(train_cfg.attention_modules)
        matched: set[str] = set()
        for name, param in model.named_parameters():
            module_name = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
            trains = train_cfg.trainable == "full" or module_name in wanted
            param.requires_grad_(trains)
            if module_name in wanted:
                matched.add(module_name)
        if train_cfg.trainable == "attention" and matched != wanted:
            _refuse_partial_attention(model, wanted, matched)
        names = {name for name, param in model.named_parameters() if param.requires_grad}
        # Every tensor that differs from the base model, over all stages (sft_dpo: the SFT stage's and this one's).
        model.clo_trained_names = getattr(model, "clo_trained_names", set()) | names
    return model, count_trainable(model)


def _refuse_partial_attention(model, wanted: set[str], matched: set[str]) -> None:
    """A model whose attention projections are named otherwise (fused qkv_proj, c_attn) would otherwise train
    only the names that happen to match (o_proj alone), silently."""
    attention_linears = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                                if isinstance(module, torch.nn.Linear) and ("attn" in name or "attention" in name)})
    missing = ", ".join(sorted(wanted - matched))
    raise ConfigError(
        f"train.attention_modules = {sorted(wanted)}: {missing} match no weight of this model, whose attention "
        f"layers hold {', '.join(attention_linears) or 'no linear layer'}; list those names instead.",
        key="train.attention_modules")


def count_trainable(model) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total, "trainable_share": trainable / total}


def disable_dropout(model) -> None:
    """Every dropout of `model` (the base model's and LoRA's) set to 0, as TRL's disable_dropout_in_model does for
    its DPOTrainer (the same three lines; importing trl for them costs seconds per process)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0


def keep_trained_in_float32(model) -> int:
    """Turn 16-bit trainable weights into float32 master weights (frozen ones keep their dtype); returns how many
    elements changed dtype. Autocast keeps the compute in 16-bit; the optimizer updates the float32 copies."""
    upcast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in HALF_DTYPES:
            param.data = param.data.float()
            upcast += param.numel()
    return upcast


def to_training_device(model) -> None:
    """Move a model loaded on the CPU to this process's accelerator (cuda:<local rank>, or stay on the CPU)."""
    from accelerate import PartialState

    device = PartialState().device
    if getattr(model, "hf_device_map", None) is None and next(model.parameters()).device != device:
        model.to(device)


# ---------------------------------------------------------------------------------------------------------------
# Saving


def save_trained(trainer, model_dir: Path, cfg: RunConfig, main_process: bool) -> dict[str, Any]:
    """Write model/ as `train.save` says (see the module docstring); returns {"format", "bytes"} of what it wrote.

    The Trainer gathers sharded weights (FSDP, DeepSpeed) in both paths; only the main process writes.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    base_model = getattr(model, "clo_base_model", None) or cfg.model.name_or_path
    revision = getattr(model, "clo_base_revision", None) if hasattr(model, "clo_base_model") else cfg.model.revision
    trained = sorted(getattr(model, "clo_trained_names", set()))
    if hasattr(model, "peft_config"):
        fmt = "adapter"
    else:
        fmt = "trainable" if cfg.train.save == "trainable" else "full"
    if fmt == "trainable":
        from safetensors.torch import save_file

        state = trainer.accelerator.get_state_dict(trainer.model)  # gathered on the main process
        if main_process:
            model_dir.mkdir(parents=True, exist_ok=True)
            save_file({name: state[name].detach().cpu().contiguous() for name in trained},
                      str(model_dir / TRAINED_TENSORS), metadata={"format": "pt"})
            trainer.processing_class.save_pretrained(model_dir)
    else:
        trainer.save_model(str(model_dir))  # the tokenizer too; main process only, shards gathered
    if main_process:
        gguf_file = getattr(model, "clo_base_gguf_file", None) if hasattr(model, "clo_base_model") else (
            cfg.model.gguf_file)
        atomic_write_json(model_dir / MANIFEST, {"format": fmt, "base_model": str(base_model), "revision": revision,
                                                 "gguf_file": gguf_file,
                                                 "trained_tensors": trained if fmt != "adapter" else []})
    return {"format": fmt, "bytes": folder_bytes(model_dir)}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
