"""The grid runner: expand a grid file into stages, run them with papermill in dependency order, resume, report.

    clo grid plan   params/grids/toy.yaml            # every stage, what it waits for, counts
    clo grid run    params/grids/toy.yaml [--only GLOB] [--slices NAME|all]
                                                            [--executor local|slurm|submitit-local]
    clo grid status params/grids/toy.yaml            # the same table with each stage's state

A grid file names config layers, models and slices (a product of languages × methods × sizes × seeds); see
params/grids/*.yaml. Slices may have names; `default_slices` says which run when --slices is not given. It
expands into stages, each one notebook (or, for `prepare`, one command):

    prepare/<id>          commands that must finish first (the toy world builds its base model here); one marked
                          `always: true` (idempotent) runs at every `grid run`, so what it rebuilds shows stale
    transfer/<model>-<lang>-s<seed>   for a model with transfer.donor (or transfer.pretrain_steps) set:
                          clo transfer gives it the donor's vocabulary; that model's runs train and
                          evaluate <output_dir>/transfer/<model>-<lang>-s<seed>/model
    translate/<lang>      01_translate, once per language, for the largest size any run of it needs
    train/<run>           02_train; sft_dpo starts from the SFT run of the same model, language, size and seed
    evaluate/<run>        03_evaluate; waits for the SFT run's evaluation, which it is judged against
    evaluate/<model>-<lang>-base-s<seed>   the untrained model, as method `base`
    analyze               04_analyze: results.csv, figures, report.md

Each stage writes into `<output_dir>/<run>/` (translation into `<output_dir>/data/<lang>/`) and is done when its
marker exists: the corpus's report.json, train_log.json, metrics.json. A run of the grid skips what is done, so after
Ctrl-C or a kill it finishes the rest with nothing run twice (training itself resumes from its checkpoint). A failing
stage leaves `<stage>.failed.json` with the tail of its error; stages that need it are skipped, the others go on,
and the exit code is 1.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from clo_lib.common import lock
from clo_lib.common.io import atomic_write_json
from clo_lib.common.registry import resolve
from clo_lib.config.load import save_config
from clo_lib.grid.expand import load_grid
from clo_lib.grid.search import describe
from clo_lib.grid.spec import GridError
from clo_lib.grid.state import NOTEBOOK_OF, NOTEBOOKS, REPO, STAGE_KINDS, Grid, Stage, move_aside, states


def select(grid: Grid, only: list[str] | None) -> list[Stage]:
    """Stages whose id matches any glob in `only` (a bare word matches inside the id), plus what they wait for.

    The analysis is left out of a slice unless asked for; when asked for, it reports on whatever the slice (and
    earlier runs) produced, without pulling in every run of the grid.
    """
    if not only:
        return list(grid.stages.values())
    patterns = [p if any(ch in p for ch in "*?[") else f"*{p}*" for p in only]
    chosen: set[str] = set()

    def take(stage_id: str) -> None:
        if stage_id not in chosen:
            chosen.add(stage_id)
            if stage_id == "analyze":
                return
            for dep in grid.stages[stage_id].deps:
                take(dep)

    for stage_id in grid.stages:
        if any(fnmatch.fnmatchcase(stage_id, p) for p in patterns) and (stage_id != "analyze" or "analyze" in only):
            take(stage_id)
    if not chosen:
        raise GridError(f"--only {' '.join(only)} matches no stage; `clo grid plan GRID` lists them")
    return [stage for stage_id, stage in grid.stages.items() if stage_id in chosen]


# ---------------------------------------------------------------------------------------------------------------
# Plan and status tables


def table(stages: list[Stage], with_state: bool) -> str:
    state = states(stages) if with_state else {}
    lines = []
    header = f"{'stage':52s} {'model':14s} {'lang':4s} {'size':>5s} {'method':8s} waits for"
    lines.append(("state    " if with_state else "") + header)
    for stage in stages:
        f = stage.facts
        waits = ", ".join(stage.deps) if len(stage.deps) <= 3 else f"{len(stage.deps)} stages"
        size = "" if f.get("size") is None else str(f["size"])
        method = str(f.get("method", "")) + (f"+{f['variant']}" if f.get("variant") else "")
        row = (f"{stage.id:52s} {str(f.get('model', '')):14s} {str(f.get('lang', '')):4s} "
               f"{size:>5s} {method:8s} {waits}")
        if with_state and stage.kind == "select" and state[stage.id] == "done":  # the pick and its score
            row += f"  picked {describe(json.loads(stage.done_file.read_text(encoding='utf-8')))}"
        lines.append((f"{state[stage.id]:8s} " if with_state else "") + row)
    counts = {kind: sum(s.kind == kind for s in stages) for kind in STAGE_KINDS}
    lines.append("stages: " + ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) + f" ({len(stages)} in all)")
    if with_state:
        counts = list(state.values())
        lines.append(f"done {counts.count('done')}, stale {counts.count('stale')}, failed {counts.count('failed')}, "
                     f"running {counts.count('running')}, left {counts.count('pending')}")
        if counts.count("stale"):
            lines.append("stale: made under another config or data than the grid file now gives; "
                         "`grid run --rerun-stale` moves them aside and runs them again")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Running stages


def _error_tail(err: BaseException, limit: int = 3000) -> str:
    text = f"{type(err).__name__}: {err}"
    return text[-limit:]


ENGINES = ("notebooks", "python")
INLINE = "clo_lib.grid.inline:run_stage"  # by name: `grid plan` and `grid status` never import torch


def execute_stage(stage: Stage, engine: str = "notebooks") -> None:
    """Run one stage: a command in a fresh process; otherwise its notebook in a fresh kernel (engine notebooks),
    or the library calls its notebook makes in this process (engine python, clo_lib.grid.inline). Raise on
    failure. Used by every executor."""
    stage.workdir.mkdir(parents=True, exist_ok=True)
    if engine == "python" and (stage.command is None or stage.kind == "select"):
        resolve(INLINE)(stage)
        return
    if stage.command is not None:  # prepare, transfer, select
        if stage.config is not None:  # a transfer's command reads the model's resolved config
            save_config(stage.config, stage.workdir / "transfer.yaml")
        # "python" means this interpreter (the kit's venv), not whatever python is first on PATH.
        command = [sys.executable if c in ("python", "python3") and i == 0 else c for i, c in enumerate(stage.command)]
        # Streamed line by line to the console and the stage's log: a toy world's pretraining takes minutes.
        lines = []
        with open(stage.workdir / f"{stage.id.split('/')[-1]}.log", "w", encoding="utf-8") as log_file, \
                subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process:
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()
                lines.append(line)
                print(f"  {stage.id} | {line.rstrip()}", flush=True)
        if process.returncode != 0:
            raise RuntimeError(f"command {' '.join(stage.command)} exited {process.returncode}: "
                               f"{''.join(lines)[-2000:]}")
        return
    import papermill as pm

    parameters = dict(stage.parameters)
    if stage.config is not None:
        config_file = stage.workdir / ("translate.yaml" if stage.kind == "translate" else "run.yaml")
        save_config(stage.config, config_file)
        parameters["config_files"] = [str(config_file.resolve())]
    # Paths handed to notebooks are absolute: the kernel starts in notebooks/.
    for key in ("output_dir", "run_dir", "reference_run", "grid_dir"):
        if parameters.get(key):
            parameters[key] = str(Path(parameters[key]).resolve())
    if parameters.get("model_path") and Path(parameters["model_path"]).exists():
        parameters["model_path"] = str(Path(parameters["model_path"]).resolve())
    notebook = NOTEBOOK_OF[stage.kind]
    # The kernel process writes its own warnings to our stderr; keep them in the stage's folder instead.
    with _stderr_to(stage.workdir / f"{stage.kind}.kernel.log"):
        pm.execute_notebook(str(NOTEBOOKS / notebook), str(stage.workdir / notebook), parameters=parameters,
                            cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False, log_output=False)


@contextmanager
def _stderr_to(path: Path):
    """Point file descriptor 2 (inherited by child processes such as kernels) at `path` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _run_and_record(stage: Stage, force: bool = False, engine: str = "notebooks") -> tuple[str, float | None]:
    """("done" | "failed", seconds), or ("held by pid … on … since …", None) when another runner holds the stage
    (clo_lib.common.lock). A failure leaves its marker with the error's tail; a stage another runner finished meanwhile
    is done with nothing run, unless `force` (an `always` prepare step)."""
    holder = lock.acquire(stage.lock_file)
    if holder is not None:
        return f"held by {lock.describe(holder)}", None
    try:
        start = time.perf_counter()
        if not force and stage.own_state() == "done":  # another runner finished it since this one planned
            return "done", 0.0
        stage.failed_file.unlink(missing_ok=True)
        try:
            execute_stage(stage, engine=engine)
        except Exception as err:  # any error of a stage is that stage's failure, not the grid's
            atomic_write_json(stage.failed_file, {"stage": stage.id, "error": _error_tail(err),
                                                  "when": time.strftime("%Y-%m-%d %H:%M:%S")})
            return "failed", time.perf_counter() - start
        return "done", time.perf_counter() - start
    finally:
        lock.release(stage.lock_file)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """One line per stage: counts, elapsed time, and time left estimated from the stages of each kind so far."""

    def __init__(self, stages: list[Stage], log: Callable[[str], None], workers: int = 1):
        self.left = {s.id: s.kind for s in stages}
        self.workers = workers  # stages at a time: the time left is the work left shared between them
        self.done = self.failed = self.blocked = 0
        self.durations: dict[str, list[float]] = {}
        self.start = time.perf_counter()
        self.log = log

    def started(self, stage: Stage) -> None:
        self.log(f"[{time.strftime('%H:%M:%S')}] {stage.id}: started")

    def finished(self, stage: Stage, outcome: str, seconds: float | None = None) -> None:
        self.left.pop(stage.id, None)
        if outcome == "done":
            self.done += 1
        elif outcome == "failed":
            self.failed += 1
        else:
            self.blocked += 1
        if seconds is not None and outcome == "done":
            self.durations.setdefault(stage.kind, []).append(seconds)
        # stages of a kind not seen yet are estimated from the others, never from prepare steps (a toy world's
        # pretraining would make every training run look like a minute and a half)
        everything = [d for kind, ds in self.durations.items() if kind != "prepare" for d in ds]
        fallback = sum(everything) / len(everything) if everything else 0.0
        eta = sum((sum(self.durations[k]) / len(self.durations[k])) if self.durations.get(k) else fallback
                  for k in self.left.values()) / self.workers
        took = f" in {_clock(seconds)}" if seconds is not None else ""
        self.log(f"[done {self.done} · failed {self.failed} · skipped {self.blocked} · left {len(self.left)}] "
                 f"{stage.id}: {outcome}{took} · elapsed {_clock(time.perf_counter() - self.start)}"
                 + (f" · ~{_clock(eta)} left" if self.left and everything else ""))


def run_grid(grid: Grid, only: list[str] | None = None, executor: str = "local",
             log: Callable[[str], None] = print, rerun_stale: bool = False, workers: int = 1,
             engine: str = "notebooks", threads: int | None = None) -> int:
    """Run every selected stage not yet done, in dependency order. Exit code 0 when all are done.

    Stale stages (made under another config or data) stop the grid before anything runs, unless `rerun_stale`:
    then what they wrote moves to <output_dir>/stale/<time>/ and they run again. Local executor: `workers` stages
    at a time, each worker's torch on its share of the cores (or on `threads`: results can depend on the count, so
    the demo fixes it); engine python runs stages in warm worker processes instead of a kernel each
    (clo_lib.grid.inline).
    """
    stages = select(grid, only)
    selected = {s.id for s in stages}
    # `always` prepare steps run first, done or not: their commands rebuild what is out of date (a toy world of an
    # older version, a changed GGUF), and the stages built on what they rebuild then read as stale below
    for stage in [s for s in stages if s.kind == "prepare" and s.always and s.done_file.exists()]:
        log(f"[{time.strftime('%H:%M:%S')}] {stage.id}: checking (it rebuilds what is out of date)")
        outcome_of, _ = _run_and_record(stage, force=True)
        if outcome_of != "done":
            raise GridError(f"{stage.id} could not check what it prepares ({outcome_of}; {stage.failed_file}); "
                            "fix it and run the grid again")
    state = states(stages)
    stale = [s for s in stages if state[s.id] == "stale"]
    if stale and not rerun_stale:
        names = ", ".join(s.id for s in stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
        raise GridError(f"{len(stale)} stages were made under another config or data than {grid.path} now gives "
                        f"({names}); rerun with --rerun-stale to move them to {grid.output_dir / 'stale'}/ and run "
                        "them again, or restore the grid file")
    if stale:
        log(f"{len(stale)} stale stages: their outputs move to {move_aside(grid, stale)}")
    todo = [s for s in stages if state[s.id] != "done"]
    log(f"grid {grid.name}: {len(stages)} stages, {len(stages) - len(todo)} already done, {len(todo)} to run "
        f"({executor}); outputs in {grid.output_dir}")
    progress = Progress(todo, log, workers if executor == "local" else 1)
    outcome: dict[str, str] = {s.id: "done" for s in stages if s.id not in {t.id for t in todo}}

    def blocked_by(stage: Stage) -> str | None:
        if stage.kind == "analyze":  # it reports on whatever finished, failures included
            return None
        for dep in stage.deps:
            if dep in selected and outcome.get(dep) != "done":
                return dep
        return None

    if executor == "local" and (workers > 1 or engine == "python"):
        # prepare steps first, one at a time with every core (a toy world's pretraining), then the rest in workers
        first = [s for s in todo if s.kind == "prepare"]
        _run_one_by_one(first, outcome, blocked_by, progress)
        _run_in_workers([s for s in todo if s not in first], outcome, selected, blocked_by, progress, workers, engine,
                        threads)
    elif executor == "local":
        _run_one_by_one(todo, outcome, blocked_by, progress)
    else:
        _run_with_submitit(grid, todo, outcome, blocked_by, progress, executor, engine)
    failed = [s for s in todo if outcome.get(s.id) != "done"]
    for stage in failed:
        if outcome.get(stage.id, "").startswith("held by"):
            continue
        if stage.failed_file.exists():
            error = json.loads(stage.failed_file.read_text())["error"].strip().splitlines()
            log(f"FAILED {stage.id}: {error[-1] if error else ''} (details: {stage.failed_file})")
    held = [s.id for s in todo if outcome.get(s.id, "").startswith("held by")]
    if held:
        log(f"{len(held)} stages are being run by another runner of this grid ({', '.join(held[:3])}"
            f"{' ...' if len(held) > 3 else ''}): left to it; run again once it has finished")
    return 1 if failed else 0


def _run_one_by_one(todo: list[Stage], outcome: dict, blocked_by, progress: Progress) -> None:
    """Each stage in turn, in this process's order (dependency order), its notebook in a kernel of its own."""
    for stage in todo:
        if (dep := blocked_by(stage)) is not None:
            outcome[stage.id] = "skipped"
            progress.finished(stage, f"skipped (needs {dep})")
            continue
        progress.started(stage)
        state, seconds = _run_and_record(stage)
        outcome[stage.id] = state
        progress.finished(stage, state if seconds is not None else f"skipped: {state}", seconds)


def cores() -> int:
    """The cores this process may use (its affinity, where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run_in_workers(todo: list[Stage], outcome: dict, selected: set[str], blocked_by, progress: Progress,
                    workers: int, engine: str, threads: int | None = None) -> None:
    """Up to `workers` stages at a time, each as soon as what it waits for is done, in worker processes that stay
    up from stage to stage. Each worker's torch gets cores // workers threads: more threads than cores made two
    concurrent trainings five times slower each (docs/benchmarks.md, bench/grid_workers.py)."""
    threads = threads or max(1, cores() // workers)
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # kernels and commands the workers start inherit it
    try:
        _schedule(todo, outcome, selected, blocked_by, progress, workers, engine, threads)
    finally:  # this process's later stages (and a test session's) get every core again
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


def _schedule(todo: list[Stage], outcome: dict, selected: set[str], blocked_by, progress: Progress, workers: int,
              engine: str, threads: int) -> None:
    """_run_in_workers's loop: start what is ready while a worker is free, record what finishes."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pending, running = list(todo), {}
    # fork: the workers inherit this process's modules (and a test's monkeypatches); the runner holds no threads
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=resolve("clo_lib.grid.inline:start_worker") if engine == "python" else None,
                             initargs=(threads,) if engine == "python" else ()) as pool:
        while pending or running:
            for stage in list(pending):
                if len(running) >= workers:
                    break
                waits = [d for d in stage.deps if d in selected and d not in outcome]
                if waits:
                    continue
                pending.remove(stage)
                if (dep := blocked_by(stage)) is not None:
                    outcome[stage.id] = "skipped"
                    progress.finished(stage, f"skipped (needs {dep})")
                    continue
                progress.started(stage)
                running[pool.submit(_run_and_record, stage, False, engine)] = stage
            if not running:
                if pending and all(any(d in selected and d not in outcome for d in st.deps) for st in pending):
                    raise GridError(f"stages wait for each other: {', '.join(st.id for st in pending[:3])}")
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                try:
                    state, seconds = future.result()
                except Exception as err:  # the worker itself died (out of memory, a crash in native code)
                    atomic_write_json(stage.failed_file, {"stage": stage.id, "error": _error_tail(err)})
                    state, seconds = "failed", None
                outcome[stage.id] = state
                progress.finished(stage, state if seconds is not None or state == "failed" else f"skipped: {state}",
                                  seconds)


def _run_with_submitit(grid: Grid, todo: list[Stage], outcome: dict, blocked_by, progress: Progress,
                       executor: str, engine: str = "notebooks") -> None:
    """Submit stages as jobs, one wave of ready stages at a time, each wave waiting for the one before.

    Waves keep the dependency order without scheduler-specific dependency flags, so the same code runs on SLURM
    and on submitit's local executor (which the tests use). Per-kind resources come from the grid's `resources`.
    """
    try:
        import submitit
    except ImportError:
        raise GridError("--executor slurm needs submitit: pip install -e '.[slurm]'") from None
    folder = grid.output_dir / "slurm" / "%j"
    cluster = "local" if executor == "submitit-local" else "slurm"
    pending = list(todo)
    while pending:
        pending_ids = {p.id for p in pending}
        ready = [s for s in pending if not any(d in pending_ids for d in s.deps)]
        pending = [s for s in pending if s not in ready]
        jobs = []
        for stage in ready:
            if (dep := blocked_by(stage)) is not None:
                outcome[stage.id] = "skipped"
                progress.finished(stage, f"skipped (needs {dep})")
                continue
            job_executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
            resources = dict(grid.resources.get(stage.kind, {}))
            job_executor.update_parameters(name=f"clo-{stage.id.replace('/', '-')}", **resources)
            progress.started(stage)
            jobs.append((stage, job_executor.submit(_run_and_record, stage, False, engine)))
        for stage, job in jobs:
            try:
                state, seconds = _result_of(job, cluster)
            except Exception as err:  # the job itself died (node failure, timeout, scancel)
                atomic_write_json(stage.failed_file, {"stage": stage.id, "error": _error_tail(err)})
                state, seconds = "failed", None
            outcome[stage.id] = state
            progress.finished(stage, state if not state.startswith("held by") else f"skipped: {state}", seconds)


VANISHED_RECHECK_S = 5.0  # a job that has just written its result may leave the queue a moment before the file shows


def _result_of(job, cluster: str, poll_s: float = 2.0):
    """The job's result, or an error once a SLURM job has left the queue without one. submitit asks `sacct` for
    states; on a cluster without accounting (a one-node test cluster, some small ones) a cancelled job's state stays
    unknown and submitit would wait on it forever, so the queue itself (`squeue`) is asked too."""
    while not job.done():
        if cluster == "slurm" and not _in_queue(job.job_id):
            time.sleep(VANISHED_RECHECK_S)
            if not job.done():
                raise RuntimeError(f"SLURM job {job.job_id} left the queue without a result (cancelled, timed out "
                                   "or its node failed)")
        time.sleep(poll_s)
    return job.result()


def _in_queue(job_id: str) -> bool:
    """Whether SLURM still lists the job (pending, running or completing); True when squeue cannot be asked."""
    try:
        done = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if done.returncode != 0:
        return "Invalid job id" not in done.stderr  # squeue forgets finished jobs: that is an answer too
    return bool(done.stdout.strip())


def add_arguments(parser) -> None:
    """`clo grid plan|run|status GRID.yaml`: the stages of a grid, run them (resuming), or their states."""
    parser.add_argument("what", choices=("plan", "run", "status"))
    parser.add_argument("grid", help="grid file, e.g. params/grids/toy.yaml")
    parser.add_argument("--only", nargs="+", metavar="GLOB", help="stages to select (plus what they wait for)")
    parser.add_argument("--slices", nargs="+", metavar="NAME",
                        help="named slices to run (all: every one); default: the grid's default_slices, else all")
    parser.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local")
    parser.add_argument("--workers", type=int, default=1,
                        help="local: stages run at a time (each worker's torch gets cores / workers threads)")
    parser.add_argument("--engine", choices=ENGINES, default="notebooks",
                        help="notebooks: each stage's notebook in a kernel, kept in its folder; python: the same "
                             "library calls in warm worker processes (faster for many small stages)")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="run stages made under another config again, their old outputs moved to <grid>/stale/")


def command(args) -> int:
    grid = load_grid(args.grid, args.slices)
    stages = select(grid, args.only)
    if args.what in ("plan", "status"):
        print(table(stages, with_state=args.what == "status"))
        return 0
    try:
        if args.workers < 1:
            raise GridError(f"--workers {args.workers}; expected 1 or more")
        return run_grid(grid, args.only, args.executor, rerun_stale=args.rerun_stale, workers=args.workers,
                        engine=args.engine)
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages are kept; run the same command again to finish the grid",
              file=sys.stderr)
        return 130
