"""Speed and peak memory of CLO training against doing it with TRL alone, same model, data and batch, one run.

    python bench/train_step.py [--steps 48] [--hidden 256] [--layers 4]

Variants (each in its own process, so peak memory is its own):
  clo_kit      clo_lib.train: clo_loss, reference log-probs computed once before training, no reference copy,
               each batch run as up to train.length_buckets (default 4) forward passes of similar-length sequences
  clo_kit_1pass  the same with length_buckets 1: one padded pass per batch, as TRL does
  clo_kit_unsloth  clo_kit with model.backend unsloth (only with a CUDA GPU and `pip install -e .[gpu]`)
  trl_default  trl.DPOTrainer as a user would first write it: loss_type [sigmoid, sft] with weights [0.5, 0.5]
               (TRL's closest built-in to CLO: its sft term is NLL on every chosen answer, English included),
               default reference handling (a frozen copy of the model, run every step)
  trl_best     the same with precompute_ref_log_probs=True (reference log-probs computed once, before training)
All train the same weights (attention q/k/v/o, the paper's default), 8 preference rows per step, on CPU or the
first GPU, in the same weights dtype. Time runs from the loaded model to the end of training: tokenization, the
reference pass and every step; tokens are the non-pad tokens of the chosen and rejected sequences processed. Peak
memory is the process's max RSS on CPU, max allocated on GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

VARIANTS = ("clo_kit", "clo_kit_1pass", "trl_default", "trl_best")
WORDS_EN = "the a model answer question language river city water light small large red blue green".split()
WORDS_SW = "mto mji maji mwanga ndogo kubwa nyekundu bluu kijani jibu swali lugha".split()


def parallel_records(n: int, seed: int = 0) -> list[dict]:
    """Synthetic parallel records with answers of 30 to 90 words, so padding and lengths vary as in real data."""
    import random

    rng = random.Random(seed)
    records = []
    for i in range(n):
        length = rng.randint(30, 90)
        records.append({
            "id": i, "lang": "sw",
            "prompt_en": f"Question {i}: " + " ".join(rng.choices(WORDS_EN, k=12)) + "?",
            "response_en": " ".join(rng.choices(WORDS_EN, k=length)) + ".",
            "prompt_tgt": f"Swali {i}: " + " ".join(rng.choices(WORDS_SW, k=12)) + "?",
            "response_tgt": " ".join(rng.choices(WORDS_SW, k=length)) + ".",
        })
    return records


def _config(model_dir: str, steps: int, records: int, buckets: int | None = None):
    from clo_lib.config import load_config

    rows_per_step = 8
    epochs = steps * rows_per_step / (2 * records)
    return load_config({"language": "sw", "model": {"name_or_path": model_dir, "backend": "hf", "max_length": 256},
                        "train": {"method": "clo", "trainable": "attention", "batch_size": rows_per_step,
                                  "epochs": epochs, "learning_rate": 1e-4, "logging_steps": 1000,
                                  "save_steps": 100000, "warmup_ratio": 0.0,
                                  **({"length_buckets": buckets} if buckets else {})}})


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _token_count(records, model_dir, cfg) -> int:
    from transformers import AutoTokenizer

    from clo_lib.pairs import build_clo_pairs
    from clo_lib.train import encode_preference_groups

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    groups = encode_preference_groups(build_clo_pairs(records), tokenizer, cfg)
    return sum(len(r["chosen"]["input_ids"]) + len(r["rejected"]["input_ids"]) for g in groups for r in g)


def unsloth_unusable() -> str | None:
    """Why the unsloth variant cannot run here, or None when it can."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if importlib.util.find_spec("unsloth") is None:
        return "unsloth is not installed (pip install -e '.[gpu]')"
    return None


def worker(variant: str, model_dir: str, steps: int, n_records: int) -> dict:
    if variant == "clo_kit_unsloth":
        os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")  # as clo_lib.train does before its import
        import unsloth  # noqa: F401  first: it patches transformers and trl as they are imported
    import torch

    torch.manual_seed(0)
    records = parallel_records(n_records)
    cfg = _config(model_dir, steps, n_records, buckets=1 if variant == "clo_kit_1pass" else None)
    tokens_per_epoch = _token_count(records, model_dir, cfg)
    with tempfile.TemporaryDirectory() as out:
        if variant.startswith("clo_kit"):
            from transformers import Trainer  # noqa: F401  imported before the clock, as trl is for the others

            from clo_lib.train import load_model_and_tokenizer, train_stage

            # Loaded before the clock starts, as the TRL variants' model is: the time is the training call alone.
            backend = "unsloth" if variant == "clo_kit_unsloth" else "hf"
            model, tokenizer = load_model_and_tokenizer(cfg, backend=backend)
            start = time.perf_counter()
            _, summary = train_stage(cfg, records, Path(out), "preference", model, tokenizer, backend=backend)
            elapsed = time.perf_counter() - start
            done_steps = summary["steps"]
        else:
            from datasets import Dataset
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from trl import DPOConfig, DPOTrainer

            from clo_lib.pairs import build_clo_pairs, format_prompt
            from clo_lib.train import select_trainable

            on_gpu = torch.cuda.is_available()
            bf16 = on_gpu and torch.cuda.is_bf16_supported()
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            # The same weights dtype as the kit picks (model.dtype auto: bf16 on a GPU that has it, else fp32).
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
            model, _ = select_trainable(model, cfg.train)
            rows = [{"prompt": format_prompt(r["prompt"], tokenizer), "chosen": r["chosen"], "rejected": r["rejected"]}
                    for r in build_clo_pairs(records)]
            args = DPOConfig(
                output_dir=out, per_device_train_batch_size=8, max_steps=steps, learning_rate=1e-4,
                beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[0.5, 0.5], max_length=256,
                precompute_ref_log_probs=(variant == "trl_best"), bf16=bf16,
                gradient_checkpointing=False, report_to="none", use_cpu=not on_gpu, save_strategy="no",
                logging_steps=1000, disable_tqdm=True, lr_scheduler_type="linear", warmup_steps=0,
            )
            start = time.perf_counter()
            trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer)
            trainer.train()
            elapsed = time.perf_counter() - start
            done_steps = trainer.state.global_step
    rows_done = done_steps * 8
    tokens = tokens_per_epoch * rows_done / (2 * n_records)
    return {"variant": variant, "steps": done_steps, "seconds": elapsed, "tokens_per_second": tokens / elapsed,
            "peak_memory_mb": _peak_memory_mb()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--worker", choices=VARIANTS + ("clo_kit_unsloth",), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.steps, args.records)))
        return 0

    from clo_lib.tiny import DEFAULT_CORPUS, make_tiny_causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = DEFAULT_CORPUS + [r[k] for r in parallel_records(args.records)
                                   for k in ("prompt_en", "response_en", "prompt_tgt", "response_tgt")]
        model_dir = make_tiny_causal_lm(Path(tmp) / "model", "llama", corpus=corpus, hidden_size=args.hidden,
                                        num_layers=args.layers, vocab_size=2000)
        results = {}
        no_unsloth = unsloth_unusable()
        for variant in VARIANTS + (() if no_unsloth else ("clo_kit_unsloth",)):
            cmd = [sys.executable, __file__, "--worker", variant, "--model", str(model_dir), "--steps",
                   str(args.steps), "--records", str(args.records)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{variant} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"CLO training step, tiny Llama (hidden {args.hidden}, {args.layers} layers), {args.steps} steps of "
          f"8 preference rows, attention-only, on {device}")
    print(f"{'variant':14s} {'steps':>5s} {'seconds':>8s} {'tokens/s':>9s} {'peak MB':>8s}")
    for r in results.values():
        print(f"{r['variant']:14s} {r['steps']:5d} {r['seconds']:8.2f} {r['tokens_per_second']:9.0f} "
              f"{r['peak_memory_mb']:8.0f}")
    ours = results["clo_kit"]
    for peer in ("clo_kit_1pass", "trl_default", "trl_best"):
        other = results[peer]
        print(f"clo_kit vs {peer}: {ours['tokens_per_second'] / other['tokens_per_second']:.2f}x tokens/s, "
              f"{ours['peak_memory_mb'] / other['peak_memory_mb']:.2f}x peak memory")
    if no_unsloth:
        print(f"unsloth vs hf: not measured ({no_unsloth})")
    else:
        fast = results["clo_kit_unsloth"]
        print(f"unsloth vs hf (clo_kit_unsloth vs clo_kit): "
              f"{fast['tokens_per_second'] / ours['tokens_per_second']:.2f}x tokens/s, "
              f"{fast['peak_memory_mb'] / ours['peak_memory_mb']:.2f}x peak memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
