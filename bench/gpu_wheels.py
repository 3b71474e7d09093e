"""`make gpu-wheels`: the wheels `make gpu-proof` needs on the GPU machine, which has no network, into .whl/gpu.

    python bench/gpu_wheels.py [--dest .whl/gpu] [--budget-mb 48]      # download, then report sizes
    python bench/gpu_wheels.py --needs .whl/gpu                        # what `import unsloth` imports, from source

The GPU image has Python 3.12 with torch 2.11.0 (CUDA 13), transformers 5.17.0, accelerate, peft, safetensors,
tokenizers, sentencepiece, numpy, pandas, pyarrow, seaborn, pytest and triton. The kit's own training needs nothing
more (it subclasses transformers' Trainer; trl and datasets are only for TRL's side of bench/train_step.py), so
WHEELS holds trl and datasets with what they pull in, and Unsloth with what its import reaches (`--needs` reads
that from Unsloth's source: every module-level import reachable from `import unsloth`; an import inside a
try block counts as optional). Whatever the list misses shows on the GPU as one ImportError naming the module, in
gpu_proof.md, and the hf runs go on without Unsloth.

Left out on purpose, with their sizes: xformers (about 117 MB) and bitsandbytes (about 60 MB), which do not fit the
64 MiB that travels with the working tree; torchvision and diffusers, which only Unsloth's vision and diffusion
paths import. Every wheel is pinned (what `.[gpu]` resolves to beside the kit's gpu stack, requirements-gpu.lock),
for CPython 3.12 on x86-64 Linux. `--needs` on unsloth 2026.10.9 (2026-12-03): reached outside any try block are
torch, transformers, accelerate, peft, trl, datasets, huggingface_hub, triton, numpy, packaging, filelock, psutil,
regex, requests, tqdm and PIL, all under an `if` (the GPU branch of `if _IS_MLX`), with bitsandbytes and flash_attn
behind capability flags; cut_cross_entropy, torchao, xformers, torchvision, vllm and pydantic only inside try
blocks. tyro, typer, rich, diffusers and hf_transfer, in unsloth's requirements, are not imported by
`import unsloth` at all.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

WHEELS = [
    # TRL's side of bench/train_step.py; unsloth imports both too
    "trl==1.14.2", "datasets==4.8.5", "dill==0.4.1", "multiprocess==0.70.19", "xxhash==4.1.0", "fsspec==2026.2.0",
    "requests==2.34.2", "urllib3==2.8.0", "idna==3.20", "charset-normalizer==3.5.3", "certifi==2026.10.19.post1",
    # Unsloth, and the optional packages its import tries (python bench/gpu_wheels.py --needs .whl/gpu)
    "unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "cut_cross_entropy==25.1.1", "torchao==0.18.0",
    "msgspec==0.23.0", "einops==0.8.2",
]
PYTHON, PLATFORMS = "3.12", ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
DEST = Path(".whl/gpu")
BUDGET_MB = 48  # of the 64 MiB that travel, leaving the working tree its room


def download(dest: Path, wheels: list[str] = WHEELS) -> subprocess.CompletedProcess:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                           "--python-version", PYTHON, "--implementation", "cp", *platforms, "-d", str(dest),
                           *wheels], capture_output=True, text=True)


def sizes(dest: Path) -> dict[str, float]:
    """Megabytes of each wheel in `dest`."""
    return {p.name: p.stat().st_size / 2**20 for p in sorted(Path(dest).glob("*.whl"))}


def report(found: dict[str, float], budget_mb: float) -> tuple[str, bool]:
    """The wheels by size and their total against the budget; whether it fits."""
    total = sum(found.values())
    lines = [f"{mb:7.2f} MB  {name}" for name, mb in sorted(found.items(), key=lambda kv: -kv[1])]
    fits = total <= budget_mb
    lines.append(f"{total:7.2f} MB  in {len(found)} wheels; budget {budget_mb} MB: "
                 f"{'fits' if fits else 'too large, leave some out'}")
    return "\n".join(lines), fits


CATCHING = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
REQUIRED, CONDITIONAL, OPTIONAL = 0, 1, 2  # an import's status: always run, under an `if`, caught when it fails
STATUS = ("required", "conditional", "optional")


def _catches_import_errors(node: ast.Try) -> bool:
    """Whether a failed import inside this try block would be caught (a bare except, or one naming ImportError or
    a base of it); `except _CPUBackendSelected:` does not make the imports in its block optional."""
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if handler.type is None or any(isinstance(k, ast.Name) and k.id in CATCHING for k in kinds):
            return True
    return False


def module_imports(path: Path) -> list[tuple[str, int, int]]:
    """(module, relative level, status) for every import that runs when the module at `path` is imported: module
    level, or inside if/try/with at module level (not inside functions or classes); status REQUIRED, CONDITIONAL
    (under an `if`) or OPTIONAL (inside a try block that catches a failed import)."""
    found = []

    def visit(nodes, status):
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((alias.name, 0, status) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.append((node.module or "", node.level, status))
                if node.module is None or node.level:  # `from . import x` may import submodule x
                    found.extend(((node.module + "." if node.module else "") + alias.name, node.level, status)
                                 for alias in node.names)
            elif isinstance(node, ast.Try):
                visit(node.body, max(status, OPTIONAL if _catches_import_errors(node) else status))
                for handler in node.handlers:
                    visit(handler.body, OPTIONAL)
                visit(node.orelse, status)
                visit(node.finalbody, status)
            elif isinstance(node, ast.If):
                visit(node.body, max(status, CONDITIONAL))
                visit(node.orelse, max(status, CONDITIONAL))
            elif isinstance(node, ast.With):
                visit(node.body, status)

    visit(ast.parse(path.read_text(encoding="utf-8", errors="replace")).body, REQUIRED)
    return found


def import_needs(site: Path, root: str = "unsloth") -> dict[str, int]:
    """Third-party top-level packages that `import <root>` reaches, read from the sources under `site` (unpacked
    wheels): {package: its least status over every path that reaches it}."""
    own = {p.name for p in site.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    needs: dict[str, int] = {}
    best: dict[str, int] = {}
    todo = [(root, REQUIRED)]
    while todo:
        module, status = todo.pop()
        if best.get(module, OPTIONAL + 1) <= status:
            continue
        best[module] = status
        parts = module.split(".")
        file = site.joinpath(*parts)
        file = file / "__init__.py" if file.is_dir() else file.with_suffix(".py")
        if not file.is_file():
            continue
        package = parts if file.name == "__init__.py" else parts[:-1]
        for name, level, found in module_imports(file):
            target = ".".join(package[: len(package) - level + 1] + ([name] if name else [])) if level else name
            top, reached = target.split(".")[0], max(status, found)
            if not top:
                continue
            if top in own:  # importing a.b.c runs a and a.b first
                todo.extend((".".join(target.split(".")[:i]), reached) for i in range(1, target.count(".") + 2))
            elif top not in sys.stdlib_module_names:
                needs[top] = min(needs.get(top, OPTIONAL), reached)
    return needs


def unpack(wheels: list[Path], into: Path) -> Path:
    import zipfile

    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(into)
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=DEST)
    parser.add_argument("--budget-mb", type=float, default=BUDGET_MB)
    parser.add_argument("--needs", type=Path, help="a folder holding the unsloth and unsloth_zoo wheels")
    args = parser.parse_args(argv)
    if args.needs:
        import tempfile

        wheels = sorted(args.needs.glob("unsloth*.whl"))
        if not wheels:
            print(f"gpu_wheels: {args.needs} holds no unsloth wheels; run `make gpu-wheels` first", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as tmp:
            needs = import_needs(unpack(wheels, Path(tmp)))
        for name, status in sorted(needs.items(), key=lambda kv: (kv[1], kv[0])):
            print(f"{STATUS[status]:12s} {name}")
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    done = download(args.dest)
    if done.returncode != 0:
        print(f"gpu_wheels: pip download failed: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    text, fits = report(sizes(args.dest), args.budget_mb)
    print(text)
    return 0 if fits else 1


if __name__ == "__main__":
    raise SystemExit(main())
