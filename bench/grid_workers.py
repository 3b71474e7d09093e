"""How a grid should share a small machine between stages: two toy trainings one after the other with every core,
side by side with cores/2 torch threads each (`grid run --workers 2`), and side by side with every core each (what
two runners, or a runner beside a test suite, do without a cap).

    .venv/bin/python bench/grid_workers.py [--rounds 3] [--size 64] [--world outputs/toy/world]

Each variant trains the same two CLO runs of the toy world (built in --world if missing) as `clo train`
processes; rounds interleave the variants (bench/interleave.py). Prints each variant's wall time for the pair and
its ratio to one-after-the-other, median [range] over rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interleave import paired_ratios, run_rounds, spread  # noqa: E402

from clo_lib.grid.run import cores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CORES = cores()
VARIANTS = {"one after the other": (1, CORES), "side by side, capped": (2, max(1, CORES // 2)),
            "side by side, uncapped": (2, CORES)}


def prepare(size: int, scratch: Path, world: Path, epochs: int) -> list[str]:
    """The toy world, a Swahili corpus and a CLO run config; returns the `clo train` arguments."""
    from clo_lib.config.load import load_config, save_config
    from clo_lib.stages.translate import run_translate
    from clo_lib.toy.build import build

    build(world, epochs=epochs, log=lambda m: None)
    cfg = load_config(REPO / "params/presets/toy.yaml", {"language": "sw", "output_dir": str(scratch),
                                                         "model": {"name_or_path": str(world / "base_model")},
                                                         "data": {"size": size}, "train": {"method": "clo"}})
    run_translate(cfg)
    save_config(cfg, scratch / "run.yaml")
    return [str(scratch / "run.yaml"), "--parallel", str(scratch / "data" / "sw" / "parallel.jsonl")]


def train_pair(arguments: list[str], scratch: Path, side_by_side: int, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TRANSFORMERS_VERBOSITY": "error"}
    outs = [scratch / f"run{i}" for i in range(2)]
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    waves = [outs] if side_by_side == 2 else [[out] for out in outs]
    for wave in waves:
        processes = [subprocess.Popen([sys.executable, "-m", "clo_lib", "train", *arguments, "--out", str(out)],
                                      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for out in wave]
        if any(p.wait() for p in processes):
            raise RuntimeError("a training failed; run it by hand to see why")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--world", type=Path, default=REPO / "outputs/toy/world")
    parser.add_argument("--epochs", type=int, default=30, help="the world's pretraining epochs, if it is built")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        arguments = prepare(args.size, scratch, args.world.resolve(), args.epochs)
        seconds = run_rounds(list(VARIANTS), args.rounds,
                             lambda name: train_pair(arguments, scratch, *VARIANTS[name]), log=print)
    print(f"\ntwo toy CLO trainings ({args.size} examples), {CORES} cores, {args.rounds} rounds: median [range]")
    for name, (side_by_side, threads) in VARIANTS.items():
        ratio = paired_ratios(seconds[name], seconds["one after the other"])
        print(f"  {name:24s} ({side_by_side} at a time, {threads} threads each): {spread(seconds[name])} s, "
              f"{spread(ratio)}x the time of one after the other")


if __name__ == "__main__":
    main()
