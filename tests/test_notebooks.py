"""The numbered notebooks run top to bottom under papermill, on the toy preset, offline: with their defaults after
a small `make demo`, from the repository root or notebooks/, and through Colab's setup path."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def make_kit(root: Path, world: Path) -> Path:
    """A sandbox laid out like a clone (clo_lib, params and notebooks linked from this checkout) whose
    outputs/toy/world is the session's small fixture world: a notebook's setup cell moves to the nearest folder
    holding clo_lib/, so everything it writes with its defaults lands here, never in the checkout (where
    toyworld.ensure_world once pretrained the full world during `make test`)."""
    kit = root / "kit"
    (kit / "outputs" / "toy").mkdir(parents=True)
    for name in ("clo_lib", "params"):
        (kit / name).symlink_to(REPO / name)
    # copied: a kernel started in a linked notebooks/ would find itself in this checkout's (getcwd resolves links)
    shutil.copytree(NOTEBOOKS, kit / "notebooks")
    (kit / "outputs" / "toy" / "world").symlink_to(world)
    return kit


@pytest.fixture
def kit(tmp_path, small_world):
    return make_kit(tmp_path, small_world)


def run_notebook(name, tmp_path, kit, **parameters):
    output = tmp_path / name
    pm.execute_notebook(str(kit / "notebooks" / name), str(output), parameters=parameters,
                        cwd=str(kit / "notebooks"), kernel_name="python3", progress_bar=False)
    return json.loads(output.read_text())


def test_01_translate_writes_the_corpus(tmp_path, kit):
    run_notebook("01_translate.ipynb", tmp_path, kit, language="de", output_dir=str(tmp_path / "outputs"),
                 overrides={"data.size": 12})
    rows = (tmp_path / "outputs" / "data" / "de" / "parallel.jsonl").read_text().splitlines()
    assert len(rows) == 12 and json.loads(rows[0])["lang"] == "de"


def test_01_translate_takes_papermill_p_strings(tmp_path, kit):
    """`papermill -p config_files params/presets/toy.yaml -p overrides 'data.size=6'` hands over strings."""
    run_notebook("01_translate.ipynb", tmp_path, kit, language="ko", output_dir=str(tmp_path / "outputs"),
                 config_files="params/presets/toy.yaml", overrides="data.size=6, translation.batch_size=2")
    assert len((tmp_path / "outputs" / "data" / "ko" / "parallel.jsonl").read_text().splitlines()) == 6


def test_01_translate_stops_on_bad_parameters_before_translating(tmp_path, kit):
    with pytest.raises(pm.PapermillExecutionError, match="train.lam"):
        run_notebook("01_translate.ipynb", tmp_path, kit, language="de", output_dir=str(tmp_path / "outputs"),
                     overrides={"train.lam": 3})
    assert not (tmp_path / "outputs").exists()


def test_03_evaluate_writes_metrics(tmp_path, tiny_llama, kit):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": 0, "prompt_en": "What color is the banana?", "prompt_tgt": "Ndizi ina rangi gani?"}\n')
    run_dir = tmp_path / "run"
    run_notebook("03_evaluate.ipynb", tmp_path, kit, language="sw", output_dir=str(tmp_path), run_dir=str(run_dir),
                 model_path=str(tiny_llama), method="base", reference_run="", base_run="",
                 overrides={"model.name_or_path": str(tiny_llama), "eval.prompts": str(prompts),
                            "eval.max_new_tokens": 4})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["method"] == "base" and "fidelity_tgt" in metrics["metrics"]


def test_02_train_trains_from_the_translated_corpus(tmp_path, tiny_llama, kit):
    from clo_lib.config.load import load_config
    from clo_lib.stages.translate import run_translate

    run_translate(load_config({"preset": "toy", "language": "sw", "output_dir": str(tmp_path / "out"),
                                 "data": {"size": 16}}), progress=False)
    run_dir = tmp_path / "run"
    run_notebook("02_train.ipynb", tmp_path, kit, language="sw", output_dir=str(tmp_path / "out"), run_dir=str(run_dir),
                 overrides={"model.name_or_path": str(tiny_llama), "data.size": 8, "train.epochs": 1,
                            "train.method": "clo", "train.batch_size": 4, "train.logging_steps": 1})
    log = json.loads((run_dir / "train_log.json").read_text())
    assert log["method"] == "clo" and log["stages"][-1]["steps"] == 4  # 16 preference rows, 4 a batch
    assert (run_dir / "model" / "config.json").is_file()


def _outputs(notebook: dict) -> tuple[str, int]:
    """All text a run notebook printed or displayed, and how many images it showed."""
    text, images = [], 0
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            text.append("".join(output.get("text", "")))
            data = output.get("data", {})
            text.append("".join(data.get("text/plain", "")) + "".join(data.get("text/markdown", "")))
            images += "image/png" in data
    return "\n".join(text), images


def test_every_notebook_runs_with_its_defaults_after_a_small_demo(tmp_path, small_world, monkeypatch):
    """A sandbox laid out like a clone after `make demo` (the toy world and a one-run slice of the demo grid), then
    01 -> 05 with no parameters at all, started in notebooks/ as Jupyter does."""
    from clo_lib.grid.expand import load_grid
    from clo_lib.grid.run import run_grid
    from clo_lib.grid.state import states

    kit = tmp_path / "kit"
    kit.mkdir()
    for name in ("clo_lib", "params"):
        (kit / name).symlink_to(REPO / name)
    shutil.copytree(NOTEBOOKS, kit / "notebooks")
    shutil.copytree(small_world, kit / "outputs" / "toy" / "world")  # a copy: this test's lesson builds beside it
    monkeypatch.chdir(kit)
    demo = yaml.safe_load((REPO / "params" / "grids" / "toy.yaml").read_text())
    world = kit / "outputs" / "toy" / "world"
    demo.pop("prepare")  # the world is there (pretrained briefly)
    demo.pop("search")  # the notebooks read the shared-budget runs; tests/test_grid.py runs a search
    demo["overrides"].update({"model.name_or_path": str(world / "base_model"), "data.path": str(world),
                              "eval.prompts": str(world / "eval_{lang}.jsonl"), "train.epochs": 1})
    demo["slices"] = [{"languages": ["sw"], "methods": ["sft", "clo"], "sizes": [64], "seeds": [0]}]
    grid_file = kit / "demo.yaml"
    grid_file.write_text(yaml.safe_dump(demo))
    assert run_grid(load_grid(grid_file), log=lambda message: None) == 0

    outputs = {}
    for name in ("01_translate", "02_train", "03_evaluate", "04_analyze", "05_transfer"):
        pm.execute_notebook(str(kit / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
                            cwd=str(kit / "notebooks"), kernel_name="python3", progress_bar=False)
        outputs[name] = _outputs(json.loads((tmp_path / f"{name}.ipynb").read_text()))

    assert (kit / "outputs" / "lesson" / "data" / "sw" / "parallel.jsonl").is_file()
    text, images = outputs["02_train"]
    assert "English prompt" in text and "target prompt" in text and "rejected" in text  # the pairs, both ways
    assert images == 1 and "~" in text and " MB:" in text  # the curves; the estimate in megabytes
    metrics = json.loads((kit / "outputs" / "lesson" / "clo-sw-n64" / "metrics.json").read_text())
    assert metrics["run"]["name"] == "clo-sw-n64" and metrics["run"]["size"] == 64  # from the run's config.yaml
    assert "winrate_vs_sft_tgt" in metrics["metrics"] and metrics["details"]["generation_seconds"] > 0
    text, _ = outputs["03_evaluate"]
    assert "judged against outputs/toy/toy-sw-sft-n64-s0" in text
    for column in ("base lang", "SFT lang", "this run lang", "expected"):
        assert column in text
    text, images = outputs["04_analyze"]
    report = (kit / "outputs" / "toy" / "report.md").read_text()
    assert "## Glossary" in report and "## Example answers" in report and images >= 2
    assert {"winrates.png", "language_vs_english.png"} <= {p.name for p in (kit / "outputs/toy/figures").iterdir()}
    text, images = outputs["05_transfer"]
    transfers = kit / "outputs" / "lesson" / "transfer-sw" / "transfer"
    assert sorted(p.name for p in transfers.iterdir()) == [f"{m}-sw-s0" for m in ("focus", "mean", "multivariate",
                                                                                   "salt")]
    assert all((transfers / f / "model" / "config.json").is_file() for f in ("salt-sw-s0", "mean-sw-s0"))
    assert "the donor's" in text and "k (neighbours)" in text and "steps to mean's end" in text and images == 1
    grid = load_grid(grid_file)  # the lesson wrote beside the demo, never into it
    assert set(states(list(grid.stages.values())).values()) == {"done"}


def test_the_colab_setup_cell_clones_the_kit_and_moves_into_it(tmp_path):
    """On Colab (google.colab imported), the first code cell after the parameters clones CLO_KIT_REPO into
    CLO_KIT_HOME and works from there; the dependencies are present here, so nothing is installed."""
    if subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("the repository is not a git checkout to clone from")
    setup = "".join(json.loads((NOTEBOOKS / "01_translate.ipynb").read_text())["cells"][2]["source"])
    script = ("import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n" + setup +
              "\nimport clo_lib\nprint(os.getcwd())\n")
    home = tmp_path / "content" / "clo-kit"
    env = {**os.environ, "CLO_KIT_HOME": str(home), "CLO_KIT_REPO": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(home) and (home / "params" / "presets").is_dir()
