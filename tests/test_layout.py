"""The kit's shape: README's two commands, environment.yml mirroring pyproject.toml, clean notebooks."""

import json
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parent.parent


def test_readme_opens_with_the_two_commands():
    head = "\n".join((REPO / "README.md").read_text().splitlines()[:15])
    assert "make demo" in head and "make test" in head


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    listed = {req.split("  #")[0].strip() for req in pip_section}
    wanted = [d for d in project["dependencies"] if not d.startswith("torch")]
    wanted += project["optional-dependencies"]["notebooks"] + project["optional-dependencies"]["dev"]
    missing = [d for d in wanted if d not in listed]
    assert not missing, f"environment.yml lacks {missing}: keep it in step with pyproject.toml"
    torch_pin = next(d for d in pip_section if d.startswith("torch"))
    assert "torch>=2.4,<3" in project["dependencies"] and torch_pin.startswith("torch==2.13.0")


def test_trl_range_excludes_the_release_that_crashes_on_cpu():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    trl = next(d for d in deps if d.startswith("trl"))
    assert "!=1.15.0" in trl


def test_committed_notebooks_are_clean_and_parameterized():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        notebook = json.loads(path.read_text())
        assert notebook["metadata"]["kernelspec"]["name"] == "python3", path
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{path} has outputs"
        tagged = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path} needs exactly one cell tagged parameters"


def test_every_notebook_opens_in_colab_and_sets_itself_up_the_same_way():
    """A Colab badge naming the notebook itself, the same setup cell right after the parameters, and both naming
    the repository that pyproject.toml names."""
    repo_url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    owner_name = repo_url.removeprefix("https://github.com/")
    setups = set()
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        title = "".join(cells[0]["source"])
        assert f"colab.research.google.com/github/{owner_name}/blob/main/notebooks/{path.name}" in title, path
        assert "drive.mount" in title, f"{path}: the Drive note"
        assert "parameters" in cells[1]["metadata"].get("tags", []), path
        setup = "".join(cells[2]["source"])
        assert '"google.colab" in sys.modules' in setup and repo_url in setup, path
        setups.add(setup)
    assert len(setups) == 1, "the notebooks' setup cells differ"


def test_the_suite_notices_a_file_written_into_the_checkout(tmp_path):
    """conftest.py compares the checkout before and after the session and fails the run when a test wrote into it;
    the comparison itself sees an added, a removed and a changed file, and not the venv or caches."""
    from conftest import checkout_changes, checkout_files

    (tmp_path / "outputs").mkdir()
    (tmp_path / "kept.txt").write_text("a")
    (tmp_path / "gone.txt").write_text("b")
    (tmp_path / "edited.txt").write_text("c")
    before = checkout_files(tmp_path)
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "edited.txt").write_text("cc")
    (tmp_path / "outputs" / "world.json").write_text("{}")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "x").write_text("ignored")
    assert checkout_changes(before, checkout_files(tmp_path)) == [
        "added outputs/world.json", "changed edited.txt", "removed gone.txt"]
