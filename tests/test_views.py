"""What the notebooks show: the CLO pairs per direction, the logged curves, answers side by side; and the config
03_evaluate builds from a trained run's own config.yaml."""

import json

import pytest

from clo_lib.config.load import load_config, notebook_config, save_config
from clo_lib.config.schema import ConfigError
from clo_lib.stages.results import side_by_side
from clo_lib.views import pairs_table, run_folder, training_curves

RECORD = {"id": "r1", "lang": "sw", "prompt_en": "What color is the banana?", "response_en": "The banana is yellow.",
          "prompt_tgt": "Ndizi ina rangi gani?", "response_tgt": "Ndizi ina rangi ya njano."}


def test_the_pairs_table_shows_each_direction_with_the_other_language_rejected():
    table = pairs_table([RECORD, {**RECORD, "id": "r2"}], n=1)
    assert table.to_dict("records") == [
        {"record": "r1", "side": "English prompt", "prompt": "What color is the banana?",
         "chosen": "The banana is yellow.", "rejected": "Ndizi ina rangi ya njano."},
        {"record": "r1", "side": "target prompt", "prompt": "Ndizi ina rangi gani?",
         "chosen": "Ndizi ina rangi ya njano.", "rejected": "The banana is yellow."}]


def test_training_curves_take_every_logged_point_of_every_stage():
    log = {"stages": [
        {"stage": "sft", "log_history": [{"loss": 2.0, "step": 1}, {"loss": 1.5, "step": 2}, {"train_loss": 1.7}]},
        {"stage": "preference", "log_history": [
            {"loss": 0.9, "nll": 1.1, "dpo": 0.69, "en/rewards_margin": -0.2, "tgt/rewards_margin": 0.5,
             "en/rewards_accuracy": 0.0, "tgt/rewards_accuracy": 1.0, "step": 1}]}]}
    frame = training_curves(log)
    assert len(frame) == 2 + 7
    sft = frame[frame["stage"] == "sft"]
    assert list(sft["value"]) == [2.0, 1.5] and set(sft["curve"]) == {"total loss"}
    margin = frame[(frame["panel"].str.startswith("reward margin")) & (frame["curve"] == "English prompt")]
    assert list(margin["value"]) == [-0.2]


def test_side_by_side_marks_language_and_correctness_and_names_what_is_missing():
    cfg = load_config({"language": "sw"})
    prompts = [{"id": "p1", "prompt_en": "What color is the banana?", "prompt_tgt": "Ndizi ina rangi gani?",
                "answer_en": "The banana is yellow.", "answer_tgt": "Ndizi ina rangi ya njano."}]
    ours = [{"id": "p1", "side": "tgt", "answer": "Ndizi ina rangi ya njano."},
            {"id": "p1", "side": "en", "answer": "The banana is green, I am quite sure of that."}]
    table = side_by_side(prompts, {"base": None, "this run": ours}, cfg, n=1)
    target, english = table.to_dict("records")
    assert target["this run"] == "Ndizi ina rangi ya njano." and target["this run ok"] == "✓"
    assert target["this run lang"] == "sw" and target["expected"] == "Ndizi ina rangi ya njano."
    assert english["this run lang"] == "en" and english["this run ok"] == "✗"
    assert "base" not in table.columns and table.attrs["caption"].endswith("not evaluated yet: base")


def test_run_folder_fills_the_template_from_the_run():
    cfg = load_config({"language": "ko", "seed": 2, "data": {"size": 32}})
    assert str(run_folder("outputs/toy/toy-{lang}-sft-n{size}-s{seed}", cfg)) == "outputs/toy/toy-ko-sft-n32-s2"
    assert run_folder("", cfg) is None


def test_evaluation_reads_the_runs_own_config_and_the_notebooks_eval_settings(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config({"language": "de", "name": "mine", "seed": 3, "data": {"size": 16},
                             "eval": {"max_new_tokens": 7}}), run / "config.yaml")
    layer = tmp_path / "eval.yaml"
    layer.write_text("language: sw\ndata:\n  size: 64\neval:\n  max_new_tokens: 24\n")
    cfg = notebook_config([str(layer)], {"eval.batch_size": 3}, run_dir=run, language="", output_dir="x")
    assert (cfg.language, cfg.name, cfg.seed, cfg.data.size) == ("de", "mine", 3, 16)  # the run's, not the layer's
    assert (cfg.eval.max_new_tokens, cfg.eval.batch_size) == (24, 3)  # the notebook's evaluation settings
    with pytest.raises(ConfigError, match="language = sw, but the run in .* was trained on de"):
        notebook_config([str(layer)], {}, run_dir=run, language="sw")
    without = notebook_config([str(layer)], {}, run_dir=tmp_path / "base", language="")  # no config.yaml: layers
    assert (without.language, without.data.size) == ("sw", 64)
    assert json.loads(json.dumps(cfg.to_dict()))["name"] == "mine"
