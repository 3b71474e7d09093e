"""clo_lib.config.schema: paper defaults, layering, and one clear sentence for each kind of bad config."""

import subprocess
import sys
from pathlib import Path

import pytest

from clo_lib.config.load import load_config, parse_overrides, save_config
from clo_lib.config.schema import PARAMS_DIR, ConfigError, RunConfig, describe, describe_markdown

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_papers():
    cfg = load_config({"language": "sw"})
    assert cfg.train.lam == 0.5
    assert cfg.train.beta == 0.1
    assert cfg.train.trainable == "attention"
    assert cfg.train.attention_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.train.nll_sides == ["tgt"] and cfg.train.dpo_sides == ["en", "tgt"]
    assert cfg.translation.model == "facebook/m2m100_1.2B"
    assert cfg.data.source == "oasst1" and cfg.data.size == 6400
    assert (cfg.train.learning_rate, cfg.train.epochs, cfg.train.warmup_ratio) == (8e-6, 2.0, 0.1)


def test_every_field_is_described():
    rows = describe()
    assert len(rows) > 40
    for key, _type, _default, help_text in rows:
        assert help_text.strip(), key


def test_reference_doc_is_current():
    assert (PARAMS_DIR / "REFERENCE.md").read_text() == describe_markdown(), (
        "params/REFERENCE.md is stale: run `clo config --describe > params/REFERENCE.md`")


@pytest.mark.parametrize("preset", ["paper", "colab", "toy"])
def test_presets_load(preset):
    cfg = load_config(PARAMS_DIR / "presets" / f"{preset}.yaml", {"language": "ko"})
    assert isinstance(cfg, RunConfig) and cfg.language == "ko"


def test_layers_override_in_order_and_preset_key_is_followed(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("preset: colab\nlanguage: yo\ntrain:\n  lam: 0.3\n")
    cfg = load_config(run, {"train": {"beta": 0.2}}, overrides=["train.lam=0.25", "data.size=200"])
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-0.5B"  # from colab
    assert cfg.train.learning_rate == 8e-6  # from paper, which colab names
    assert cfg.train.beta == 0.2 and cfg.train.lam == 0.25 and cfg.data.size == 200
    assert cfg.train.batch_size == 4  # colab overrides paper's 8, nested keys merge rather than replace


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(PARAMS_DIR / "presets" / "toy.yaml", {"language": "de"})
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_yaml_style_exponent_is_read_as_a_number():
    # PyYAML reads `8e-6` (no dot) as a string; a float field takes it as the number it means.
    assert load_config({"language": "sw", "train": {"learning_rate": "8e-6"}}).train.learning_rate == 8e-6


BAD = [
    ({"language": "sw", "train": {"lamda": 0.5}}, "train.lamda", "did you mean train.lam"),
    ({"language": "sw", "trian": {}}, "trian", "did you mean train"),
    ({"language": "sw", "train": {"lam": 1.5}}, "train.lam = 1.5", "[0.0, 1.0]"),
    ({"language": "sw", "train": {"lam": -0.1}}, "train.lam = -0.1", "[0.0, 1.0]"),
    ({"language": "sw", "train": {"beta": 0}}, "train.beta = 0", "> 0.0"),
    ({"language": "sw", "train": {"beta": -1.0}}, "train.beta = -1.0", "> 0.0"),
    ({"language": "sw", "data": {"size": 0}}, "data.size = 0", "≥ 1"),
    ({"language": "sw", "data": {"size": -200}}, "data.size = -200", "≥ 1"),
    ({"language": "sw", "data": {"size": "many"}}, "data.size = 'many'", "an integer"),
    ({"language": "sw", "data": {"size": 6.5}}, "data.size = 6.5", "an integer"),
    ({"language": "sw", "train": {"lam": "half"}}, "train.lam = 'half'", "a finite number"),
    ({"language": "sw", "train": {"gradient_checkpointing": "yes"}}, "gradient_checkpointing = 'yes'", "true or false"),
    ({"language": "sw", "train": {"method": "dpo"}}, "train.method = 'dpo'", "one of sft, sft_eng"),
    ({"language": "sw", "train": {"trainable": "attn"}}, "train.trainable = 'attn'", "attention"),
    ({"language": "sw", "model": {"backend": "vllm"}}, "model.backend = 'vllm'", "auto, hf, unsloth"),
    ({"language": "xx"}, "language = 'xx'", "a known language code"),
    ({"language": "swa"}, "language = 'swa'", "did you mean sw"),
    ({"language": "en"}, "language = 'en'", "other than English"),
    ({}, "language is missing", "target language code"),
    ({"language": "sw", "train": {"batch_size": 7}}, "train.batch_size = 7", "even"),
    ({"language": "sw", "train": {"method": "sft_dpo", "batch_size": 5}}, "train.batch_size = 5", "even number for"),
    ({"language": "sw", "train": {"nll_sides": ["target"]}}, "train.nll_sides = ['target']", "sides out of en, tgt"),
    ({"language": "sw", "train": {"dpo_sides": "both"}}, "train.dpo_sides = 'both'", "a list of str"),
    ({"language": "sw", "train": {"nll_on": "both"}}, "unknown key train.nll_on", "renamed: use train.nll_sides"),
    ({"language": "sw", "train": {"save": "weights"}}, "train.save = 'weights'", "full, trainable"),
    ({"language": "sw", "train": "fast"}, "train = 'fast'", "a mapping"),
    ({"language": "sw", "train": {"attention_modules": "q_proj"}}, "attention_modules = 'q_proj'", "a list of str"),
    ({"language": "sw", "model": {"prompt_template": "Q: {question}"}}, "prompt_template", "{prompt} slot"),
    ({"language": "sw", "data": {"size": 400, "pool_size": 200}}, "data.pool_size = 200", "at least data.size"),
    ({"language": "sw", "eval": {"mc_tasks": {"klingon": ["mmlu"]}}}, "eval.mc_tasks.klingon", "language code"),
]


@pytest.mark.parametrize("config,names,expects", BAD, ids=[b[1] for b in BAD])
def test_bad_config_names_key_value_and_expectation(config, names, expects):
    with pytest.raises(ConfigError) as info:
        load_config(config)
    message = str(info.value)
    assert names in message and expects in message
    assert message.count("\n") == 0  # one sentence, one line


def test_secret_in_key_field_is_refused_and_not_echoed():
    with pytest.raises(ConfigError) as info:
        load_config({"language": "sw", "eval": {"judge_api_key_env": "sk-live-123456"}})
    assert "eval.judge_api_key_env" in str(info.value) and "environment variable" in str(info.value)
    assert "sk-live" not in str(info.value)


def test_error_names_the_file_that_set_the_key(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("language: sw\n")
    bad.write_text("train:\n  beta: -1\n")
    with pytest.raises(ConfigError, match=f"^{bad}: train.beta = -1"):
        load_config(good, bad)


@pytest.mark.parametrize("text,expects", [
    ("train: [unclosed\n", "is not valid YAML at line"),
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("- a\n- b\n", "holds a list; expected a mapping"),
    ("preset: nonexistent\nlanguage: sw\n", "preset = 'nonexistent' names no preset"),
])
def test_bad_yaml_files(tmp_path, text, expects):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expects in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lam"])


def test_cli_prints_one_line_and_no_traceback(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("language: sw\ntrain:\n  lam: 3\n")
    result = subprocess.run([sys.executable, "-m", "clo_lib", "config", str(path)], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    expected = f"error: {path}: train.lam = 3; expected a number in [0.0, 1.0]."
    assert result.stderr.strip().splitlines() == [expected]


def test_cli_prints_resolved_config(tmp_path):
    result = subprocess.run([sys.executable, "-m", "clo_lib", "config", "params/presets/toy.yaml", "--set",
                             "language=id"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "language: id" in result.stdout and "backend: toy" in result.stdout


@pytest.mark.parametrize("text,line,key", [
    ("language: sw\ntrain:\n  lam: 0.3\n  beta: 0.1\n  lam: 0.7\n", 5, "train.lam"),
    ("language: sw\nlanguage: de\n", 2, "language"),
])
def test_a_key_given_twice_is_refused_naming_file_line_and_key(tmp_path, text, line, key):
    """YAML lets the last of two equal keys win silently; a run config with train.lam twice trained on one of them
    without a word."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and f"line {line}" in message and key in message and "twice" in message


def test_the_judge_help_gives_the_order_the_judges_apply():
    """Both judges decide by the prompt's language first, then by the right answer (evaluate.language_verdict
    comes before is_correct); the help text once said the reverse."""
    help_text = {key: text for key, _, _, text in describe()}["eval.judge"]
    assert help_text.index("language first") < help_text.index("then the right answer")
