"""`make gpu-proof`: what only a GPU can show, in one command, on a machine with CUDA and no network (issue 29).

    make gpu-wheels                       # here: the wheels the GPU image lacks, into .whl/gpu (bench/gpu_wheels.py)
    make gpu-proof OUT=DIR                # there: install them offline, run the checks, write DIR/gpu_proof.{json,md}

On a machine without CUDA it exits at once with one sentence. What it runs, each backend in its own process
(Unsloth patches transformers when it is imported, so hf runs must not share a process with it):
  1. Two architectures built from their configs with random weights, rounded to bfloat16 numbers so float32 and
     bfloat16 runs start from one model: SmolLM2-135M's and a 1.1B Llama (TinyLlama's shape). The real SmolLM2
     wheel (93 MB) cannot travel. For each, backend hf and (when `import unsloth` works) unsloth, trainable
     attention and LoRA, SFT and CLO, in bfloat16, STEPS steps at the paper's lr 8e-6: the trained weights must move
     (at least MOVED_AT_LEAST of their elements; for LoRA, of lora_B, which starts at zero).
  2. The bfloat16 loss curve of CLO (SmolLM2's shape, attention, hf) against float32's: at most CURVE_REL_TOL
     relative per logged step, the tolerance tests/test_precision.py uses on a CPU.
  3. Peak GPU memory: attention-only CLO against full-weight DPO (CLO with λ = 0, every weight trained) on the 1.1B
     model, which the paper puts about 30 % lower; and clo_lib.modeling.memory's estimate beside each run's peak.
  4. bench/train_step.py's comparisons on the GPU (kit against TRL's default and best, unsloth against hf), CLO and
     SFT, one round each, their printout kept.
Everything goes into DIR/gpu_proof.json and DIR/gpu_proof.md (at most 8 files come back from the device machine).
`--cpu-smoke` runs parts 1-3 with tiny models on the CPU, backend hf only: how the tests check this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/train_step.py's synthetic records
sys.path.insert(0, str(HERE.parent))  # the kit itself, when it is not installed (the GPU image)

# Architectures as their published configs give them (random weights; vocabularies as the real models').
ARCHS = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "llama-1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                       num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                       rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
}
TINY = dict(vocab_size=2048, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)  # --cpu-smoke
LEARNING_RATE = 8e-6  # the paper's
STEPS, SMOKE_STEPS = 16, 4
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ROWS = 8  # rows a step
MOVED_AT_LEAST = 0.99  # tests/test_precision.py: share of trained elements that must move
CURVE_REL_TOL = 1e-3  # tests/test_precision.py: bfloat16 against float32 loss, relative, per logged step
BUDGET_S = 480  # make gpu-proof's whole run, so one 10-minute device command holds it with room to spare


def no_cuda_sentence() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    return ("gpu_proof: no CUDA GPU is visible here; run `make gpu-proof` on a machine with one "
            "(the CPU-checkable parts are in `make test`)")


def build_model(folder: Path, arch: dict, seed: int = 0, device: str = "cpu") -> Path:
    """A Llama of `arch`'s shape with random weights rounded to bfloat16 numbers, and a BPE tokenizer trained on the
    benchmark's records, saved to `folder`."""
    import torch
    from train_step import parallel_records
    from transformers import AutoModelForCausalLM, LlamaConfig

    from clo_lib.modeling.tiny import DEFAULT_CORPUS, build_bpe_tokenizer

    corpus = DEFAULT_CORPUS + [r[k] for r in parallel_records(ROWS * 4)
                               for k in ("prompt_en", "response_en", "prompt_tgt", "response_tgt")]
    tokenizer = build_bpe_tokenizer(corpus, vocab_size=min(2000, arch["vocab_size"]))
    config = LlamaConfig(**arch, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # exactly bfloat16 numbers
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_config(model_dir: Path, backend: str, trainable: str, method: str, dtype: str, lam: float | None = None):
    from clo_lib.config.load import load_config

    train = {"method": method, "trainable": trainable, "learning_rate": LEARNING_RATE, "batch_size": ROWS,
             "epochs": 1, "lr_scheduler": "constant", "warmup_ratio": 0.0, "logging_steps": 1,
             "save_steps": 10**6, "gradient_checkpointing": False}
    if lam is not None:
        train["lam"] = lam
    return load_config({"language": "sw", "model": {"name_or_path": str(model_dir), "backend": backend,
                                                    "dtype": dtype, "max_length": 256}, "train": train})


def moved_share(model, start: dict) -> float:
    """Share of the trained attention elements that differ from where they started: q/k/v/o weights against the
    saved model, LoRA's B matrices against zero (where PEFT starts them). Other weights of a full-weight run are
    left out: the embedding rows of tokens the data never uses get no gradient and rightly stay."""
    moved = total = 0
    for name, param in model.named_parameters():
        if not param.requires_grad or "lora_A" in name or not any(f"{m}." in name for m in ATTENTION):
            continue
        key = name.replace("base_model.model.", "").replace(".default", "")
        before = start.get(key)
        if "lora_B" in name:
            before = 0.0
        elif before is None:
            continue
        value = param.detach().float().cpu()
        moved += (value != (before if isinstance(before, float) else before.float())).sum().item()
        total += value.numel()
    return moved / total if total else 0.0


def train_one(model_dir: Path, out: Path, backend: str, trainable: str, method: str, dtype: str,
              lam: float | None = None, steps: int = STEPS) -> dict:
    """One short training of the kit's own (clo_lib.stages.train), with what it moved, its loss curve, its peak
    memory and the memory module's estimate."""
    import torch
    from safetensors.torch import load_file
    from train_step import parallel_records

    from clo_lib.method.pairs import METHOD_STAGES
    from clo_lib.modeling.memory import estimate_for_run
    from clo_lib.stages.train import train_stage

    cfg = run_config(model_dir, backend, trainable, method, dtype, lam)
    records = parallel_records(steps * ROWS // 2)  # two rows a record for both methods: `steps` steps
    start = {name: tensor for file in sorted(model_dir.glob("*.safetensors")) for name, tensor in
             load_file(str(file)).items()}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    trainer, summary = train_stage(cfg, records, out, METHOD_STAGES[method][-1])
    seconds = time.perf_counter() - began
    model = trainer.accelerator.unwrap_model(trainer.model)
    result = {"backend": backend, "trainable": trainable, "method": method, "dtype": dtype, "lam": cfg.train.lam,
              "steps": summary["steps"], "seconds": round(seconds, 2),
              "losses": [round(h["loss"], 6) for h in summary["log_history"] if "loss" in h],
              "moved": round(moved_share(model, start), 4),
              "estimate_gb": round(estimate_for_run(cfg).total_gb, 3)}
    result["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return result


def worker(backend: str, out: Path, smoke: bool) -> dict:
    """Every run of one backend, in this process: parts 1-3 (the precision and memory runs only with hf)."""
    device = "cuda" if not smoke else "cpu"
    report: dict = {"backend": backend, "runs": {}, "errors": {}}
    if backend == "unsloth":
        try:
            import unsloth  # noqa: F401  (patches transformers: first, and in its own process)
        except Exception as err:  # what the image lacks shows here, by name
            report["errors"]["import unsloth"] = f"{type(err).__name__}: {err}"[:2000]
            return report
    archs = {"tiny": TINY} if smoke else ARCHS
    for arch_name, arch in archs.items():
        model_dir = build_model(out / "models" / arch_name, arch, device=device)
        plan = [(trainable, method, "bfloat16", None) for trainable in ("attention", "lora") for method in
                ("sft", "clo")]
        if backend == "hf" and arch_name in ("smollm2-135m", "tiny"):
            plan.append(("attention", "clo", "float32", None))  # part 2's reference curve
        if backend == "hf" and arch_name in ("llama-1.1b", "tiny"):
            plan.append(("full", "clo", "bfloat16", 0.0))  # part 3: full-weight DPO
        for trainable, method, dtype, lam in plan:
            name = f"{arch_name}/{trainable}/{method}/{dtype}" + ("/dpo" if lam == 0.0 else "")
            try:
                report["runs"][name] = train_one(model_dir, out / "runs" / name.replace("/", "-"), backend,
                                                 trainable, method, dtype, lam, SMOKE_STEPS if smoke else STEPS)
            except Exception as err:  # one broken combination must not hide the others' results
                report["errors"][name] = f"{type(err).__name__}: {err}"[:2000]
            print(f"{backend} {name}: {report['runs'].get(name, report['errors'].get(name))}", file=sys.stderr)
    return report


def checks(reports: list[dict]) -> list[dict]:
    """Parts 1-3 as pass/fail lines, from the workers' runs."""
    found = []
    for report in reports:
        for name, run in report["runs"].items():
            found.append({"check": f"{report['backend']} {name}: trained weights moved",
                          "value": run["moved"], "limit": f">= {MOVED_AT_LEAST}", "ok": run["moved"] >= MOVED_AT_LEAST})
        runs = report["runs"]
        for arch in {name.split("/")[0] for name in runs}:
            bf16, fp32 = runs.get(f"{arch}/attention/clo/bfloat16"), runs.get(f"{arch}/attention/clo/float32")
            if bf16 and fp32 and bf16["losses"] and len(bf16["losses"]) == len(fp32["losses"]):
                worst = max(abs(a - b) / abs(b) for a, b in zip(bf16["losses"], fp32["losses"]))
                found.append({"check": f"{report['backend']} {arch}: bfloat16 loss curve against float32",
                              "value": round(worst, 6), "limit": f"<= {CURVE_REL_TOL}", "ok": worst <= CURVE_REL_TOL})
            clo, dpo = runs.get(f"{arch}/attention/clo/bfloat16"), runs.get(f"{arch}/full/clo/bfloat16/dpo")
            if clo and dpo and clo["peak_gb"] and dpo["peak_gb"]:
                check = f"{report['backend']} {arch}: attention-only CLO peak memory / full-weight DPO's"
                found.append({"check": check,
                              "value": round(clo["peak_gb"] / dpo["peak_gb"], 3), "limit": "paper: about 0.7",
                              "ok": clo["peak_gb"] < dpo["peak_gb"]})
    return found


def markdown(result: dict) -> str:
    lines = [f"# GPU proof: {result['device']}", "", f"{result['packages']}; {result['seconds']:.0f} s in all.", "",
             "| check | value | limit | ok |", "|---|---|---|---|"]
    lines += [f"| {c['check']} | {c['value']} | {c['limit']} | {'yes' if c['ok'] else '**no**'} |"
              for c in result["checks"]]
    lines += ["", "| backend | run | steps | seconds | moved | peak GB | estimate GB |",
              "|---|---|---|---|---|---|---|"]
    for report in result["workers"]:
        for name, run in report["runs"].items():
            lines.append(f"| {report['backend']} | {name} | {run['steps']} | {run['seconds']} | {run['moved']} | "
                         f"{run['peak_gb']} | {run['estimate_gb']} |")
    errors = [(r["backend"], name, text) for r in result["workers"] for name, text in r["errors"].items()]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {backend} {name}: `{text.splitlines()[0][:300]}`"
                                        for backend, name, text in errors]
    for title, text in result.get("bench", {}).items():
        lines += ["", f"## bench/train_step.py {title}", "", "```", text.strip()[-3000:], "```"]
    return "\n".join(lines) + "\n"


def install_wheels(folder: Path) -> str:
    """pip install every wheel in `folder`, offline and without resolving (the list is exact); what it said."""
    wheels = sorted(str(p) for p in folder.glob("*.whl"))
    if not wheels:
        return f"no wheels in {folder}"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *wheels],
                          capture_output=True, text=True)
    return f"installed {len(wheels)} wheels" if done.returncode == 0 else f"pip failed: {done.stderr[-1500:]}"


def packages() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "unsloth", "unsloth_zoo"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} absent")
    return ", ".join(found)


def run_worker(backend: str, out: Path, smoke: bool, timeout: float) -> dict:
    command = [sys.executable, __file__, "--worker", backend, "--out", str(out)] + (["--cpu-smoke"] if smoke else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "runs": {}, "errors": {"worker": f"stopped after {timeout:.0f} s"}}
    if done.returncode != 0:
        return {"backend": backend, "runs": {}, "errors": {"worker": done.stderr[-2000:]}}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_proof.json and gpu_proof.md")
    parser.add_argument("--wheels", help="install these wheels first, offline (make gpu-wheels makes them)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU, backend hf (the tests)")
    parser.add_argument("--no-bench", action="store_true", help="leave out part 4")
    parser.add_argument("--worker", choices=("hf", "unsloth"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"gpu_proof: --out {out} is a file; expected a folder for gpu_proof.json and gpu_proof.md",
              file=sys.stderr)
        return 2
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(worker(args.worker, Path(tmp), args.cpu_smoke)))
        return 0
    if not args.cpu_smoke and (sentence := no_cuda_sentence()):
        print(sentence, file=sys.stderr)
        return 2
    began = time.perf_counter()
    installed = install_wheels(Path(args.wheels)) if args.wheels else "no wheels asked for"
    backends = ("hf",) if args.cpu_smoke else ("hf", "unsloth")
    workers = [run_worker(b, out, args.cpu_smoke, BUDGET_S * 0.4) for b in backends]
    bench = {}
    if not (args.no_bench or args.cpu_smoke):
        for title, extra in (("CLO", []), ("SFT", ["--sft"])):
            left = BUDGET_S - (time.perf_counter() - began)
            if left < 60:
                bench[title] = f"not run: {left:.0f} s left of the {BUDGET_S} s budget"
                continue
            cmd = [sys.executable, str(HERE / "train_step.py"), "--rounds", "1", "--steps", "16", "--hidden", "576",
                   "--layers", "30", *extra]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=left / 2)
                bench[title] = done.stdout + (done.stderr[-1500:] if done.returncode else "")
            except subprocess.TimeoutExpired:
                bench[title] = f"stopped after {left / 2:.0f} s"
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    result = {"device": device, "packages": packages(), "wheels": installed, "workers": workers,
              "checks": checks(workers), "bench": bench, "seconds": round(time.perf_counter() - began, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_proof.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "gpu_proof.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0 if all(c["ok"] for c in result["checks"]) and result["checks"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
