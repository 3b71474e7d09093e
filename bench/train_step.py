"""Speed and peak memory of the kit's training against doing it with TRL alone, same model, data and batch, one run.

    python bench/train_step.py [--steps 48] [--hidden 256] [--layers 4]          # CLO (preference rows)
    python bench/train_step.py --sft [--steps 48] [--hidden 256] [--layers 4]    # SFT (the baselines' rows)

CLO variants (each in its own process, so peak memory is its own):
  clo_kit      clo_lib.stages.train: clo_loss, reference log-probs computed once before training, no reference copy,
               each batch run as up to train.length_buckets (default 4) forward passes of similar-length sequences
  clo_kit_1pass  the same with length_buckets 1: one padded pass per batch, as TRL does
  clo_kit_unsloth  clo_kit with model.backend unsloth (only with a CUDA GPU and `pip install -e .[gpu]`)
  trl_default  trl.DPOTrainer as a user would first write it: loss_type [sigmoid, sft] with weights [0.5, 0.5]
               (TRL's closest built-in to CLO: its sft term is NLL on every chosen answer, English included),
               default reference handling (a frozen copy of the model, run every step)
  trl_best     the same with precompute_ref_log_probs=True (reference log-probs computed once, before training)
SFT variants (--sft):
  sft_kit      clo_lib.stages.train's SFT stage: response positions only through the LM head, length buckets
  sft_kit_1pass  the same with length_buckets 1
  trl_sft      trl.SFTTrainer on prompt/completion rows (loss on the completion only, TRL's defaults). Packing is
               left off: without flash attention it lets packed examples attend to each other.
All train the same weights (attention q/k/v/o, the paper's default), 8 rows per step, on CPU or the first GPU, in
the same weights dtype. Time runs from the loaded model to the end of training: tokenization, the reference pass
and every step; tokens are the non-pad tokens of the sequences processed. Peak memory is the process's max RSS on
CPU, max allocated on GPU. The variants run interleaved over --rounds rounds (bench/interleave.py): ratios are
taken within each round and reported as the median with their range, so background load cannot favour one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

VARIANTS = ("clo_kit", "clo_kit_1pass", "trl_default", "trl_best")
SFT_VARIANTS = ("sft_kit", "sft_kit_1pass", "trl_sft")
ROWS_PER_STEP = 8
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


def _config(model_dir: str, steps: int, records: int, method: str = "clo", buckets: int | None = None):
    from clo_lib.config.load import load_config

    epochs = steps * ROWS_PER_STEP / (2 * records)  # both methods have two rows per record
    return load_config({"language": "sw", "model": {"name_or_path": model_dir, "backend": "hf", "max_length": 256},
                        "train": {"method": method, "trainable": "attention", "batch_size": ROWS_PER_STEP,
                                  "epochs": epochs, "learning_rate": 1e-4, "logging_steps": 1000,
                                  "save_steps": 100000, "warmup_ratio": 0.0,
                                  **({"length_buckets": buckets} if buckets else {})}})


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _token_count(records, model_dir, cfg) -> int:
    """Non-pad tokens in one epoch of the variant's rows (the same rows for the kit and TRL)."""
    from transformers import AutoTokenizer

    from clo_lib.method.pairs import build_clo_pairs, build_sft_rows
    from clo_lib.modeling.batches import encode_preference_groups, encode_sft_rows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if cfg.train.method == "sft":
        return sum(len(i["input_ids"]) for i in encode_sft_rows(build_sft_rows(records),
                                                                 tokenizer, cfg))
    groups = encode_preference_groups(build_clo_pairs(records), tokenizer, cfg)
    return sum(len(r["chosen"]["input_ids"]) + len(r["rejected"]["input_ids"]) for g in groups for r in g)


def _trl_model(model_dir, cfg):
    """The model and tokenizer as a TRL user loads them, in the dtype the kit picks (bf16 on a GPU that has it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clo_lib.modeling.models import select_trainable

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    model, _ = select_trainable(model, cfg.train)
    return model, tokenizer, bf16


def _trl_common(out: str, steps: int, bf16: bool) -> dict:
    import torch

    return dict(output_dir=out, per_device_train_batch_size=ROWS_PER_STEP, max_steps=steps, learning_rate=1e-4,
                max_length=256, bf16=bf16, gradient_checkpointing=False, report_to="none",
                use_cpu=not torch.cuda.is_available(), save_strategy="no", logging_steps=1000, disable_tqdm=True,
                lr_scheduler_type="linear", warmup_steps=0)


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
        os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")  # as clo_lib.stages.train does before its import
        import unsloth  # noqa: F401  first: it patches transformers and trl as they are imported
    import torch

    torch.manual_seed(0)
    records = parallel_records(n_records)
    sft = variant in SFT_VARIANTS
    cfg = _config(model_dir, steps, n_records, method="sft" if sft else "clo",
                  buckets=1 if variant.endswith("_1pass") else None)
    tokens_per_epoch = _token_count(records, model_dir, cfg)
    with tempfile.TemporaryDirectory() as out:
        if variant.startswith(("clo_kit", "sft_kit")):
            from transformers import Trainer  # noqa: F401  imported before the clock, as trl is for the others

            from clo_lib.method.pairs import METHOD_STAGES
            from clo_lib.modeling.models import load_model_and_tokenizer
            from clo_lib.stages.train import train_stage

            # Loaded before the clock starts, as the TRL variants' model is: the time is the training call alone.
            backend = "unsloth" if variant == "clo_kit_unsloth" else "hf"
            model, tokenizer = load_model_and_tokenizer(cfg, backend=backend)
            start = time.perf_counter()
            stage = METHOD_STAGES["sft" if sft else "clo"][-1]
            _, summary = train_stage(cfg, records, Path(out), stage, model, tokenizer, backend=backend)
            elapsed = time.perf_counter() - start
            done_steps = summary["steps"]
        else:
            from datasets import Dataset

            from clo_lib.method.pairs import build_clo_pairs, build_sft_rows, format_prompt

            model, tokenizer, bf16 = _trl_model(model_dir, cfg)
            if sft:
                from trl import SFTConfig, SFTTrainer

                rows = [{"prompt": format_prompt(r["prompt"], tokenizer), "completion": r["response"]}
                        for r in build_sft_rows(records)]
                trainer_class, args = SFTTrainer, SFTConfig(**_trl_common(out, steps, bf16))
            else:
                from trl import DPOConfig, DPOTrainer

                rows = [{"prompt": format_prompt(r["prompt"], tokenizer), "chosen": r["chosen"],
                         "rejected": r["rejected"]} for r in build_clo_pairs(records)]
                trainer_class, args = DPOTrainer, DPOConfig(
                    **_trl_common(out, steps, bf16), beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[0.5, 0.5],
                    precompute_ref_log_probs=(variant == "trl_best"))
            start = time.perf_counter()
            trainer = trainer_class(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                    processing_class=tokenizer)
            trainer.train()
            elapsed = time.perf_counter() - start
            done_steps = trainer.state.global_step
    tokens = tokens_per_epoch * done_steps * ROWS_PER_STEP / (2 * n_records)
    return {"variant": variant, "steps": done_steps, "seconds": elapsed, "tokens_per_second": tokens / elapsed,
            "peak_memory_mb": _peak_memory_mb()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", action="store_true", help="benchmark the SFT stage instead of CLO")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="every variant runs once per round, order rotated")
    parser.add_argument("--worker", choices=VARIANTS + SFT_VARIANTS + ("clo_kit_unsloth",), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.steps, args.records)))
        return 0

    from interleave import paired_ratios, run_rounds, spread

    from clo_lib.modeling.tiny import DEFAULT_CORPUS, make_tiny_causal_lm

    no_unsloth = unsloth_unusable()
    if args.sft:
        variants, ours_name, peers = SFT_VARIANTS, "sft_kit", ("sft_kit_1pass", "trl_sft")
    else:
        variants = VARIANTS + (() if no_unsloth else ("clo_kit_unsloth",))
        ours_name, peers = "clo_kit", ("clo_kit_1pass", "trl_default", "trl_best")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = DEFAULT_CORPUS + [r[k] for r in parallel_records(args.records)
                                   for k in ("prompt_en", "response_en", "prompt_tgt", "response_tgt")]
        model_dir = make_tiny_causal_lm(Path(tmp) / "model", "llama", corpus=corpus, hidden_size=args.hidden,
                                        num_layers=args.layers, vocab_size=2000)

        def run_one(variant: str) -> dict:  # each run in its own process, so peak memory is its own
            cmd = [sys.executable, __file__, "--worker", variant, "--model", str(model_dir), "--steps",
                   str(args.steps), "--records", str(args.records)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{variant} failed:\n{done.stderr[-2000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])

        try:
            results = run_rounds(variants, args.rounds, run_one, log=lambda m: print(m, file=sys.stderr))
        except RuntimeError as err:
            print(err, file=sys.stderr)
            return 1
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    kind = "SFT" if args.sft else "CLO"
    print(f"{kind} training, tiny Llama (hidden {args.hidden}, {args.layers} layers), {args.steps} steps of "
          f"{ROWS_PER_STEP} rows, attention-only, on {device}; {args.rounds} rounds, variants interleaved")
    print(f"{'variant':16s} {'steps':>5s} {'tokens/s: median [min-max]':>30s} {'peak MB':>8s}")
    speed = {v: [r["tokens_per_second"] for r in runs] for v, runs in results.items()}
    memory = {v: [r["peak_memory_mb"] for r in runs] for v, runs in results.items()}
    for variant, runs in results.items():
        print(f"{variant:16s} {runs[0]['steps']:5d} {spread([x / 1000 for x in speed[variant]]) + ' k':>30s} "
              f"{statistics.median(memory[variant]):8.0f}")

    def ratio_line(ours: str, peer: str) -> str:
        ratios = paired_ratios(speed[ours], speed[peer])
        mem = statistics.median(paired_ratios(memory[ours], memory[peer]))
        return (f"{statistics.median(ratios):.2f}x tokens/s (per round {min(ratios):.2f}-{max(ratios):.2f}), "
                f"{mem:.2f}x peak memory")

    for peer in peers:
        print(f"{ours_name} vs {peer}: {ratio_line(ours_name, peer)}")
    if args.sft:
        return 0
    if no_unsloth:
        print(f"unsloth vs hf: not measured ({no_unsloth})")
    else:
        print(f"unsloth vs hf (clo_kit_unsloth vs clo_kit): {ratio_line('clo_kit_unsloth', ours_name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
