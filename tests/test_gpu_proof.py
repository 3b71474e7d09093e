"""`make gpu-wheels` and `make gpu-proof` (bench/gpu_wheels.py, bench/gpu_proof.py): what a CPU can check."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_proof  # noqa: E402
import gpu_wheels  # noqa: E402


def test_without_cuda_it_exits_at_once_with_one_sentence(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_proof.py", "--out", str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "no CUDA GPU is visible here" in done.stderr and not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    assert gpu_proof.main(["--out", str(tmp_path / "file")]) == 2


@pytest.mark.parametrize("arch,published", [("smollm2-135m", 134_515_008), ("llama-1.1b", 1_100_048_384)])
def test_the_architectures_built_from_config_have_the_published_sizes(arch, published):
    """The models trained on the GPU stand in for SmolLM2-135M and TinyLlama-1.1B: same shapes, counted on the
    meta device (no weights allocated) against the parameter counts their model cards give."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**gpu_proof.ARCHS[arch]))
    assert sum(p.numel() for p in model.parameters()) == published


def test_the_wheel_report_adds_sizes_and_says_when_they_do_not_fit(tmp_path):
    (tmp_path / "a-1-py3-none-any.whl").write_bytes(b"x" * 3 * 2**20)
    (tmp_path / "b-1-py3-none-any.whl").write_bytes(b"x" * 2**20)
    text, fits = gpu_wheels.report(gpu_wheels.sizes(tmp_path), budget_mb=5)
    assert fits and text.splitlines()[0].endswith("a-1-py3-none-any.whl") and "4.00 MB  in 2 wheels" in text
    assert gpu_wheels.report(gpu_wheels.sizes(tmp_path), budget_mb=3.5)[1] is False
    assert all("==" in w for w in gpu_wheels.WHEELS)  # every wheel pinned


def test_import_needs_follows_module_level_imports_and_tells_required_conditional_and_optional(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import os\nimport numpy\nfrom .sub import thing\ntry:\n    import xformers\nexcept ImportError:\n"
        "    xformers = None\ntry:\n    import torch\nexcept KeyError:\n    pass\nif os.environ.get('X'):\n"
        "    import flash_attn\n\ndef later():\n    import vllm\n")
    (pkg / "sub" / "__init__.py").write_text("from .deep import x\n")
    (pkg / "sub" / "deep.py").write_text("import trl\nimport pkg.sub\n")
    needs = gpu_wheels.import_needs(tmp_path, root="pkg")
    assert needs == {"numpy": gpu_wheels.REQUIRED, "trl": gpu_wheels.REQUIRED, "torch": gpu_wheels.REQUIRED,
                     "xformers": gpu_wheels.OPTIONAL, "flash_attn": gpu_wheels.CONDITIONAL}


def test_checks_read_the_runs_moved_curve_and_memory():
    run = {"moved": 1.0, "losses": [1.0, 0.9], "peak_gb": 2.0}
    reports = [{"backend": "hf", "errors": {}, "runs": {
        "m/attention/clo/bfloat16": run, "m/attention/clo/float32": {**run, "losses": [1.0, 0.9005]},
        "m/full/clo/bfloat16/dpo": {**run, "peak_gb": 3.0}, "m/lora/sft/bfloat16": {**run, "moved": 0.5}}}]
    found = {c["check"]: c for c in gpu_proof.checks(reports)}
    assert found["hf m/lora/sft/bfloat16: trained weights moved"]["ok"] is False
    curve = found["hf m: bfloat16 loss curve against float32"]
    assert curve["ok"] and curve["value"] == pytest.approx(0.0005 / 0.9005, abs=1e-6)
    assert found["hf m: attention-only CLO peak memory / full-weight DPO's"]["value"] == pytest.approx(0.667, abs=1e-3)


@pytest.mark.slow
def test_the_cpu_smoke_run_trains_every_combination_and_writes_both_files(tmp_path):
    """Parts 1-3 with a tiny model on the CPU, backend hf: every combination trains, the trained weights move at
    the paper's lr in bfloat16 (float32 master weights), and the bfloat16 curve matches float32's."""
    done = subprocess.run([sys.executable, "bench/gpu_proof.py", "--out", str(tmp_path), "--cpu-smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_proof.json").read_text())
    (worker,) = result["workers"]
    assert worker["errors"] == {} and len(worker["runs"]) == 6
    assert all(run["steps"] == gpu_proof.SMOKE_STEPS and run["moved"] == 1.0 for run in worker["runs"].values())
    assert {c["check"].split(": ")[-1] for c in result["checks"]} == {"trained weights moved",
                                                                     "bfloat16 loss curve against float32"}
    assert "| check | value | limit | ok |" in (tmp_path / "gpu_proof.md").read_text()
