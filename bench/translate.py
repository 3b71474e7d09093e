"""Translation throughput: the kit's length-grouped batches against one record at a time, and a warm-cache rerun.

    python bench/translate.py [--texts 96] [--batch 16] [--d-model 128] [--beams 2] [--new-tokens 24]

Same tiny M2M100 (built locally, random weights), same texts (3 to 60 words, as instruction data varies), in one run:
  one_at_a_time   model.generate() on each chunk alone: what a first script does
  batched         the kit's batches of --batch chunks in the order they come (padding to the longest in each)
  length_grouped  the kit's way: chunks sorted by token length, then batched, so each batch pads little
and the whole stage (split, translate, join, flag) on records of one and two texts, cold and then rerun with every
chunk in the on-disk cache.
Reported in chunks per second and as ratios. A random model never emits EOS early, so every generation runs to
--new-tokens; with a trained model, grouped batches also stop sooner, so these ratios understate its gain.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("the model answers each question about rivers cities water light and colour in small or large steps "
         "while people read write and learn new languages every day").split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))).capitalize() + "." for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--beams", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args()

    import torch

    from clo_lib import langid, tiny
    from clo_lib.config import load_config
    from clo_lib.translate import HFTranslator, TranslationCache, translate_chunks, translate_records

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="clo_bench_translate_"))
    corpus = texts(args.texts)
    model_dir = tiny.make_tiny_seq2seq(work / "m2m100", "m2m100", corpus=corpus, d_model=args.d_model,
                                       spm_vocab_size=400)
    translator = HFTranslator(str(model_dir), "en", "sw", num_beams=args.beams, max_input_tokens=200,
                              max_new_tokens=args.new_tokens)
    # Warm-up: first-call overheads (kernels, lingua's language models) stay out of the timings.
    translator.translate_batch(corpus[:2], "en", "sw")
    langid.detect("Habari ya asubuhi, rafiki yangu.", ["en", "sw"])

    results = {}
    start = time.perf_counter()
    for text in corpus:
        translator.translate_batch([text], "en", "sw")
    results["one_at_a_time"] = time.perf_counter() - start

    start = time.perf_counter()
    for begin in range(0, len(corpus), args.batch):
        translator.translate_batch(corpus[begin: begin + args.batch], "en", "sw")
    results["batched"] = time.perf_counter() - start

    cache = TranslationCache(work / "cache", "hf", str(model_dir), "en", "sw")
    stats = translate_chunks(corpus, translator, cache, "en", "sw", args.batch, progress=False)
    results["length_grouped"] = stats["seconds"]

    # The whole stage (splitting, translating, joining, flags) cold, then again with every chunk cached.
    cfg = load_config({"language": "sw", "translation": {"batch_size": args.batch}}).translation
    records = [{"id": i, "prompt_en": t, "response_en": t + " " + t} for i, t in enumerate(corpus)]
    start = time.perf_counter()
    translate_records(records, translator, TranslationCache(work / "stage", "hf", "m", "en", "sw"), "sw", cfg,
                      progress=False)
    stage_cold = time.perf_counter() - start
    start = time.perf_counter()
    _, warm_stats = translate_records(records, translator, TranslationCache(work / "stage", "hf", "m", "en", "sw"),
                                      "sw", cfg, progress=False)
    stage_warm = time.perf_counter() - start
    assert warm_stats["translated"] == 0

    print(f"Translation, tiny M2M100 (d_model {args.d_model}), {len(corpus)} texts of 3-60 words, batch {args.batch}, "
          f"{args.beams} beams, {args.new_tokens} new tokens, {translator.device}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'variant':15s} {'seconds':>8s} {'chunks/s':>9s}")
    for name, seconds in results.items():
        print(f"{name:15s} {seconds:8.3f} {len(corpus) / seconds:9.1f}")
    base = results["one_at_a_time"]
    print(f"length_grouped vs one_at_a_time: {base / results['length_grouped']:.2f}x chunks/s")
    print(f"length_grouped vs batched (unsorted): {results['batched'] / results['length_grouped']:.2f}x chunks/s")
    print(f"stage on {len(records)} records: cold {stage_cold:.3f} s, warm-cache rerun {stage_warm:.3f} s: "
          f"{stage_cold / stage_warm:.1f}x faster (what is left is splitting, joining and the quality flags)")

if __name__ == "__main__":
    main()
