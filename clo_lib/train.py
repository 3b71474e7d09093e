"""Training for every method of the grid: sft, sft_eng, sft_tgt (SFT rows), clo and sft_dpo's DPO stage (CLO pairs).

All methods share one tokenization (clo_lib.pairs.encode_response), so the loss sees exactly the response tokens.
Preference methods use `clo_lib.loss.clo_loss` (sft_dpo's second stage is the same loss with λ = 0). The reference
model is the model before training: its log-probs are computed once, before the first step, and stored with the
data, so no second copy of the model is held in memory.

    python -m clo_lib.train RUN.yaml --parallel outputs/data/sw/parallel.jsonl --out outputs/my-run
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from clo_lib.config import ConfigError, RunConfig, load_config, save_config
from clo_lib.data import training_records
from clo_lib.io import atomic_write_json, read_jsonl
from clo_lib.loss import clo_loss_tensors, sequence_logps
from clo_lib.memory import preflight as preflight_memory
from clo_lib.pairs import (
    PREFERENCE_METHODS,
    SFT_SIDES,
    build_clo_pairs,
    build_sft_rows,
    check_parallel,
    encode_response,
    format_prompt,
    group_by_pair,
)


class BackendError(RuntimeError):
    """The requested backend cannot run here (for example unsloth without CUDA)."""


def resolve_backend(requested: str) -> str:
    """`hf` or `unsloth`. auto prefers unsloth when CUDA and the package are there, and says when it falls back."""
    import importlib.util

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


def _torch_dtype(name: str) -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def load_model_and_tokenizer(cfg: RunConfig, name_or_path: str | None = None, backend: str | None = None):
    """The model to train (or evaluate) and its tokenizer, through the backend's own loader."""
    path = name_or_path or cfg.train.init_from or cfg.model.name_or_path
    backend = backend or resolve_backend(cfg.model.backend)
    dtype = _torch_dtype(cfg.model.dtype)
    if backend == "unsloth":
        # Unsloth patches transformers and trl on import, so it must come first; imported only on this path.
        # Models without a plain linear head (Gemma's soft-capping) take response_logps' logits path, and Unsloth
        # returns logits only when asked to.
        import os

        os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(path), max_seq_length=cfg.model.max_length, dtype=dtype, load_in_4bit=False,
            full_finetuning=cfg.train.trainable != "lora", revision=cfg.model.revision,
            trust_remote_code=cfg.model.trust_remote_code,
        )
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.model.revision,
                                                  trust_remote_code=cfg.model.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, revision=cfg.model.revision, dtype=dtype,
                                                     trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # base Llama tokenizers ship without a pad token
    return model, tokenizer


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
        matched = 0
        for name, param in model.named_parameters():
            module_name = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
            trains = train_cfg.trainable == "full" or module_name in wanted
            param.requires_grad_(trains)
            matched += trains
        if matched == 0:
            raise ConfigError(f"train.attention_modules = {sorted(wanted)} matches no weight of this model; "
                              "expected module names such as q_proj, k_proj, v_proj, o_proj.",
                              key="train.attention_modules")
    return model, _count_trainable(model)


def _count_trainable(model) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total, "trainable_share": trainable / total}


# ---------------------------------------------------------------------------------------------------------------
# Data: tokenized items, one per source example (CLO) or per row (SFT)


def _encode(tokenizer, cfg: RunConfig, prompt: str, response: str) -> dict[str, list[int]]:
    """Format `prompt` as this run's model expects, then tokenize it with `response` (labels on the response)."""
    text = format_prompt(prompt, tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    return encode_response(tokenizer, text, response, cfg.model.max_length, chat=cfg.model.prompt_format == "chat")


def encode_sft_rows(rows: Sequence[dict], tokenizer, cfg: RunConfig) -> list[dict]:
    return [_encode(tokenizer, cfg, row["prompt"], row["response"]) for row in rows]


def encode_preference_groups(rows: Sequence[dict], tokenizer, cfg: RunConfig) -> list[list[dict]]:
    """One item per source example holding its rows, so a batch of items never splits a pair (batch-based loss)."""
    return [
        [{"chosen": _encode(tokenizer, cfg, row["prompt"], row["chosen"]),
          "rejected": _encode(tokenizer, cfg, row["prompt"], row["rejected"]),
          "is_target": bool(row["is_target"])} for row in group]
        for group in group_by_pair(rows)
    ]


def _pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences])


def collate_sft(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    input_ids = _pad([i["input_ids"] for i in items], pad_id)
    return {"input_ids": input_ids, "labels": _pad([i["labels"] for i in items], -100),
            "attention_mask": _pad([[1] * len(i["input_ids"]) for i in items], 0)}


def _with_response_labels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**batch, "clo_response_labels": batch["labels"]}


def collate_preferences(groups: list[list[dict]], pad_id: int) -> dict[str, torch.Tensor]:
    """Flatten groups into rows; one forward pass covers [all chosen; all rejected] sequences."""
    rows = [row for group in groups for row in group]
    sequences = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    batch = collate_sft(sequences, pad_id)
    batch["is_target"] = torch.tensor([r["is_target"] for r in rows])
    if "ref_chosen_logps" in rows[0]:
        batch["ref_chosen_logps"] = torch.tensor([r["ref_chosen_logps"] for r in rows], dtype=torch.float32)
        batch["ref_rejected_logps"] = torch.tensor([r["ref_rejected_logps"] for r in rows], dtype=torch.float32)
    return batch


@torch.no_grad()
def preference_logps(model, groups: list[list[dict]], pad_id: int, batch_size: int = 8,
                     buckets: int = 1) -> tuple[torch.Tensor, ...]:
    """Summed response log-probs of every row's chosen and rejected answer under `model`, in row order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for start in range(0, len(groups), batch_size):
        batch = collate_preferences(groups[start:start + batch_size], pad_id)
        logps, _ = bucketed_response_logps(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                           batch["labels"].to(device), buckets)
        c, r = logps.float().cpu().chunk(2)
        chosen.append(c)
        rejected.append(r)
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def add_reference_logps(model, groups: list[list[dict]], pad_id: int, batch_size: int = 8, buckets: int = 1) -> None:
    """Log-probs of the frozen starting model, computed once and stored in each row (not recomputed per step)."""
    chosen, rejected = preference_logps(model, groups, pad_id, batch_size, buckets)
    rows = [row for group in groups for row in group]
    for row, c, r in zip(rows, chosen.tolist(), rejected.tolist()):
        row["ref_chosen_logps"], row["ref_rejected_logps"] = c, r


# ---------------------------------------------------------------------------------------------------------------
# Log-probs of response tokens: only response positions go through the LM head, and sequences of similar length
# go through the model together


def length_buckets(lengths: Sequence[int], max_buckets: int) -> list[list[int]]:
    """Indices of `lengths` split into at most `max_buckets` groups that minimize the padded token count.

    Sorting by length and cutting the sorted list where padding costs most is optimal for this cost (each group
    pays count × its longest length), so a small dynamic programme over the cut points finds the best cuts.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    n, k = len(order), max(1, min(max_buckets, len(order)))
    # best[b][j]: least padded tokens covering the j shortest sequences with b groups; cut[b][j]: where the last begins
    best = [[math.inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for b in range(1, k + 1):
        for j in range(1, n + 1):
            for i in range(b - 1, j):
                cost = best[b - 1][i] + (j - i) * sorted_lengths[j - 1]
                if cost < best[b][j]:
                    best[b][j], cut[b][j] = cost, i
    groups_used = min(range(1, k + 1), key=lambda b: (best[b][n], b))  # fewest groups among the cheapest
    groups, end = [], n
    for b in range(groups_used, 0, -1):
        start = cut[b][end]
        groups.append(order[start:end])
        end = start
    return groups[::-1]


def bucketed_response_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                            buckets: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`response_logps` over a right-padded batch, run as up to `buckets` forward passes of similar-length rows.

    The result is the same per row (a causal model never looks at the padding after a row), but short answers no
    longer pay for the longest one: with answers of mixed lengths, padding can be a third of a batch's tokens.
    """
    lengths = attention_mask.sum(-1).tolist()
    groups = length_buckets(lengths, buckets)
    pieces = []
    for group in groups:
        index = torch.tensor(group, device=input_ids.device)
        width = max(lengths[i] for i in group)
        pieces.append(response_logps(model, input_ids[index, :width], attention_mask[index, :width],
                                     labels[index, :width]))
    logps, counts = (torch.cat(parts) for parts in zip(*pieces))
    restore = torch.argsort(torch.tensor([i for group in groups for i in group], device=logps.device))
    return logps[restore], counts[restore]


def enable_response_logps(model, length_buckets: int = 1) -> None:
    """Let `model(input_ids=, attention_mask=, clo_response_labels=labels)` return
    `bucketed_response_logps(..., buckets=length_buckets)`; any other call is the model's own forward.

    The trainer calls the model this way rather than reaching into it, so the wrappers that distributed training
    puts around the model (DistributedDataParallel, FSDP, DeepSpeed) see one ordinary forward per step: they sync
    gradients and gather sharded weights around it.
    """
    model.clo_length_buckets = length_buckets  # read at each call, so a later stage can change it
    if getattr(model, "clo_response_logps_enabled", False):
        return
    own_forward = model.forward

    @functools.wraps(own_forward)
    def forward(*args, clo_response_labels=None, **kwargs):
        if clo_response_labels is None:
            return own_forward(*args, **kwargs)
        return bucketed_response_logps(model, kwargs["input_ids"], kwargs["attention_mask"], clo_response_labels,
                                       model.clo_length_buckets)

    model.forward = forward
    model.clo_response_logps_enabled = True


def sft_response_loss(outputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """The causal-LM loss (token-mean NLL of the response tokens) from `response_logps`, as a Trainer
    `compute_loss_func`. The Trainer passes the response-token count of the whole optimizer step (all
    gradient-accumulation micro-batches, all processes), exactly as it does for the model's own loss.
    """
    logps, counts = outputs
    tokens = num_items_in_batch if num_items_in_batch is not None else counts.sum().clamp(min=1)
    return -logps.sum() / tokens


# The LM head's logits are kept for the backward pass up to this size; beyond it they are computed in chunks and
# recomputed in the backward pass (a 128k vocabulary makes 0.5 MB of float32 logits per token).
LOGITS_BUDGET_BYTES = 256 * 2**20


def response_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                   chunk_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of response-token log-probs and their count; equal to `sequence_logps(model(...).logits, labels)`.

    Only positions that predict a response token go through the LM head: prompt and padding cost nothing there.
    When their logits would pass LOGITS_BUDGET_BYTES (or `chunk_tokens` is given), they go through in chunks whose
    logits are recomputed in the backward pass rather than kept, so a 128k-vocabulary head never holds logits for
    the whole batch. Models whose head does more than a linear layer (logit soft-capping, scaling) take the plain
    path.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    config = base.config
    special_head = getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None)
    backbone = getattr(base, "model", None)
    if special_head or backbone is None or not isinstance(head, torch.nn.Linear):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return sequence_logps(logits, labels)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != -100
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(targets)[mask]
    picked_hidden, picked_targets = hidden[:, :-1][mask], targets[mask]
    step = chunk_tokens or max(1, LOGITS_BUDGET_BYTES // (4 * head.out_features))
    n_tokens = picked_targets.shape[0]
    if n_tokens == 0 or (chunk_tokens is None and n_tokens <= step):
        token_logps = _token_logps(head, picked_hidden, picked_targets)  # small enough: keep the logits
    else:
        pieces = []
        for start in range(0, n_tokens, step):
            h, t = picked_hidden[start:start + step], picked_targets[start:start + step]
            if torch.is_grad_enabled() and h.requires_grad:
                pieces.append(torch.utils.checkpoint.checkpoint(_token_logps, head, h, t, use_reentrant=False))
            else:
                pieces.append(_token_logps(head, h, t))
        token_logps = torch.cat(pieces)
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=labels.device).index_add(0, rows, token_logps)
    return sums, mask.sum(-1)


def _token_logps(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


# ---------------------------------------------------------------------------------------------------------------
# Trainers


def _make_trainer_class():
    from transformers import Trainer

    class CLOTrainer(Trainer):
        """transformers.Trainer whose loss is clo_loss over the preference rows of each batch."""

        def __init__(self, *args, beta: float, lam: float, nll_on: str, directions: str, **kwargs):
            super().__init__(*args, **kwargs)
            # clo_loss is a mean over the batch's rows, not a sum to be divided by the Trainer's token count: let the
            # Trainer average it over gradient-accumulation steps (it skips that for models taking loss kwargs).
            self.model_accepts_loss_kwargs = False
            self.clo_args = {"beta": beta, "lam": lam, "nll_on": nll_on, "directions": directions}
            # Running sums of the CLO metrics since the last log line, kept on the device and read only when logging.
            self._metric_sums: dict[str, torch.Tensor] = {}
            self._metric_weights: dict[str, torch.Tensor] = {}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logps, counts = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                  clo_response_labels=inputs["labels"])
            chosen_logps, rejected_logps = logps.chunk(2)
            chosen_counts, _ = counts.chunk(2)
            loss, metrics = clo_loss_tensors(chosen_logps, rejected_logps, inputs["ref_chosen_logps"],
                                             inputs["ref_rejected_logps"], chosen_counts, inputs["is_target"],
                                             **self.clo_args)
            if model.training:
                self._add_metrics(metrics)
            return (loss, {"logps": logps}) if return_outputs else loss

        def _add_metrics(self, metrics: dict[str, torch.Tensor]) -> None:
            # Whole-batch metrics average over steps; per-direction ones over that direction's rows.
            weights = {"en": metrics.pop("en/rows"), "tgt": metrics.pop("tgt/rows")}
            for key, value in metrics.items():
                weight = weights[key.split("/")[0]] if "/" in key else torch.ones_like(value)
                self._metric_sums[key] = self._metric_sums.get(key, 0) + value * weight
                self._metric_weights[key] = self._metric_weights.get(key, 0) + weight

        def log(self, logs: dict[str, float], *args, **kwargs) -> None:
            # Averages of the CLO metrics since the last log line, next to the Trainer's own: one device read.
            if self._metric_sums:
                keys = list(self._metric_sums)
                sums = torch.stack([self._metric_sums[k] for k in keys]).tolist()
                weights = torch.stack([self._metric_weights[k] for k in keys]).tolist()
                for key, total, weight in zip(keys, sums, weights):
                    if weight > 0:  # a direction with no rows since the last log line has nothing to report
                        logs[key if key != "loss" else "clo_loss"] = round(total / weight, 6)
            self._metric_sums.clear()
            self._metric_weights.clear()
            super().log(logs, *args, **kwargs)

    return CLOTrainer


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def training_arguments(cfg: RunConfig, out_dir: Path, per_device_batch: int):
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    dtype = _torch_dtype(cfg.model.dtype)
    extra = {}
    if cfg.train.gradient_checkpointing:  # named only when on: transformers 5.2x renames it and warns
        extra["gradient_checkpointing"] = True
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=cfg.train.grad_accum,
        learning_rate=cfg.train.learning_rate,
        num_train_epochs=cfg.train.epochs,
        lr_scheduler_type=cfg.train.lr_scheduler,
        warmup_steps=cfg.train.warmup_ratio,  # a float below 1 is a share of all steps
        weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm,
        optim=cfg.train.optim,
        bf16=on_gpu and dtype == torch.bfloat16,
        logging_steps=cfg.train.logging_steps,
        save_steps=cfg.train.save_steps,
        save_total_limit=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=not on_gpu,
        disable_tqdm=False,  # tqdm progress bars rather than printed dicts
        **extra,
    )


def build_trainer(cfg: RunConfig, parallel: Sequence[dict], out_dir: Path, stage: str, model=None, tokenizer=None,
                  backend: str | None = None):
    """The Trainer for one stage ("sft" rows or "preference" rows), ready to train, and its trainable counts.

    Without `model`, loads it through `cfg.model.backend`; with one, `backend` says which loader made it.
    """
    if model is None:
        preflight_memory(cfg)  # on a GPU: refuse a run that cannot fit before loading any weight
        backend = resolve_backend(cfg.model.backend)
        model, tokenizer = load_model_and_tokenizer(cfg, backend=backend)
    if hasattr(model, "peft_config"):  # sft_dpo's second stage goes on training the SFT stage's adapter
        counts = _count_trainable(model)
    else:
        model, counts = select_trainable(model, cfg.train, backend or "hf")
    pad_id = tokenizer.pad_token_id
    if stage == "preference":
        groups = encode_preference_groups(build_clo_pairs(parallel), tokenizer, cfg)
        _to_training_device(model)  # the reference pass runs before the Trainer would move the model
        enable_response_logps(model, cfg.train.length_buckets)
        add_reference_logps(model, groups, pad_id, batch_size=max(1, cfg.train.batch_size // 2),
                            buckets=cfg.train.length_buckets)
        lam = 0.0 if cfg.train.method == "sft_dpo" else cfg.train.lam
        trainer = _make_trainer_class()(
            model=model,
            args=training_arguments(cfg, out_dir, per_device_batch=max(1, cfg.train.batch_size // 2)),
            train_dataset=_ListDataset(groups),
            data_collator=lambda batch: collate_preferences(batch, pad_id),
            processing_class=tokenizer,
            beta=cfg.train.beta, lam=lam, nll_on=cfg.train.nll_on, directions=cfg.train.directions,
        )
    else:
        from transformers import Trainer

        sides = SFT_SIDES["sft" if cfg.train.method == "sft_dpo" else cfg.train.method]
        items = encode_sft_rows(build_sft_rows(parallel, sides), tokenizer, cfg)
        enable_response_logps(model, cfg.train.length_buckets)
        trainer = Trainer(
            model=model,
            args=training_arguments(cfg, out_dir, per_device_batch=cfg.train.batch_size),
            train_dataset=_ListDataset(items),
            # The Trainer takes `labels` out of the batch to count response tokens and hand them to the loss; the
            # same tensor under `clo_response_labels` sends the forward down the response-only path.
            data_collator=lambda batch: _with_response_labels(collate_sft(batch, pad_id)),
            processing_class=tokenizer,
            compute_loss_func=sft_response_loss,
        )
    return trainer, counts


def train_stage(cfg: RunConfig, parallel: Sequence[dict], out_dir: Path, stage: str, model=None, tokenizer=None,
                backend: str | None = None):
    """Train one stage (see `build_trainer`) and return (trainer, summary); a stage with checkpoints resumes.

    The trained model is `trainer.model` and its tokenizer `trainer.processing_class`.
    """
    trainer, counts = build_trainer(cfg, parallel, out_dir, stage, model, tokenizer, backend)
    checkpoints = out_dir / "checkpoints"
    resume = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    # From the logged step losses, which a resumed run restores from its checkpoint: the Trainer's own
    # training_loss covers only the steps of this call (0.0 when a finished run is re-run).
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {"stage": stage, **counts, "resumed": resume,
               "train_loss": sum(losses) / len(losses) if losses else result.training_loss,
               "final_loss": losses[-1] if losses else result.training_loss,
               "steps": result.global_step, "log_history": trainer.state.log_history}
    return trainer, summary


def _to_training_device(model) -> None:
    """Move a model loaded on the CPU to this process's accelerator (cuda:<local rank>, or stay on the CPU)."""
    from accelerate import PartialState

    device = PartialState().device
    if getattr(model, "hf_device_map", None) is None and next(model.parameters()).device != device:
        model.to(device)


def train_run(cfg: RunConfig, parallel: Sequence[dict], out_dir: str | Path) -> dict[str, Any]:
    """Train `cfg.train.method` on `parallel` records; save weights, tokenizer, resolved config and training log.

    Under `accelerate launch` every process trains and only the main one writes; the Trainer gathers sharded
    (FSDP, DeepSpeed) weights for saving.
    """
    from accelerate import PartialState

    check_parallel(parallel)  # bad records are refused before anything is written or loaded
    out_dir = Path(out_dir)
    main_process = PartialState().is_main_process
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    method = cfg.train.method
    summaries = []
    trainer = None
    if method in SFT_SIDES or (method == "sft_dpo" and cfg.train.init_from is None):
        trainer, summary = train_stage(cfg, parallel, out_dir / ("sft" if method == "sft_dpo" else ""), "sft")
        summaries.append(summary)
    if method in PREFERENCE_METHODS:
        before = (trainer.model, trainer.processing_class) if trainer else (None, None)
        trainer, summary = train_stage(cfg, parallel, out_dir, "preference", *before)
        summaries.append(summary)
    # attention/full: the whole trained model; lora: the adapter (plus, if asked, a merged copy for plain loading).
    trainer.save_model(str(out_dir / "model"))  # the tokenizer too; main process only, shards gathered
    if main_process and cfg.train.trainable == "lora" and cfg.train.merge_lora:
        merged_dir = out_dir / "merged"
        trainer.model.merge_and_unload().save_pretrained(merged_dir)
        trainer.processing_class.save_pretrained(merged_dir)
    log = {"method": method, "stages": summaries}
    if main_process:
        atomic_write_json(out_dir / "train_log.json", log)
    return log


def main(argv: list[str] | None = None) -> int:
    """`python -m clo_lib.train RUN.yaml [...] --parallel FILE.jsonl --out DIR`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m clo_lib.train", description=main.__doc__)
    parser.add_argument("configs", nargs="+", help="YAML layers, later overriding earlier")
    parser.add_argument("--parallel", required=True, help="parallel corpus JSONL from the translation stage")
    parser.add_argument("--out", required=True, help="run folder to write")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(*args.configs, overrides=args.overrides)
        if not Path(args.parallel).is_file():
            raise ConfigError(f"--parallel {args.parallel} does not exist; expected the translation stage's JSONL.")
        parallel = list(read_jsonl(args.parallel))
        check_parallel(parallel)
        # The corpus is in seeded-permutation order: the first data.size unflagged records are this run's subset.
        parallel = training_records(parallel, cfg.data.size, cfg.data.keep_flagged)
    except (ConfigError, BackendError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log = train_run(cfg, parallel, args.out)
    last = log["stages"][-1]
    print(json.dumps({"method": log["method"], "train_loss": last["train_loss"], "steps": last["steps"],
                      "trainable_params": last["trainable_params"]}))
    return 0 if math.isfinite(last["train_loss"]) else 1


if __name__ == "__main__":
    sys.exit(main())
