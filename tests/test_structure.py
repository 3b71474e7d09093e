"""The package's shape (docs/layout.md): layers in pipeline order, no cycles, the toy world at the edge, honest
headers, short modules and functions, each paper's math in one small file, one CLI with one error format."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "clo_lib"
LAYER = {"common": 0, "method": 1, "config": 2, "artifacts": 3, "modeling": 4, "mt": 4, "stages": 5, "grid": 6,
         "views": 6, "studies": 7, "demo": 7, "toy": 7, "cli": 8, "__main__": 8}
MATH = ["method/loss.py", "method/pairs.py", "method/joint.py", "method/salt.py"]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYER[parts[1]] if len(parts) > 1 else -1


def kit_imports(path: Path, top_only: bool | None = None) -> list[tuple[str, int]]:
    """(module, line) for each import of a clo_lib module in `path`; top_only True/False: only those at module
    level / only those inside functions or classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if top_only is not None and (id(node) in top) != top_only:
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]
        found += [(name, node.lineno) for name in names if name.split(".")[0] == "clo_lib"]
    return found


def edges() -> dict[str, set[str]]:
    return {name: {m for m, _ in kit_imports(path) if m != name} for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert all(layer(name) >= 0 for name in MODULES if name != "clo_lib"), sorted(MODULES)


def test_modules_import_only_their_own_layer_or_lower_ones():
    wrong = [f"{a} (L{layer(a)}) imports {b} (L{layer(b)})" for a, targets in edges().items() for b in targets
             if b in MODULES and b != "clo_lib" and a != "clo_lib" and layer(b) > layer(a)]
    assert not wrong, wrong


def test_no_import_cycles():
    graph = edges()
    seen, cycles = {}, []

    def visit(node, trail):
        if seen.get(node) == "done":
            return
        if node in trail:
            cycles.append(trail[trail.index(node):] + [node])
            return
        for target in graph.get(node, ()):
            visit(target, trail + [node])
        seen[node] = "done"

    for node in graph:
        visit(node, [])
    assert not cycles, cycles


def test_nothing_but_the_toy_world_imports_it():
    """The toy translator and data source are reached by name (clo_lib.common.registry), so the real pipeline
    never imports the toy world."""
    wrong = [f"{a} imports {b}" for a, targets in edges().items() for b in targets
             if b.startswith("clo_lib.toy") and not a.startswith("clo_lib.toy")]
    assert not wrong, wrong


def test_the_kits_imports_are_in_the_headers():
    inside = [f"{MODULES[name].relative_to(REPO)}:{line} imports {module}" for name in MODULES
              for module, line in kit_imports(MODULES[name], top_only=False)]
    assert not inside, inside


def test_modules_and_functions_are_short():
    long_modules = [f"{p.relative_to(REPO)}: {n} lines" for p in MODULES.values()
                    if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500]
    long_functions = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: "
                                      f"{node.end_lineno - node.lineno + 1} lines")
    assert not long_modules and not long_functions, long_modules + long_functions


@pytest.mark.parametrize("name", MATH)
def test_each_papers_math_is_one_small_file_of_tensors_and_strings(name):
    path = PACKAGE / name
    assert len(path.read_text(encoding="utf-8").splitlines()) < 200
    imported = {module for module, _ in kit_imports(path)}
    assert all(m.startswith(("clo_lib.common", "clo_lib.method")) for m in imported), imported


def test_user_errors_share_one_base_class():
    from clo_lib.common.errors import CloError

    found = []
    for name in MODULES:
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        found += [(name, node.name) for node in tree.body if isinstance(node, ast.ClassDef)
                  and node.name.endswith("Error")]
    assert len(found) >= 10
    import importlib

    not_user = [f"{m}.{c}" for m, c in found if not issubclass(getattr(importlib.import_module(m), c), CloError)]
    assert not not_user, not_user


def test_clo_lists_every_command_and_prints_a_user_error_as_one_line(tmp_path):
    from clo_lib.cli import COMMANDS

    listing = subprocess.run([sys.executable, "-m", "clo_lib", "--help"], capture_output=True, text=True,
                             cwd=REPO, timeout=120)
    assert listing.returncode == 0 and all(f"  {name} " in listing.stdout for name in COMMANDS)
    bad = tmp_path / "run.yaml"
    bad.write_text("preset: toy\nlanguage: sw\ntrain:\n  lam: 1.5\n")
    result = subprocess.run([sys.executable, "-m", "clo_lib", "config", str(bad)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "train.lam = 1.5" in result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_every_command_has_help():
    from clo_lib.cli import COMMANDS, parser_for

    for name in COMMANDS:
        parser, module = parser_for(name)
        assert parser.description and callable(module.command), name


def test_the_console_script_is_declared():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"clo": "clo_lib.cli:main"}


def test_importing_the_pipeline_does_not_import_the_toy_world():
    """At run time too: every module but the edge (toy/, the CLI, the demo) imports without clo_lib.toy."""
    modules = [name for name in MODULES if layer(name) < 7 and name != "clo_lib"]
    script = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "print(sorted(m for m in sys.modules if m.startswith('clo_lib.toy')))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_readme_is_short_and_its_pages_links_resolve():
    """The README reads in five minutes; the rest is in docs/, and no relative link points nowhere."""
    import re

    assert len((REPO / "README.md").read_text(encoding="utf-8")) < 15_000
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "notebooks" / "README.md"]
    broken = [f"{page.relative_to(REPO)} -> {target}" for page in pages
              for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8"))
              if not target.startswith(("http://", "https://")) and not (page.parent / target).exists()]
    assert not broken, broken


def test_no_module_imports_another_modules_private_names():
    """A name with a leading underscore is its module's own: one another module needs is public (docs/layout.md)."""
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clo_lib"):
                found += [f"{path.relative_to(REPO)}:{node.lineno} imports {node.module}.{alias.name}"
                          for alias in node.names if alias.name.startswith("_") and node.module != name]
    assert not found, found
