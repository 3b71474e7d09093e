"""`grid run --engine python`: a stage as the library calls its notebook makes, in a warm worker process.

The notebooks (01-04) stay the way to run, read and teach one stage; a grid of many small stages (the toy demo: a
training takes seconds) spends most of its time starting kernels and importing torch for each. Here each worker
process imports once and runs stage after stage; the config reaches the library exactly as it reaches a notebook
(the stage's run.yaml through notebook_config), so the outputs are the notebook's, less the executed notebook.
tests/test_grid.py checks that both engines write the same metrics.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from clo_lib import views
from clo_lib.artifacts.corpus import corpus_dir, run_records
from clo_lib.config.load import notebook_config, save_config
from clo_lib.grid.expand import run_states
from clo_lib.grid.search import pick
from clo_lib.grid.state import Stage
from clo_lib.mt.backends import check_pair
from clo_lib.stages.evaluate import run_evaluate
from clo_lib.stages.report import write_report
from clo_lib.stages.sources import load_english
from clo_lib.stages.train import run_train
from clo_lib.stages.translate import run_translate


def start_worker(threads: int) -> None:
    """Each worker's torch uses `threads` threads (the runner set OMP_NUM_THREADS before the workers started):
    workers × threads stays within the machine's cores (two torch processes of two threads each on two cores ran a
    training 5 times slower than one thread each; docs/benchmarks.md)."""
    import torch

    torch.set_num_threads(threads)


def run_stage(stage: Stage) -> None:
    """Run a translate, train, validate, select, evaluate or analyze stage in this process; what it prints
    (progress bars, the trainer's logs) goes to `<kind>.log` in its folder, as a notebook keeps it in its cells."""
    stage.workdir.mkdir(parents=True, exist_ok=True)
    with open(stage.workdir / f"{stage.kind}.log", "w", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        _run(stage)


def _run(stage: Stage) -> None:
    p = stage.parameters
    config_files = []
    if stage.config is not None:
        config_file = stage.workdir / ("translate.yaml" if stage.kind == "translate" else "run.yaml")
        save_config(stage.config, config_file)
        config_files = [str(config_file.resolve())]
    if stage.kind == "translate":  # 01_translate
        cfg = notebook_config(config_files, {}, language=p["language"], output_dir=p["output_dir"])
        check_pair(cfg.translation, "en", cfg.language)
        run_translate(cfg, english=load_english(cfg.data))
    elif stage.kind == "train":  # 02_train
        run_dir = Path(p["run_dir"])
        cfg = notebook_config(config_files, {}, language=p["language"], output_dir=p["output_dir"], name=run_dir.name)
        run_train(cfg, run_dir, run_records(cfg, corpus_dir(cfg) / "parallel.jsonl"))
    elif stage.kind in ("evaluate", "validate"):  # 03_evaluate
        run_dir = Path(p["run_dir"])
        model = Path(p["model_path"]) if p.get("model_path") else run_dir / "model"
        cfg = notebook_config(config_files, {}, run_dir=run_dir, language=p["language"], output_dir=p["output_dir"])
        reference = views.evaluated_run(p.get("reference_run", ""), cfg, "win rates against SFT")
        run_evaluate(cfg, run_dir, model, reference, p.get("method") or None, model_label=p.get("model_label") or None,
                     variant=p.get("variant", ""))
    elif stage.kind == "select":  # clo select
        pick(p["trials"], p["metric"], p["keys"], stage.workdir)
    elif stage.kind == "analyze":  # 04_analyze
        states = run_states(p["grid_file"]) if p.get("grid_file") else None
        write_report(Path(p["grid_dir"]), p.get("grid_name", ""), p.get("notes", ""), states)
    else:
        raise ValueError(f"stage {stage.id}: kind {stage.kind} has no notebook to stand in for")
