"""`clo grid run --executor slurm` on a real one-node SLURM cluster started on this machine (tests/slurm/start.sh):
a grid runs through it, a job cancelled with scancel is a failed stage that the next run redoes, and `grid status`
agrees with `squeue` while a job runs. Skipped where SLURM is not installed or not startable (say why)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip("SLURM is not installed here (apt-get install -y slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("starting SLURM's daemons needs root")
    folder = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(REPO / "tests/slurm/start.sh"), str(folder)], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.skip(f"the one-node cluster did not start: {started.stderr.strip()[-300:]}")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    yield folder
    subprocess.run(["bash", str(REPO / "tests/slurm/start.sh"), "--stop", str(folder)])
    os.environ.pop("SLURM_CONF", None)


def slow_grid(tmp_path, seconds: int) -> Path:
    """A grid of one prepare step that appends to ran.txt, sleeps, then writes its done file."""
    script = (f"import time\nopen({str(tmp_path / 'ran.txt')!r}, 'a').write('ran\\n')\ntime.sleep({seconds})\n"
              f"open({str(tmp_path / 'done')!r}, 'w').write('done')\n")
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({
        "name": "g", "output_dir": str(tmp_path / "out"), "models": {"m": {}}, "layers": ["params/presets/toy.yaml"],
        "prepare": [{"id": "slow", "command": ["python", "-c", script], "done": str(tmp_path / "done")}],
        "slices": [{"languages": ["sw"], "methods": ["sft"], "sizes": [4]}]}))
    return path


def clo(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "clo_lib", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, **kwargs)


def queue() -> str:
    return subprocess.run(["squeue", "-h", "-o", "%j %T"], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_a_grid_runs_through_slurm(slurm, tmp_path, tiny_llama):
    from test_grid import write_grid

    grid = write_grid(tmp_path, tiny_llama, slices=[{"languages": ["sw"], "methods": ["sft"], "sizes": [4]}])
    done = clo("grid", "run", grid, "--executor", "slurm", timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "out" / "tiny-sw-sft-n4-s0" / "metrics.json").is_file() and queue() == ""
    assert "train/tiny-sw-sft-n4-s0" in clo("grid", "status", grid).stdout


@pytest.mark.slow
def test_a_cancelled_job_fails_its_stage_and_the_next_run_redoes_it(slurm, tmp_path):
    grid = slow_grid(tmp_path, seconds=60)
    runner = subprocess.Popen([sys.executable, "-m", "clo_lib", "grid", "run", str(grid), "--executor", "slurm",
                               "--only", "prepare"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        for _ in range(60):  # until the job runs and has taken its stage's lock
            if "RUNNING" in queue() and (tmp_path / "ran.txt").is_file():
                break
            time.sleep(1)
        assert "clo-prepare-slow RUNNING" in queue()
        status = clo("grid", "status", grid).stdout
        assert any(line.split()[:2] == ["running", "prepare/slow"] for line in status.splitlines()), status
        job = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()[0]
        subprocess.run(["scancel", job], check=True)
        output = runner.communicate(timeout=120)[0]
    finally:
        runner.kill()
    assert runner.returncode == 1 and "FAILED prepare/slow" in output, output  # the job records it, or the
    # runner sees it leave the queue without a result (_result_of)
    assert not (tmp_path / "done").exists()
    grid_again = slow_grid(tmp_path, seconds=1)
    again = clo("grid", "run", grid_again, "--executor", "slurm", "--only", "prepare", timeout=300)
    assert again.returncode == 0, again.stdout[-2000:]
    assert (tmp_path / "done").is_file() and (tmp_path / "ran.txt").read_text() == "ran\nran\n"


def test_a_job_that_leaves_the_queue_without_a_result_is_a_failure_not_a_wait(monkeypatch):
    """Without accounting (sacct), submitit never learns that a killed job ended and would wait forever; the runner
    asks squeue too."""
    from clo_lib.grid import run as grid_run

    class Vanished:
        job_id = "42"

        def done(self):
            return False

    monkeypatch.setattr(grid_run, "_in_queue", lambda job_id: False)
    monkeypatch.setattr(grid_run, "VANISHED_RECHECK_S", 0.0)
    with pytest.raises(RuntimeError, match="SLURM job 42 left the queue without a result"):
        grid_run._result_of(Vanished(), "slurm", poll_s=0.0)
    monkeypatch.setattr(grid_run, "_in_queue", lambda job_id: True)

    class Finishes(Vanished):
        calls = 0

        def done(self):
            self.calls += 1
            return self.calls > 2

        def result(self):
            return ("done", 1.0)

    assert grid_run._result_of(Finishes(), "slurm", poll_s=0.0) == ("done", 1.0)
