"""Fingerprints cover what a path points to, not only the path: a rebuilt model, an edited prompt file or another
starting model at the same path makes what was made from it stale."""

import shutil

from clo_lib.artifacts.provenance import (
    evaluate_fingerprint,
    matches,
    path_digest,
    stage_fingerprint,
    train_fingerprint,
)
from clo_lib.config.load import load_config


def cfg_for(model, **extra):
    return load_config({"language": "sw", "model": {"name_or_path": str(model)}, **extra})


def test_init_from_outside_a_kit_run_is_fingerprinted_by_its_content(tmp_path, tiny_model_dir):
    """Two different starting models at one path once gave one fingerprint, and the second was never trained."""
    start = tmp_path / "start"
    shutil.copytree(tiny_model_dir("llama"), start)
    cfg = cfg_for(tiny_model_dir("llama"), train={"init_from": str(start)})
    first = train_fingerprint(cfg, [])
    shutil.rmtree(start)
    shutil.copytree(tiny_model_dir("qwen2"), start)
    second = train_fingerprint(cfg, [])
    assert first["paths"]["train.init_from"] and first != second and not matches(first, second)


def test_a_rebuilt_base_model_and_an_edited_prompt_file_make_their_stages_stale(tmp_path, tiny_llama):
    model = tmp_path / "base_model"
    shutil.copytree(tiny_llama, model)
    prompts = tmp_path / "eval_sw.jsonl"
    prompts.write_text('{"id": 0, "prompt_en": "Hi there, friend?", "prompt_tgt": "Habari rafiki?"}\n')
    cfg = cfg_for(model, eval={"prompts": str(tmp_path / "eval_{lang}.jsonl")})
    trained, evaluated = train_fingerprint(cfg, []), evaluate_fingerprint(cfg, None, None)
    assert evaluated["paths"]["eval.prompts"] == path_digest(prompts)
    prompts.write_text('{"id": 0, "prompt_en": "Hi there, pal?", "prompt_tgt": "Habari rafiki?"}\n')
    assert not matches(evaluated, evaluate_fingerprint(cfg, None, None))
    assert matches(trained, train_fingerprint(cfg, []))  # the same model: nothing to redo
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:-4] + b"\x00\x00\x00\x01")
    assert not matches(trained, train_fingerprint(cfg, []))


def test_a_path_not_on_this_machine_is_not_compared(tmp_path):
    """A hub id has no local content (its revision is in the config); nor has a world not built yet."""
    cfg = cfg_for("meta-llama/Meta-Llama-3-8B", data={"source": "toy", "path": str(tmp_path / "world")})
    fingerprint = stage_fingerprint(cfg, "translate")
    assert fingerprint["paths"] == {"data.path": None, "translation.model": None}
    assert matches({"config": fingerprint["config"], "paths": {"data.path": "abc"}}, fingerprint)


def test_large_files_are_sampled_and_still_tell_a_change(tmp_path, monkeypatch):
    from clo_lib.artifacts import provenance

    monkeypatch.setattr(provenance, "WHOLE_FILE_BYTES", 1024)
    monkeypatch.setattr(provenance, "SAMPLE_BYTES", 64)
    weights = tmp_path / "w.bin"
    data = bytearray(range(256)) * 64  # 16 KiB
    weights.write_bytes(bytes(data))
    before = path_digest(weights)
    data[8000] ^= 1  # inside a sampled block: (16384 - 64) * 7 // 15 = 7616 .. 7680 is one; 8000 is not
    data[(16384 - 64) * 8 // 15 + 3] ^= 1
    weights.write_bytes(bytes(data))
    assert path_digest(weights) != before
