"""Translation throughput: the kit's length-grouped batches against one record at a time, and a warm-cache rerun.

    python bench/translate.py [--texts 96] [--batch 16] [--d-model 128] [--beams 2] [--new-tokens 24]

Same tiny M2M100 (built locally, random weights), same texts (3 to 60 words, as instruction data varies), in one run:
  one_at_a_time   model.generate() on each chunk alone: what a first script does
  batched         the kit's batches of --batch chunks in the order they come (padding to the longest in each)
  length_grouped  the kit's way: chunks sorted by token length, then batched, so each batch pads little
and the whole stage (split, translate, join, flag) on records of one and two texts, cold and then rerun with every
chunk in the on-disk cache.
Reported in chunks per second and as ratios, the variants interleaved over --rounds rounds (bench/interleave.py).
A random model never emits EOS early, so every generation runs to --new-tokens; with a trained model, grouped
batches also stop sooner, so these ratios understate its gain.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
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
    parser.add_argument("--rounds", type=int, default=3, help="every variant runs once per round, order rotated")
    args = parser.parse_args()

    import torch
    from interleave import paired_ratios, run_rounds, spread

    from clo_lib.common import langid
    from clo_lib.config.load import load_config
    from clo_lib.modeling import tiny
    from clo_lib.mt.backends import HFTranslator
    from clo_lib.mt.cache import TranslationCache
    from clo_lib.mt.records import translate_chunks, translate_records

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

    cfg = load_config({"language": "sw", "translation": {"batch_size": args.batch}}).translation
    records = [{"id": i, "prompt_en": t, "response_en": t + " " + t} for i, t in enumerate(corpus)]

    def run_one(variant: str) -> float:
        """Seconds for one variant; every call gets fresh caches, so each round measures the same work."""
        fresh = Path(tempfile.mkdtemp(dir=work))
        start = time.perf_counter()
        if variant == "one_at_a_time":
            for text in corpus:
                translator.translate_batch([text], "en", "sw")
        elif variant == "batched":
            for begin in range(0, len(corpus), args.batch):
                translator.translate_batch(corpus[begin: begin + args.batch], "en", "sw")
        elif variant == "length_grouped":
            cache = TranslationCache(fresh, "hf", str(model_dir), "en", "sw")
            return translate_chunks(corpus, translator, cache, "en", "sw", args.batch, progress=False)["seconds"]
        else:  # the whole stage (splitting, translating, joining, flags) cold, then again with every chunk cached
            translate_records(records, translator, TranslationCache(fresh, "hf", "m", "en", "sw"), "sw", cfg,
                              progress=False)
            if variant == "stage_warm":
                start = time.perf_counter()
                _, stats = translate_records(records, translator, TranslationCache(fresh, "hf", "m", "en", "sw"),
                                             "sw", cfg, progress=False)
                assert stats["translated"] == 0
        return time.perf_counter() - start

    variants = ("one_at_a_time", "batched", "length_grouped", "stage_cold", "stage_warm")
    seconds = run_rounds(variants, args.rounds, run_one)

    print(f"Translation, tiny M2M100 (d_model {args.d_model}), {len(corpus)} texts of 3-60 words, batch {args.batch}, "
          f"{args.beams} beams, {args.new_tokens} new tokens, {translator.device}, torch threads "
          f"{torch.get_num_threads()}; {args.rounds} rounds, variants interleaved")
    print(f"{'variant':15s} {'chunks/s: median [min-max]':>28s}")
    for name in variants[:3]:
        print(f"{name:15s} {spread([len(corpus) / x for x in seconds[name]]):>28s}")

    def speedup(faster: str, slower: str) -> str:
        ratios = paired_ratios(seconds[slower], seconds[faster])  # time ratio = speed ratio
        return f"{statistics.median(ratios):.2f}x (per round {min(ratios):.2f}-{max(ratios):.2f})"

    print(f"length_grouped vs one_at_a_time: {speedup('length_grouped', 'one_at_a_time')} chunks/s")
    print(f"length_grouped vs batched (unsorted): {speedup('length_grouped', 'batched')} chunks/s")
    print(f"stage on {len(records)} records: cold {statistics.median(seconds['stage_cold']):.3f} s, warm-cache rerun "
          f"{statistics.median(seconds['stage_warm']):.3f} s: {speedup('stage_warm', 'stage_cold')} faster (what is "
          "left is splitting, joining and the quality flags)")


if __name__ == "__main__":
    main()
