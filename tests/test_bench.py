"""The benchmark scripts run end to end at a tiny size and print their ratios (no timing is asserted)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# a median ratio over the rounds, their range, and the memory ratio
RATIO = r"\d+\.\d\dx tokens/s \(per round \d+\.\d\d-\d+\.\d\d\), \d+\.\d\dx peak memory"


def _run(script, *args):
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_train_step_bench_prints_its_ratios():
    out = _run("train_step.py", "--steps", "2", "--records", "8", "--hidden", "32", "--layers", "1", "--rounds", "1")
    for peer in ("clo_kit_1pass", "trl_default", "trl_best"):
        assert re.search(rf"clo_kit vs {peer}: {RATIO}", out), out
    assert re.search(r"unsloth vs hf: (not measured \(.+\)|\d+\.\d\dx tokens/s)", out), out


def test_train_step_bench_sft_mode_prints_its_ratios():
    out = _run("train_step.py", "--sft", "--steps", "2", "--records", "8", "--hidden", "32", "--layers", "1",
               "--rounds", "1")
    for peer in ("sft_kit_1pass", "trl_sft"):
        assert re.search(rf"sft_kit vs {peer}: {RATIO}", out), out


def test_translate_bench_prints_its_ratios():
    out = _run("translate.py", "--texts", "8", "--batch", "4", "--d-model", "32", "--new-tokens", "4", "--rounds", "2")
    assert re.search(r"length_grouped vs one_at_a_time: \d+\.\d\dx \(per round [\d.]+-[\d.]+\) chunks/s", out), out
    assert re.search(r"warm-cache rerun [\d.]+ s: [\d.]+x \(per round [\d.]+-[\d.]+\) faster", out), out


def test_grid_workers_bench_prints_its_ratios(tmp_path):
    out = _run("grid_workers.py", "--rounds", "1", "--size", "4", "--world", str(tmp_path / "world"), "--epochs", "1")
    for variant in ("side by side, capped", "side by side, uncapped"):
        assert re.search(rf"{variant} +\(2 at a time, \d+ threads each\): [\d.]+ \[[\d.-]+\] s, "
                         rf"\d+\.\d\d \[[\d.-]+\]x the time of one after the other", out), out
