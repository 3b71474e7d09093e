"""A grid's stages and their states: done (made under the fingerprint the grid now gives), stale, running
(another runner holds its lock), failed or pending; stale outputs moved aside.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clo_lib.artifacts.corpus import corpus_dir, run_records
from clo_lib.artifacts.provenance import (
    CHECKPOINT_FINGERPRINT,
    evaluate_fingerprint,
    matches,
    stage_fingerprint,
    train_fingerprint,
)
from clo_lib.common import lock
from clo_lib.common.errors import CloError
from clo_lib.config.schema import REPO, RunConfig
from clo_lib.grid.search import select_fingerprint

NOTEBOOKS = REPO / "notebooks"
NOTEBOOK_OF = {"translate": "01_translate.ipynb", "train": "02_train.ipynb", "evaluate": "03_evaluate.ipynb",
               "validate": "03_evaluate.ipynb", "analyze": "04_analyze.ipynb"}
# validate: a search trial on the validation prompts; select: the best trial of a run (clo_lib.grid.search)
STAGE_KINDS = ("prepare", "transfer", "translate", "train", "validate", "select", "evaluate", "analyze")


@dataclass
class Stage:
    id: str
    kind: str
    workdir: Path  # where the executed notebook, the failure marker and (for runs) everything else go
    done_file: Path
    deps: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    command: list[str] | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # model, lang, size, method, seed: for tables
    config: RunConfig | None = None  # the run's resolved config, saved as run.yaml before it starts
    always: bool = False  # prepare: an idempotent command run at every `grid run` (it rebuilds what is out of date)

    @property
    def failed_file(self) -> Path:
        return self.workdir / f"{self.kind}.failed.json"

    @property
    def lock_file(self) -> Path:
        """Held while a runner runs this stage (clo_lib.common.lock): another runner leaves the stage alone."""
        return self.workdir / f".{self.id.replace('/', '__')}.lock"

    def own_state(self) -> str:
        """done, stale (made under another fingerprint than the grid now gives), running (another runner holds it),
        failed or pending; see states()."""
        if self.kind == "analyze":
            return "done" if _analysis_current(self) else ("failed" if self.failed_file.exists() else "pending")
        if self.done_file.exists():
            if self.kind == "select":
                marker = json.loads(self.done_file.read_text(encoding="utf-8"))
                return "done" if matches(marker.get("fingerprint"), self.expected_fingerprint()) else "stale"
            if self.config is None:  # prepare: its command has no config
                return "done"
            marker = json.loads(self.done_file.read_text(encoding="utf-8"))
            if not matches(marker.get("fingerprint"), self.expected_fingerprint()):
                return "stale"
            if self.kind == "translate" and marker.get("usable_records", 0) < (self.config.data.pool_size or 0):
                # a larger size joined the grid, or the corpus came out short: translating again extends it
                return "failed" if self.failed_file.exists() else "pending"
            return "done"
        if self.kind == "train" and _checkpoints_of_another_run(self):
            return "stale"
        if lock.holder_of(self.lock_file) is not None:
            return "running"
        return "failed" if self.failed_file.exists() else "pending"

    def expected_fingerprint(self) -> Any:
        """What this stage's marker must record to count as done under the grid file as it is now."""
        cfg = self.config
        if self.kind in ("translate", "transfer"):
            return stage_fingerprint(cfg, self.kind)
        if self.kind == "train":
            return train_fingerprint(cfg, _training_records_now(cfg))
        if self.kind == "select":
            return select_fingerprint(self.parameters["metric"], [Path(d) for d in self.parameters["trials"]])
        # the evaluated weights' run: the run folder, or for a validation the trial whose model it names
        trained = Path(self.parameters["model_path"]).parent if self.kind == "validate" else self.workdir
        trained = trained if self.facts.get("method") != "base" else None
        return evaluate_fingerprint(cfg, trained, self.parameters.get("reference_run"))

    def outputs(self) -> list[Path]:
        """What this stage wrote, moved aside when it is run again as stale."""
        if self.kind in ("translate", "train", "transfer", "validate", "select"):
            return [self.workdir]  # the corpus; the run folder (its evaluation depends on it and is stale too)
        if self.kind == "evaluate":
            return [self.workdir / name for name in ("metrics.json", "generations.jsonl", "judgments.jsonl",
                                                     NOTEBOOK_OF["evaluate"], "evaluate.kernel.log", "evaluate.log")]
        return []


def states(stages: list[Stage]) -> dict[str, str]:
    """Each stage's state, in dependency order. A stage that depends on a stale one is stale too: what it was made
    from is about to be made again. The analysis is pending while anything it reports on is not done."""
    result: dict[str, str] = {}
    for stage in stages:
        state = stage.own_state()
        if stage.kind == "analyze":
            if state == "done" and any(result.get(dep, "done") != "done" for dep in stage.deps):
                state = "pending"
        elif state == "done" and any(result.get(dep) == "stale" for dep in stage.deps):
            state = "stale"
        result[stage.id] = state
    return result


def _training_records_now(cfg: RunConfig) -> list[dict] | None:
    """The records a run of `cfg` would train on from the corpus as it is now; None when it cannot train yet (no
    corpus, or too short: the training stage says so when it runs)."""
    if not (corpus_dir(cfg) / "parallel.jsonl").is_file():
        return None
    try:
        return run_records(cfg)
    except CloError:  # no corpus yet, or a short one: the training stage says so when it runs
        return None


def _checkpoints_of_another_run(stage: Stage) -> bool:
    """An unfinished run whose checkpoints were made under another fingerprint (training would refuse them)."""
    # the last stage's checkpoints, and those of earlier stages in folders of their own (sft_dpo: sft/)
    markers = [stage.workdir / "checkpoints" / CHECKPOINT_FINGERPRINT,
               *stage.workdir.glob(f"*/checkpoints/{CHECKPOINT_FINGERPRINT}")]
    return any(not matches(json.loads(m.read_text(encoding="utf-8")).get("fingerprint"),
                           stage.expected_fingerprint()) for m in markers if m.is_file())


def move_aside(grid: Grid, stale: list[Stage]) -> Path:
    """Move what stale stages wrote into <output_dir>/stale/<time>/ (same relative paths), so they run again and
    nothing is lost."""
    import shutil

    aside = grid.output_dir / "stale" / time.strftime("%Y%m%d-%H%M%S")
    for stage in stale:
        for path in stage.outputs():
            if path.exists():
                target = aside / path.resolve().relative_to(grid.output_dir.resolve())
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), str(target))
    return aside


def _analysis_current(stage: Stage) -> bool:
    """The analysis is done when report.md is newer than every metrics.json of the grid."""
    if not stage.done_file.exists():
        return False
    newest = max((p.stat().st_mtime for p in stage.workdir.glob("*/metrics.json")), default=0.0)
    return stage.done_file.stat().st_mtime >= newest


@dataclass
class Grid:
    name: str
    path: Path
    output_dir: Path
    stages: dict[str, Stage]  # in dependency order
    resources: dict[str, dict[str, Any]]
