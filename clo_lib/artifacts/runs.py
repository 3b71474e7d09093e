"""A run's metrics.json: the facts that identify the run (model, language, method, size, seed, variant), its
metrics and details, written atomically and read back as rows; and the train log's early-saturation diagnostic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from clo_lib.common.io import atomic_write_json
from clo_lib.config.schema import RunConfig
from clo_lib.method.pairs import SIDES

# ---------------------------------------------------------------------------------------------------------------
# metrics.json and the long-format table


def run_facts(cfg: RunConfig, method: str | None = None, model_label: str | None = None,
              run_dir: str | Path | None = None, variant: str = "") -> dict[str, Any]:
    """What identifies a run in the results table (the grid's short model label, else the model's id; the grid
    slice's variant for an ablation run, "" otherwise), and how many examples it really trained on (its train log's
    `examples_used`; None for an untrained model)."""
    method = method or cfg.train.method
    log = Path(run_dir) / "train_log.json" if run_dir else None
    used = json.loads(log.read_text(encoding="utf-8")).get("examples_used") if log and log.is_file() else None
    return {"model": model_label or cfg.model.name_or_path, "lang": cfg.language,
            "size": None if method == "base" else cfg.data.size,  # the untrained model has no data size
            "method": method, "seed": cfg.seed, "name": cfg.name, "examples_used": used, "variant": variant}


def write_metrics(run_dir: str | Path, facts: dict, metrics: dict, details: dict | None = None,
                  fingerprint: dict | None = None) -> Path:
    """metrics.json, written atomically and last: a run folder without it is not done. `fingerprint` says what the
    numbers came from (clo_lib.artifacts.provenance), so a grid can tell when they no longer match its config."""
    path = Path(run_dir) / "metrics.json"
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    atomic_write_json(path, {"run": facts, "metrics": clean, "details": details or {}, "fingerprint": fingerprint})
    return path


def metrics_rows(path: str | Path) -> list[dict]:
    """One long-format row per metric: model, lang, size, method, seed, name, examples_used, metric, value."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [{**data["run"], "metric": metric, "value": value} for metric, value in data["metrics"].items()]


# ---------------------------------------------------------------------------------------------------------------
# The train log's preference diagnostics (the train stage warns with them; the report counts them)


# Preference accuracy that saturates this early is the pattern users of other trainers report for target-chosen /
# English-rejected pairs: the language alone tells the answers apart, and the reward learns the language, not the
# answer ("reward hacking on language").
SATURATED, EARLY = 0.99, 0.10


def preference_saturation(log_history: Sequence[dict]) -> list[str]:
    """A sentence per side whose logged preference accuracy (`<side>/rewards_accuracy`) reached SATURATED within the
    first EARLY share of the steps; empty for a run without preference logs."""
    total = max((entry.get("step", 0) for entry in log_history), default=0)
    found = []
    for side in SIDES:
        reached = [entry["step"] for entry in log_history
                   if entry.get(f"{side}/rewards_accuracy", 0.0) >= SATURATED and "step" in entry]
        if total and reached and reached[0] <= EARLY * total:
            found.append(f"preference accuracy on {side} prompts reached {SATURATED:.2f} at step {reached[0]} of "
                         f"{total} (within the first {EARLY:.0%}): the pairs may differ by language alone, so the "
                         "preference can learn the language rather than the answer")
    return found
