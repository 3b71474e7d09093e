"""Bad input, tried as a careless user would: every case ends in one sentence naming the file, the key or line, the
value and what was expected, a non-zero exit, and nothing written before the check. One test per category."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clo_lib.config.load import load_config
from clo_lib.config.schema import ConfigError

REPO = Path(__file__).resolve().parent.parent


def cli(*args, cwd=REPO):
    """`clo ARGS...` (as `python -m clo_lib`, the same entry point)."""
    return subprocess.run([sys.executable, "-m", "clo_lib", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def one_sentence(result, *needles):
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- grid files: every field is checked like the run config ------------------------------------------------------


def grid_file(tmp_path, **change):
    data = {"name": "g", "output_dir": str(tmp_path / "out"), "layers": ["params/presets/toy.yaml"],
            "models": {"toy": {}}, "slices": [{"languages": ["sw"], "methods": ["clo"], "sizes": [4]}], **change}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("change,needles", [
    ({"slices": [{"languages": ["sw"], "methods": ["clo"], "sizes": ["lots"]}]},
     ["slices[1].sizes = ['lots']", "a list of whole numbers ≥ 1"]),
    ({"slices": [{"languages": ["sw"], "methods": ["clo"], "sizes": [0]}]}, ["slices[1].sizes = [0]", "≥ 1"]),
    ({"slices": [{"languages": ["sw"], "methods": ["clo"], "sizes": [4], "seeds": [-1]}]},
     ["slices[1].seeds = [-1]", "whole numbers ≥ 0"]),
    ({"slices": [{"languages": [["sw"]], "methods": ["clo"], "sizes": [4]}]},
     ["slices[1].languages", "a list of language codes"]),
    ({"slices": [{"languages": ["sw"], "methods": ["clo"], "sizes": [4], "overrides": "train.lam=0.3"}]},
     ["slices[1].overrides = 'train.lam=0.3'", "a mapping"]),
    ({"models": {"toy": "meta-llama/Meta-Llama-3-8B"}}, ["models.toy = 'meta-llama/Meta-Llama-3-8B'", "mapping"]),
    ({"resources": {"train": 4}}, ["resources.train = 4", "a mapping"]),
    ({"prepare": [{"id": "w", "command": "python -m x", "done": "f"}]},
     ["prepare[1].command = 'python -m x'", "a list of words"]),
    ({"overrides": ["train.lam=0.3"]}, ["overrides = ['train.lam=0.3']", "a mapping"]),
    ({"base": "yes"}, ["base = 'yes'", "true or false"]),
    ({"overrides": {"train.lam": 0.3, "train.learning_rate": float("nan")}}, ["train.learning_rate = nan", "finite"]),
])
def test_bad_grid_fields(tmp_path, change, needles):
    result = cli("grid", "plan", str(grid_file(tmp_path, **change)))
    assert result.returncode == 2
    one_sentence(result, str(tmp_path / "g.yaml"), *needles)
    assert not (tmp_path / "out").exists()


# --- numbers: finite and in range -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layer,needles", [
    ({"train": {"lam": float("nan")}}, ["train.lam = nan", "a finite number"]),
    ({"train": {"learning_rate": float("inf")}}, ["train.learning_rate = inf", "a finite number"]),
    ({"train": {"beta": "-.inf"}}, ["train.beta", "a finite number"]),
])
def test_numbers_must_be_finite(layer, needles):
    with pytest.raises(ConfigError) as info:
        load_config({"language": "sw", **layer})
    assert all(n in str(info.value) for n in needles) and "\n" not in str(info.value)


# --- paths: missing, a folder, not UTF-8, a bad line -----------------------------------------------------------------


def test_config_paths(tmp_path):
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "latin1.yaml").write_bytes("language: sw\nname: caf\xe9\n".encode("latin-1"))
    one_sentence(cli("config", str(tmp_path / "folder.yaml")), "folder.yaml is a folder", "a YAML file")
    one_sentence(cli("config", str(tmp_path / "latin1.yaml")), "latin1.yaml is not UTF-8")
    one_sentence(cli("config", str(tmp_path / "nope.yaml")), "nope.yaml does not exist")


def test_data_and_prompt_paths(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt_en": "Hi", "prompt_tgt": "Habari"}\n{"prompt_en": "Bye", "prompt_t')
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"language": "sw", "model": {"name_or_path": "gpt2"},
                                   "eval": {"prompts": str(prompts)}}))
    one_sentence(cli("evaluate", str(run), "--run", str(tmp_path / "r")), "prompts.jsonl:2", "truncated")
    assert not (tmp_path / "r").exists()
    data = tmp_path / "run2.yaml"
    data.write_text(yaml.safe_dump({"language": "sw", "output_dir": str(tmp_path / "o"),
                                    "data": {"source": "jsonl", "path": str(tmp_path)}}))
    one_sentence(cli("translate", str(data)), "data.path", "is a folder", "JSON or JSONL file")


# --- model paths and ids: checked before anything loads ---------------------------------------------------------------


def test_model_paths_are_checked_before_loading(tmp_path):
    corpus = tmp_path / "parallel.jsonl"
    corpus.write_text(json.dumps({"id": 0, "lang": "sw", "prompt_en": "Q?", "response_en": "A.", "prompt_tgt": "S?",
                                  "response_tgt": "J."}) + "\n")
    for name, needles in (("outputs/nowhere/model", ["model.name_or_path = 'outputs/nowhere/model'", "no such folder"]),
                          (str(corpus), ["is a file", "a model folder"]),
                          (str(tmp_path), ["holds no config.json"])):
        run = tmp_path / "run.yaml"
        run.write_text(yaml.safe_dump({"language": "sw", "model": {"name_or_path": name}, "data": {"size": 1}}))
        one_sentence(cli("train", str(run), "--parallel", str(corpus), "--out", str(tmp_path / "out")),
                     *needles)
        assert not (tmp_path / "out").exists()


# --- output folders ---------------------------------------------------------------------------------------------------


def test_an_output_path_that_is_a_file(tmp_path, tiny_llama):
    corpus = tmp_path / "parallel.jsonl"
    corpus.write_text(json.dumps({"id": 0, "lang": "sw", "prompt_en": "Q?", "response_en": "A.", "prompt_tgt": "S?",
                                  "response_tgt": "J."}) + "\n")
    taken = tmp_path / "taken"
    taken.write_text("my notes")
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"language": "sw", "model": {"name_or_path": str(tiny_llama)},
                                   "data": {"size": 1}}))
    one_sentence(cli("train", str(run), "--parallel", str(corpus), "--out", str(taken)),
                 f"{taken} is a file", "a folder for the run")
    assert taken.read_text() == "my notes"


# --- notebook parameters: papermill's -p gives strings ---------------------------------------------------------


def test_notebook_parameters_given_as_strings():
    from clo_lib.config.load import notebook_config

    cfg = notebook_config("params/presets/toy.yaml", "train.method=sft, train.lam=0.3", language="ko")
    assert cfg.train.method == "sft" and cfg.train.lam == 0.3 and cfg.language == "ko"
    as_json = notebook_config('["params/presets/toy.yaml"]', '{"train.method": "clo"}', language="sw")
    assert as_json.train.method == "clo"
    with pytest.raises(ConfigError, match=r"config_files: params/presets/nope.yaml does not exist \(looked in "):
        notebook_config(["params/presets/nope.yaml"], {}, language="sw")
    with pytest.raises(ConfigError, match="overrides = 'train.method'; expected key=value pairs"):
        notebook_config(["params/presets/toy.yaml"], "train.method", language="sw")
