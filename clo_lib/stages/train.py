"""Training for every method of the grid: sft, sft_eng, sft_tgt (SFT rows), clo and sft_dpo (SFT, then CLO's loss
with λ = 0 on the same pairs); clo_lib.method.pairs.METHOD_STAGES says which stages a method runs.

Preference stages use `clo_lib.method.loss.clo_loss`. The reference model is the model before training: its log-probs
are computed once, before the first step, and stored with the data, so no second copy of the model is held in memory.
Models, precision and run folders are clo_lib.modeling.models' job, batches clo_lib.modeling.batches', log-probs
clo_lib.modeling.logps', the trainer clo_lib.modeling.trainer's.

A run folder is protected: a finished run with the same fingerprint (clo_lib.artifacts.provenance) is not trained
again, one made under another config or data is refused with one sentence, and so are checkpoints made under another
config.
After a successful save, the checkpoints are removed (weights and optimizer state: tens of GB for a 7B model).

    clo train RUN.yaml --parallel outputs/data/sw/parallel.jsonl --out outputs/my-run
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import set_seed

from clo_lib.artifacts.corpus import run_records
from clo_lib.artifacts.provenance import CHECKPOINT_FINGERPRINT, changed_settings, train_fingerprint
from clo_lib.artifacts.runs import preference_saturation
from clo_lib.common.errors import InputError
from clo_lib.common.io import atomic_write_json
from clo_lib.config.load import load_config, read_yaml, save_config
from clo_lib.config.schema import ConfigError, RunConfig
from clo_lib.method.pairs import METHOD_STAGES, TrainingStage, check_parallel
from clo_lib.modeling.batches import (
    collate_preferences,
    collate_sft,
    encode_preference_groups,
    encode_sft_rows,
    with_response_labels,
)
from clo_lib.modeling.logps import add_reference_logps, enable_response_logps, sft_response_loss
from clo_lib.modeling.memory import preflight as preflight_memory
from clo_lib.modeling.models import (
    check_model_source,
    check_training_precision,
    count_trainable,
    disable_dropout,
    folder_bytes,
    keep_trained_in_float32,
    load_model_and_tokenizer,
    resolve_backend,
    save_trained,
    select_trainable,
    to_training_device,
    training_autocast,
)
from clo_lib.modeling.trainer import ListDataset, make_trainer_class


class RunFolderError(InputError):
    """The output folder holds another run (or its checkpoints); the message names it and what differs."""


def logging_steps(cfg: RunConfig, items: int, per_device_batch: int) -> int:
    """`train.logging_steps`, or when unset: every step for a stage of at most 200 optimizer steps (a 16-example run
    still draws its curves), else a hundred log points per stage."""
    if cfg.train.logging_steps:
        return cfg.train.logging_steps
    steps = math.ceil(math.ceil(items / per_device_batch) / cfg.train.grad_accum * cfg.train.epochs)
    return 1 if steps <= 200 else steps // 100


def training_arguments(cfg: RunConfig, out_dir: Path, per_device_batch: int, items: int):
    """The Trainer's arguments (`items`: the stage's training items, for the logging interval). 16-bit weights
    train under the Trainer's autocast (bf16 / fp16), with the trained weights kept in float32
    (clo_lib.modeling.models.keep_trained_in_float32); fp16 also scales the loss (CUDA only)."""
    from transformers import TrainingArguments

    dtype = check_training_precision(cfg)
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
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        logging_steps=logging_steps(cfg, items, per_device_batch),
        save_steps=cfg.train.save_steps,
        save_total_limit=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=cfg.train.report_to,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,  # tqdm progress bars rather than printed dicts
        **extra,
    )


def build_trainer(cfg: RunConfig, parallel: Sequence[dict], out_dir: Path, stage: TrainingStage, model=None,
                  tokenizer=None, backend: str | None = None):
    """The Trainer for one stage (SFT rows or preference pairs), ready to train, and its trainable counts.

    Without `model`, loads it through `cfg.model.backend`; with one, `backend` says which loader made it.
    """
    dtype = check_training_precision(cfg)
    if model is None:
        preflight_memory(cfg)  # on a GPU: refuse a run that cannot fit before loading any weight
        backend = resolve_backend(cfg.model.backend)
        model, tokenizer = load_model_and_tokenizer(cfg, backend=backend, for_training=True)
    if hasattr(model, "peft_config"):  # sft_dpo's second stage goes on training the SFT stage's adapter
        counts = count_trainable(model)
    else:
        # LoRA draws its A matrices here: from the run's seed, so a run is repeatable and every process of a
        # sharded run draws the same ones (FSDP, unlike DDP, does not copy rank 0's weights to the others)
        set_seed(cfg.seed)
        model, counts = select_trainable(model, cfg.train, backend or "hf")
    keep_trained_in_float32(model)
    pad_id = tokenizer.pad_token_id
    enable_response_logps(model, cfg.train.length_buckets)
    rows = stage.rows(parallel)
    if stage.kind == "preference":
        # as TRL's DPOTrainer: no dropout in preference stages, or the policy's log-probs would differ from the
        # reference's (computed in eval mode) before any update, and the DPO margins would be noise
        disable_dropout(model)
        groups = encode_preference_groups(rows, tokenizer, cfg)
        to_training_device(model)  # the reference pass runs before the Trainer would move the model
        with training_autocast(dtype, next(model.parameters()).device):
            add_reference_logps(model, groups, pad_id, batch_size=max(1, cfg.train.batch_size // 2),
                                buckets=cfg.train.length_buckets)
        lam = 0.0 if cfg.train.method == "sft_dpo" else cfg.train.lam
        trainer = make_trainer_class()(
            model=model,
            args=training_arguments(cfg, out_dir, max(1, cfg.train.batch_size // 2), len(groups)),
            train_dataset=ListDataset(groups),
            data_collator=lambda batch: collate_preferences(batch, pad_id),
            processing_class=tokenizer,
            beta=cfg.train.beta, lam=lam, nll_sides=cfg.train.nll_sides, dpo_sides=cfg.train.dpo_sides,
        )
    else:
        from transformers import Trainer

        encoded = encode_sft_rows(rows, tokenizer, cfg)
        trainer = Trainer(
            model=model,
            args=training_arguments(cfg, out_dir, cfg.train.batch_size, len(encoded)),
            train_dataset=ListDataset(encoded),
            data_collator=lambda batch: with_response_labels(collate_sft(batch, pad_id)),
            processing_class=tokenizer,
            compute_loss_func=sft_response_loss,
        )
    for callback in trainer.callback_handler.callbacks:  # TensorBoard logs beside the model (checkpoints/, its
        if type(callback).__name__ == "TensorBoardCallback":  # default, is removed once the run is saved)
            callback.logging_dir = str(out_dir / "runs")
    return trainer, counts


def train_stage(cfg: RunConfig, parallel: Sequence[dict], out_dir: Path, stage: TrainingStage, model=None,
                tokenizer=None, backend: str | None = None, fingerprint: dict | None = None):
    """Train one stage (see `build_trainer`) and return (trainer, summary); a stage with checkpoints made under
    the same `fingerprint` resumes from them, and checkpoints made under another are refused.

    The trained model is `trainer.model` and its tokenizer `trainer.processing_class`.
    """
    from accelerate import PartialState

    checkpoints = out_dir / "checkpoints"
    resume = _resumable(checkpoints, cfg, fingerprint)
    trainer, counts = build_trainer(cfg, parallel, out_dir, stage, model, tokenizer, backend)
    if fingerprint is not None and PartialState().is_main_process:
        atomic_write_json(checkpoints / CHECKPOINT_FINGERPRINT, {"fingerprint": fingerprint, "config": cfg.to_dict()})
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    # The Trainer's own mean over every step; a resumed run's covers only the steps of this call, so there the
    # mean of the logged step losses (restored from the checkpoint) stands in for it.
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {"stage": stage.kind, **counts, "resumed": resume,
               "train_loss": sum(losses) / len(losses) if resume and losses else result.training_loss,
               "final_loss": losses[-1] if losses else result.training_loss,
               "steps": result.global_step, "log_history": trainer.state.log_history}
    warnings = preference_saturation(trainer.state.log_history) + sharding_fell_back(trainer)
    for warning in warnings:
        print(f"warning: {warning}")
    if warnings:
        summary["warnings"] = warnings
    return trainer, summary


def sharding_fell_back(trainer) -> list[str]:
    """A warning when `accelerate launch` asked for FSDP or DeepSpeed but the run was not sharded: accelerate
    turns FSDP into plain data parallelism (MULTI_CPU) on a machine without GPUs, and says nothing
    (tests/fsdp_cpu_launch.py lifts that rule; DeepSpeed shards on CPUs with DS_ACCELERATOR=cpu)."""
    asked = [name for name, env in (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED"))
             if os.environ.get(env, "").lower() == "true"]
    got = trainer.accelerator.distributed_type.name
    if not asked or got in asked:
        return []
    return [f"the launcher asked for {asked[0]}, but accelerate ran this training as {got} (every process held "
            "the whole model): on a machine without GPUs accelerate does not shard with FSDP (docs/running.md)"]


def _resumable(checkpoints: Path, cfg: RunConfig, fingerprint: dict | None) -> bool:
    """Whether `checkpoints` holds a checkpoint to resume; refuses one made under another fingerprint."""
    if not (checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))):
        return False
    if fingerprint is None:
        return True
    marker = checkpoints / CHECKPOINT_FINGERPRINT
    stored = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
    if stored.get("fingerprint") != fingerprint:
        what = "; ".join(changed_settings(stored["config"], cfg, "train")[:3]) if "config" in stored else ""
        raise RunFolderError(
            f"{checkpoints} holds checkpoints made under another config or data ({what or 'unknown config'}); "
            "training will not resume from them: delete that folder to start afresh, or train into another folder.")
    return True


def check_report_to(cfg: RunConfig) -> None:
    """`train.report_to` names a logger that is installed (the Trainer would fail only after the model loaded)."""
    import importlib.util

    target = cfg.train.report_to
    if target != "none" and importlib.util.find_spec(target) is None:
        extra = "pip install -e '.[notebooks]'" if target == "tensorboard" else "pip install wandb"
        raise ConfigError(f"train.report_to = {target} needs the {target} package, which is not installed; "
                          f"expected {extra} first, or train.report_to: none.")


def run_train(cfg: RunConfig, out_dir: str | Path, parallel: Sequence[dict] | None = None) -> dict[str, Any]:
    """Train `cfg.train.method` on `parallel` records (default: the run's subset of its corpus, run_records); save
    weights, tokenizer, resolved config and training log in `out_dir`.

    A folder holding this very run (same fingerprint) already trained returns its log without training; one holding
    another run is refused. Under `accelerate launch` every process trains and only the main one writes; the
    Trainer gathers sharded (FSDP, DeepSpeed) weights for saving.
    """
    from accelerate import PartialState

    parallel = run_records(cfg) if parallel is None else parallel
    check_parallel(parallel)  # bad records are refused before anything is written or loaded
    check_training_precision(cfg)
    check_report_to(cfg)
    if cfg.train.init_from:
        check_model_source(cfg.train.init_from, "train.init_from")
    else:
        check_model_source(cfg.model.name_or_path, "model.name_or_path", cfg.model.gguf_file)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"{out_dir} is a file; expected a folder for the run (new, or this run's own).")
    fingerprint = train_fingerprint(cfg, parallel)
    finished = _finished_run(out_dir, cfg, fingerprint)
    if finished is not None:
        return finished
    stages = METHOD_STAGES[cfg.train.method]
    if cfg.train.method == "sft_dpo" and cfg.train.init_from:
        stages = stages[1:]  # init_from is the SFT run: its SFT stage is done
    # A stage before the last keeps its checkpoints in a folder of its own (sft_dpo: sft/).
    stage_dirs = [out_dir / stage.kind if stage is not stages[-1] else out_dir for stage in stages]
    for stage_dir in stage_dirs:  # checkpoints of another config are refused before anything is written
        _resumable(stage_dir / "checkpoints", cfg, fingerprint)
    main_process = PartialState().is_main_process
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    summaries, trainer = [], None
    for stage, stage_dir in zip(stages, stage_dirs):
        before = (trainer.model, trainer.processing_class) if trainer else (None, None)
        trainer, summary = train_stage(cfg, parallel, stage_dir, stage, *before, fingerprint=fingerprint)
        summaries.append(summary)
    saved = save_trained(trainer, out_dir / "model", cfg, main_process)
    if main_process and cfg.train.trainable == "lora" and cfg.train.merge_lora:
        merged_dir = out_dir / "merged"
        trainer.model.merge_and_unload().save_pretrained(merged_dir)
        trainer.processing_class.save_pretrained(merged_dir)
        saved["bytes"] += folder_bytes(merged_dir)
    log = {"method": cfg.train.method, "examples_used": len(parallel), "fingerprint": fingerprint, "saved": saved,
           "stages": summaries}
    if main_process:
        atomic_write_json(out_dir / "train_log.json", log)
        for stage_dir in stage_dirs:  # the run is saved: its checkpoints are no longer needed to resume
            shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)
            if stage_dir != out_dir and not any(stage_dir.iterdir()):
                stage_dir.rmdir()
    return log


def _finished_run(out_dir: Path, cfg: RunConfig, fingerprint: dict) -> dict | None:
    """The log of this very run if `out_dir` holds it finished; refuses a folder holding another run."""
    log_file = out_dir / "train_log.json"
    if not log_file.is_file():
        return None
    log = json.loads(log_file.read_text(encoding="utf-8"))
    if log.get("fingerprint") == fingerprint and (out_dir / "model").is_dir():
        print(f"{out_dir} already holds this run, trained; nothing to do.")
        return log
    old_config = out_dir / "config.yaml"
    changes = changed_settings(read_yaml(old_config), cfg, "train") if old_config.is_file() else []
    what = "; ".join(changes[:3]) if changes else "its training records or starting run differ"
    raise RunFolderError(f"{out_dir} holds a run trained under another config ({what}); train into another "
                         "folder, or move that one away.")


def add_arguments(parser) -> None:
    """`clo train RUN.yaml [...] --parallel FILE.jsonl --out DIR`: train one run."""
    parser.add_argument("configs", nargs="+", help="YAML layers, later overriding earlier")
    parser.add_argument("--parallel", required=True, help="parallel corpus JSONL from the translation stage")
    parser.add_argument("--out", required=True, help="run folder to write")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def command(args) -> int:
    cfg = load_config(*args.configs, overrides=args.overrides)
    # The corpus is in seeded-permutation order: the first data.size usable records are this run's subset.
    log = run_train(cfg, args.out, run_records(cfg, args.parallel))
    last = log["stages"][-1]
    print(json.dumps({"method": log["method"], "train_loss": last["train_loss"], "steps": last["steps"],
                      "trainable_params": last["trainable_params"]}))
    return 0 if math.isfinite(last["train_loss"]) else 1
