"""`make demo`: the kit's default job, offline on a CPU.

Until the toy world and its grid land (a pretrained English-centric toy model, translation, evaluation, analysis),
this is the smallest end-to-end run the kit can do: a tiny randomly initialised Llama built locally, a small
English/Swahili parallel set of arithmetic questions, and every method of the grid trained from the same params.
It then measures, on held-out questions, how often each trained model prefers the answer in the prompt's own
language (log-prob of the same-language answer above that of the other-language answer): the quantity CLO's pairs
are about. A random tiny model is no LLM; the numbers show the pipeline runs and which way each method pushes,
nothing about the paper's claims.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

from clo_lib.config import load_config  # noqa: E402
from clo_lib.io import atomic_write_text  # noqa: E402
from clo_lib.pairs import build_clo_pairs  # noqa: E402
from clo_lib.tiny import DEFAULT_CORPUS, make_tiny_causal_lm  # noqa: E402

OUT = Path("outputs/demo")
METHODS = ("sft", "sft_eng", "sft_tgt", "sft_dpo", "clo")
SW_NUMBERS = ["sifuri", "moja", "mbili", "tatu", "nne", "tano", "sita", "saba", "nane", "tisa", "kumi"]
EN_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def demo_parallel() -> list[dict]:
    """English/Swahili arithmetic questions with exact translations (a, b ≤ 5, so every sum has a word)."""
    records = []
    for a in range(6):
        for b in range(6):
            records.append({
                "id": f"add-{a}-{b}", "lang": "sw",
                "prompt_en": f"What is {EN_NUMBERS[a]} plus {EN_NUMBERS[b]}?",
                "response_en": f"{EN_NUMBERS[a]} plus {EN_NUMBERS[b]} is {EN_NUMBERS[a + b]}.",
                "prompt_tgt": f"{SW_NUMBERS[a]} jumlisha {SW_NUMBERS[b]} ni ngapi?",
                "response_tgt": f"{SW_NUMBERS[a]} jumlisha {SW_NUMBERS[b]} ni {SW_NUMBERS[a + b]}.",
            })
    return records


def same_language_preference(model_dir: Path, cfg, rows: list[dict]) -> dict[str, float]:
    """Share of rows where the model gives the same-language (chosen) answer a higher log-prob than the other."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clo_lib.train import encode_preference_groups, preference_logps

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    groups = encode_preference_groups(rows, tokenizer, cfg)
    chosen, rejected = preference_logps(model, groups, tokenizer.pad_token_id)
    is_target = torch.tensor([row["is_target"] for group in groups for row in group])
    prefers_own = chosen > rejected
    return {"en": prefers_own[~is_target].float().mean().item(), "tgt": prefers_own[is_target].float().mean().item()}


def main() -> int:
    start = time.time()
    torch.manual_seed(0)
    records = demo_parallel()
    train_records, heldout = records[:28], records[28:]
    base = OUT / "base_model"
    if not (base / "config.json").is_file():
        corpus = DEFAULT_CORPUS + [r[k] for r in records for k in ("prompt_en", "response_en", "prompt_tgt",
                                                                    "response_tgt")]
        make_tiny_causal_lm(base, "llama", corpus=corpus, hidden_size=64, num_layers=2, vocab_size=400)
    from clo_lib.train import train_run

    heldout_rows = build_clo_pairs(heldout)
    table = []
    for method in ("base", *METHODS):
        cfg = load_config("params/presets/toy.yaml", {
            "language": "sw", "name": f"demo-{method}",
            "model": {"name_or_path": str(base)},
            "train": {"method": "clo" if method == "base" else method, "epochs": 4, "batch_size": 8,
                      "learning_rate": 2e-3, "logging_steps": 5},
        })
        t0 = time.time()
        if method == "base":
            model_dir, loss, trainable = base, float("nan"), 0
        else:
            log = train_run(cfg, train_records, OUT / method)
            model_dir, loss = OUT / method / "model", log["stages"][-1]["final_loss"]
            trainable = log["stages"][-1]["trainable_params"]
        pref = same_language_preference(model_dir, cfg, heldout_rows)
        table.append((method, trainable, loss, pref["en"], pref["tgt"], time.time() - t0))
        print(f"  {method:8s} trained in {time.time() - t0:5.1f}s", flush=True)

    lines = [
        "# Demo: every method on a tiny local model (smoke run, not a result)",
        "",
        "A randomly initialised 2-layer Llama, 28 English/Swahili arithmetic examples, 4 epochs, attention-only",
        "training (the paper's default); 8 held-out questions per language. 'prefers own language' is the share of",
        "held-out prompts whose same-language answer gets a higher log-prob than its translation.",
        "",
        "| method | trainable params | final train loss | EN prompt: prefers EN | SW prompt: prefers SW | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for method, trainable, loss, en, tgt, secs in table:
        lines.append(f"| {method} | {trainable:,} | {loss:.3f} | {en:.2f} | {tgt:.2f} | {secs:.1f} |")
    lines += ["", f"Total time: {time.time() - start:.0f} s. The toy world (issue 7) replaces this with a pretrained",
              "English-centric toy model, translation, evaluation and the paper's tables."]
    report = "\n".join(lines) + "\n"
    atomic_write_text(OUT / "report.md", report)
    print("\n" + report)
    print(f"Wrote {OUT / 'report.md'} and one run folder per method under {OUT}/.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
