"""Each method at its own best on validation prompts: a grid's `search` block (clo_lib.grid.spec.SearchSpec).

For every run of the grid (the run at the shared budget, `<run>/`), the search adds trials, one per point of the
method's space: each trains (`<run>-t<k>/`; the point that is the shared budget itself is `<run>/`, not trained
twice), is evaluated on the validation prompts only (`<trial>/validation/metrics.json`), and `clo select` keeps
the best by the grid's metric in `<run>-best/`: pick.json (every trial's settings and validation score), the
picked trial's config.yaml and train_log.json, and `model` pointing at its weights. Only that folder is evaluated
on the test prompts; the other trials' test numbers are never computed. The report puts these runs (pick.json in
the folder: view "tuned") beside the runs at the shared budget (view "shared").

    clo select --metric fidelity_tgt accuracy_tgt --keys train.learning_rate --out RUN-best TRIAL_DIR...
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from clo_lib.artifacts.provenance import run_fingerprint
from clo_lib.common.cache import digest
from clo_lib.common.errors import InputError, MissingInputError
from clo_lib.common.io import atomic_write_json
from clo_lib.config.load import read_yaml

PICK = "pick.json"  # in a tuned run's folder: what was picked from which trials, and why
VALIDATION = "validation"  # a trial's folder for its validation evaluation


def trials_of(space: dict[str, list], methods: dict[str, dict[str, list]], method: str) -> list[dict[str, Any]]:
    """The method's trials: the product of its space (its own under `methods`, else `space`), as dotted settings,
    in the order the grid file lists the values."""
    chosen = methods.get(method, space)
    keys = list(chosen)
    return [dict(zip(keys, values)) for values in itertools.product(*(chosen[key] for key in keys))]


def select_fingerprint(metric: list[str], trial_dirs: list[Path]) -> dict[str, Any]:
    """What a pick depends on: the metric and each trial's weights (None: not trained yet, not compared)."""
    return {"metric": digest(metric), "trials": {Path(d).name: run_fingerprint(d) for d in trial_dirs}}


def _setting(config: dict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def score_trial(trial_dir: Path, metric: list[str], keys: list[str]) -> dict[str, Any]:
    """One trial's settings (from its config.yaml) and validation metrics, and their sum over `metric`."""
    found = Path(trial_dir) / VALIDATION / "metrics.json"
    if not found.is_file():
        raise MissingInputError(f"{found} does not exist; evaluate trial {trial_dir} on the validation prompts first")
    values = json.loads(found.read_text(encoding="utf-8"))["metrics"]
    missing = [term for term in metric if values.get(metric_name(term)) is None]
    if missing:
        raise InputError(f"{found}: metric {metric_name(missing[0])!r} is missing or empty; search.metric must name "
                         f"metrics the validation evaluation writes, such as {', '.join(sorted(values)[:6])}")
    config = read_yaml(Path(trial_dir) / "config.yaml")
    return {"trial": Path(trial_dir).name, "settings": {key: _setting(config, key) for key in keys},
            "metrics": {metric_name(term): values[metric_name(term)] for term in metric},
            "score": sum(sign(term) * values[metric_name(term)] for term in metric)}


def metric_name(term: str) -> str:
    """A search.metric term's metrics.json name: `-ref_nll_tgt` is ref_nll_tgt, counted with a minus sign."""
    return term[1:] if term.startswith("-") else term


def sign(term: str) -> int:
    """+1 for a metric where higher is better, -1 for a term written `-name` (lower is better, e.g. an NLL)."""
    return -1 if term.startswith("-") else 1


def pick(trial_dirs: list[str | Path], metric: list[str], keys: list[str], out: str | Path) -> dict[str, Any]:
    """Score every trial on validation, keep the best (the first listed wins a tie) in `out`: its config.yaml and
    train_log.json copied, `model` linking to its weights (copied where links are not allowed), pick.json last."""
    trial_dirs = [Path(d) for d in trial_dirs]
    if not trial_dirs:
        raise InputError("clo select: no trial folders given; expected the trials of one run")
    scored = [score_trial(d, metric, keys) for d in trial_dirs]
    # rounded: sums of shares that tie on paper can differ in the last bit (0.9 + 0.3 < 0.4 + 0.8 in floats)
    best = max(range(len(scored)), key=lambda i: (round(scored[i]["score"], 9), -i))
    source, out = trial_dirs[best], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "train_log.json"):
        shutil.copyfile(source / name, out / name)
    model = out / "model"
    if model.is_symlink() or model.is_file():
        model.unlink()
    elif model.is_dir():
        shutil.rmtree(model)
    try:  # relative, so the grid's folder can move
        model.symlink_to(os.path.relpath(source / "model", out), target_is_directory=True)
    except OSError:  # a file system without links (some network drives)
        shutil.copytree(source / "model", model)
    record = {"metric": metric, "picked": scored[best]["trial"], "settings": scored[best]["settings"],
              "score": scored[best]["score"], "trials": scored,
              "fingerprint": select_fingerprint(metric, trial_dirs)}
    atomic_write_json(out / PICK, record)  # written last: its presence means the pick is complete
    return record


def describe(record: dict[str, Any]) -> str:
    """The pick in a few words, for `grid status` and logs: `t2 (train.learning_rate=0.0006) 2.71 of 2.53-2.71`."""
    settings = ", ".join(f"{k}={v}" for k, v in record["settings"].items())
    scores = [t["score"] for t in record["trials"]]
    return f"{record['picked']} ({settings}) {record['score']:.2f} of {min(scores):.2f}-{max(scores):.2f}"


def add_arguments(parser) -> None:
    """`clo select --metric M [M ...] --keys K [K ...] --out RUN-best TRIAL_DIR ...`: keep the trial with the best
    sum of validation metrics (a grid's search does this for every run)."""
    parser.add_argument("trials", nargs="+", help="trial folders, each with validation/metrics.json")
    parser.add_argument("--metric", nargs="+", action="extend", required=True,
                        help="validation metrics summed to rank trials; --metric=-NAME subtracts NAME (lower is "
                        "better: the = keeps the minus from reading as an option)")
    parser.add_argument("--keys", nargs="+", required=True, help="the dotted settings the trials vary")
    parser.add_argument("--out", required=True, help="the tuned run's folder")


def command(args) -> int:
    record = pick(args.trials, args.metric, args.keys, args.out)
    print(f"picked {describe(record)}")
    return 0
