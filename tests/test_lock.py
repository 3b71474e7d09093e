"""The locked package set (requirements.lock) agrees with pyproject.toml's ranges, and every install path uses it."""

from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCKED_EXTRAS = ("dev", "notebooks")  # what `make demo`, `make test` and `make notebooks` install


def read_lock(path: Path = REPO / "requirements.lock") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def disagreements(project: dict, pins: dict[str, str]) -> list[str]:
    """Every dependency of the locked extras whose pin is missing or outside its range in pyproject.toml."""
    wanted = project["dependencies"] + [d for extra in LOCKED_EXTRAS for d in project["optional-dependencies"][extra]]
    found = []
    for text in wanted:
        requirement = Requirement(text)
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            found.append(f"{requirement.name} has no pin")
        elif not requirement.specifier.contains(pin, prereleases=True):
            found.append(f"{requirement.name}=={pin} is outside {requirement.specifier}")
    return found


def test_every_dependency_is_pinned_inside_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert disagreements(project, read_lock()) == []


def test_the_gpu_stack_lock_holds_what_the_gpu_extra_resolves_to_inside_the_ranges():
    """requirements-gpu.lock (make test-gpu-stack): the versions unsloth 2026.10.9 lets `.[gpu]` resolve to, and
    every other pin of the dev extra inside pyproject's ranges as well."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = read_lock(REPO / "requirements-gpu.lock")
    assert {name: pins[name] for name in ("transformers", "trl", "datasets")} == {
        "transformers": "5.17.0", "trl": "1.14.2", "datasets": "4.8.5"}
    assert pins["torch"] == read_lock()["torch"]  # the CPU build, as in the main lock
    dev_only = {**project, "optional-dependencies": {**project["optional-dependencies"], "notebooks": []}}
    assert disagreements(dev_only, pins) == []
    assert "make test-gpu-stack" in (REPO / ".ci" / "run").read_text()


def test_a_pin_outside_its_range_or_a_missing_pin_is_caught(tmp_path):
    """The check itself can fail: a lock whose trl is the excluded 1.15.0 and that lacks pandas."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {name: version for name, version in read_lock().items() if name != "pandas"}
    pins["trl"] = "1.15.0"
    found = disagreements(project, pins)
    assert "trl==1.15.0 is outside !=1.15.0,<2,>=1.13" in found and "pandas has no pin" in found


def test_make_and_conda_install_from_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "LOCK        ?= requirements.lock" in makefile and makefile.count("$(if $(LOCK),-c $(LOCK))") >= 3
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert "-c requirements.lock" in pip_section
    assert f"python={read_python_version()}" in [d for d in env["dependencies"] if isinstance(d, str)]


def read_python_version() -> str:
    """The Python the lock was made on, as environment.yml names it (major.minor)."""
    head = (REPO / "requirements.lock").read_text().split("Python ", 1)[1]
    return ".".join(head.split(",")[0].split(".")[:2])
