"""`make demo`: the kit's default job, the toy grid, offline on a CPU.

It runs `clo grid run params/grids/toy.yaml --workers 2 --engine python` (on two cores): builds the toy world (a tiny
English-centric model pretrained on CPU, held-out facts and question forms, validation questions of their own),
translates the toy SFT set into Swahili with the exact translator, trains SFT, SFT+DPO and CLO at two sizes and three
seeds at a shared budget and at three learning rates each, keeps each method's best on the validation questions,
evaluates the shared-budget runs, the picks and the untrained base model on the test questions, and writes the
analysis: the premise check, the paper's claims in both views, the details. A rerun skips what is done. The full
toy sweep (three languages, every method, four sizes, a world per seed) is `params/grids/toy_sweep.yaml`."""

from __future__ import annotations

import os
import time
from pathlib import Path

from clo_lib.grid.expand import load_grid
from clo_lib.grid.run import cores, run_grid

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

GRID = "params/grids/toy.yaml"


def add_arguments(parser) -> None:
    """`clo demo [GRID.yaml]`: run a grid (default: the toy grid) and say what to read first."""
    parser.add_argument("grid", nargs="?", default=GRID)
    parser.add_argument("--workers", type=int, default=max(1, min(cores(), 8)),
                        help="stages at a time, one torch thread each (default: the cores, at most 8)")


def command(args) -> int:
    start = time.time()
    grid = load_grid(args.grid)
    # many stages of seconds each: warm workers, no kernel per stage (grid/inline.py); one torch thread each on
    # any machine, since results can depend on the thread count and the README's came from one thread a stage
    code = run_grid(grid, workers=args.workers, engine="python", threads=1)
    out = Path(grid.output_dir)
    print(f"\n{'done' if code == 0 else 'finished with failures'} in {time.time() - start:.0f} s. Read first:")
    print(f"  report   {out / 'report.md'}")
    print(f"  figures  {out / 'figures'}/")
    print(f"  table    {out / 'results.csv'}")
    print("  the full sweep (sizes x seeds): clo demo params/grids/toy_sweep.yaml")
    return code
