"""The numbered notebooks run top to bottom under papermill, on the toy preset, offline."""

import json
from pathlib import Path

import papermill as pm
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name, tmp_path, **parameters):
    output = tmp_path / name
    pm.execute_notebook(str(NOTEBOOKS / name), str(output), parameters=parameters, cwd=str(NOTEBOOKS),
                        kernel_name="python3", progress_bar=False)
    return json.loads(output.read_text())


def test_01_translate_writes_the_corpus(tmp_path):
    run_notebook("01_translate.ipynb", tmp_path, language="de", output_dir=str(tmp_path / "outputs"),
                 overrides={"data.size": 12})
    rows = (tmp_path / "outputs" / "data" / "de" / "parallel.jsonl").read_text().splitlines()
    assert len(rows) == 12 and json.loads(rows[0])["lang"] == "de"


def test_01_translate_takes_papermill_p_strings(tmp_path):
    """`papermill -p config_files params/presets/toy.yaml -p overrides 'data.size=6'` hands over strings."""
    run_notebook("01_translate.ipynb", tmp_path, language="ko", output_dir=str(tmp_path / "outputs"),
                 config_files="params/presets/toy.yaml", overrides="data.size=6, translation.batch_size=2")
    assert len((tmp_path / "outputs" / "data" / "ko" / "parallel.jsonl").read_text().splitlines()) == 6


def test_01_translate_stops_on_bad_parameters_before_translating(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="train.lam"):
        run_notebook("01_translate.ipynb", tmp_path, language="de", output_dir=str(tmp_path / "outputs"),
                     overrides={"train.lam": 3})
    assert not (tmp_path / "outputs").exists()


def test_03_evaluate_writes_metrics(tmp_path, tiny_llama):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": 0, "prompt_en": "What color is the banana?", "prompt_tgt": "Ndizi ina rangi gani?"}\n')
    run_dir = tmp_path / "run"
    run_notebook("03_evaluate.ipynb", tmp_path, language="sw", output_dir=str(tmp_path), run_dir=str(run_dir),
                 model_path=str(tiny_llama), method="base",
                 overrides={"model.name_or_path": str(tiny_llama), "eval.prompts": str(prompts),
                            "eval.max_new_tokens": 4})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["method"] == "base" and "fidelity_tgt" in metrics["metrics"]


def test_02_train_trains_from_the_translated_corpus(tmp_path, tiny_llama):
    from clo_lib.config import load_config
    from clo_lib.translate import run_translation

    run_translation(load_config({"preset": "toy", "language": "sw", "output_dir": str(tmp_path / "out"),
                                 "data": {"size": 16}}), progress=False)
    run_dir = tmp_path / "run"
    run_notebook("02_train.ipynb", tmp_path, language="sw", output_dir=str(tmp_path / "out"), run_dir=str(run_dir),
                 overrides={"model.name_or_path": str(tiny_llama), "data.size": 8, "train.epochs": 1,
                            "train.method": "clo", "train.batch_size": 4, "train.logging_steps": 1})
    log = json.loads((run_dir / "train_log.json").read_text())
    assert log["method"] == "clo" and log["stages"][-1]["steps"] == 4  # 16 preference rows, 4 a batch
    assert (run_dir / "model" / "config.json").is_file()
