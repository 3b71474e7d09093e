"""Two runners of one grid never run a stage at once: a lock per stage, taken over when its holder is gone."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from clo_lib.common import lock
from clo_lib.grid.expand import load_grid
from clo_lib.grid.run import run_grid, select
from clo_lib.grid.state import states

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom clo_lib.common import lock\nassert lock.acquire(sys.argv[1]) is None\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


def hold(path: Path) -> subprocess.Popen:
    """Another process holding the lock at `path` until killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_live_holder_keeps_the_lock_and_a_dead_ones_lock_is_taken_over(tmp_path):
    path = tmp_path / "stage.lock"
    holder = hold(path)
    try:
        found = lock.acquire(path)
        assert found is not None and found["pid"] == holder.pid and lock.holder_of(path)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert lock.holder_of(path) is None  # the file is still there, its holder is gone
    assert lock.acquire(path) is None and json.loads(path.read_text())["pid"] != holder.pid
    lock.release(path)
    assert not path.exists()


RACE = ("import sys, time\nfrom clo_lib.common import lock\n"
        "start = float(sys.argv[2])\n"
        "while time.time() < start: pass\n"  # all contenders call acquire at the same instant
        "print('won' if lock.acquire(sys.argv[1]) is None else 'lost', flush=True)\ntime.sleep(1)\n")


def test_contenders_arriving_together_and_over_a_dead_holder_leave_exactly_one_winner(tmp_path):
    """A lock file is never seen half-written (read as 'nobody holds it') and a dead holder's lock is taken over by
    one contender only: the CI run where two runners reached one stage in the same millisecond both ran it."""
    for round_ in range(6):
        path = tmp_path / f"stage-{round_}.lock"
        if round_ % 2:  # a dead holder's lock to take over
            path.write_text(json.dumps({"pid": 999_999_999, "host": socket.gethostname(), "since": "?"}))
        start = time.time() + 1.5
        contenders = [subprocess.Popen([sys.executable, "-c", RACE, str(path), str(start)], cwd=REPO,
                                       stdout=subprocess.PIPE, text=True) for _ in range(6)]
        said = [c.communicate(timeout=60)[0].strip() for c in contenders]
        assert said.count("won") == 1, (round_, said)


def prepare_grid(tmp_path, steps=("a", "b"), seconds=2.0) -> Path:
    """A grid whose prepare steps each append a line to ran-<id>.txt, sleep, then write their done file."""
    script = ("import sys, time\nopen(sys.argv[1], 'a').write('ran\\n')\ntime.sleep(float(sys.argv[3]))\n"
              "open(sys.argv[2], 'w').write('done')\n")
    prepare = [{"id": step, "command": ["python", "-c", script, str(tmp_path / f"ran-{step}.txt"),
                                        str(tmp_path / f"done-{step}"), str(seconds)],
                "done": str(tmp_path / f"done-{step}")} for step in steps]
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "output_dir": str(tmp_path / "out"), "prepare": prepare,
                                    "models": {"m": {}}, "layers": ["params/presets/toy.yaml"],
                                    "slices": [{"languages": ["sw"], "methods": ["sft"], "sizes": [4]}]}))
    return path


def test_two_runners_started_together_run_each_stage_once(tmp_path):
    """The review's probe: two `grid run` of one grid 3 s apart both ran every stage into the same folders."""
    grid = prepare_grid(tmp_path, steps=("a", "b", "c"))
    command = [sys.executable, "-m", "clo_lib", "grid", "run", str(grid), "--only", "prepare"]
    runners = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [runner.communicate(timeout=120)[0] for runner in runners]
    for step in ("a", "b", "c"):
        assert (tmp_path / f"ran-{step}.txt").read_text() == "ran\n", outputs  # exactly once
        assert (tmp_path / f"done-{step}").is_file()
    assert any("held by pid" in out for out in outputs), outputs  # one of them said so, in one line a stage


def test_a_held_stage_is_left_to_its_holder_shown_running_and_run_once_the_holder_is_gone(tmp_path):
    grid = load_grid(prepare_grid(tmp_path, seconds=0))
    stages = select(grid, ["prepare"])
    held = grid.stages["prepare/a"]
    holder = hold(held.lock_file)
    lines = []
    try:
        assert states(stages)["prepare/a"] == "running"
        assert run_grid(grid, ["prepare"], log=lines.append) == 1
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "ran-a.txt").exists() and (tmp_path / "done-b").is_file()
    assert any(f"prepare/a: skipped: held by pid {holder.pid}" in line for line in lines), lines
    assert run_grid(grid, ["prepare"], log=lines.append) == 0  # the dead holder's lock is taken over
    assert (tmp_path / "ran-a.txt").read_text() == "ran\n"
