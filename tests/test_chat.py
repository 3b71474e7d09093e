"""`clo chat RUN`: a terminal chat in the run's prompt format, streaming, with /system and /quit."""

import subprocess
import sys
from pathlib import Path

import yaml

from clo_lib.config.load import load_config
from clo_lib.stages.chat import answer, chat_loop, load_run

REPO = Path(__file__).resolve().parents[1]


def run_folder(tmp_path, model_dir, prompt_format="template"):
    cfg = load_config({"language": "sw", "model": {"name_or_path": str(model_dir), "backend": "hf",
                                                   "dtype": "float32", "prompt_format": prompt_format},
                       "eval": {"max_new_tokens": 6}})
    run = tmp_path / f"run-{prompt_format}"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    return run


def test_answers_stream_as_the_evaluation_generates_them_and_quit_leaves(tmp_path, tiny_llama):
    cfg, model, tokenizer = load_run(run_folder(tmp_path, tiny_llama), model=str(tiny_llama))
    written = []
    lines = ["Ni nini 2 jumlisha 2?", "", "/system Jibu kwa Kiswahili.", "What is 2 plus 2?", "/quit", "never read"]
    assert chat_loop(model, tokenizer, cfg, iter(lines), written.append) == 2
    text = "".join(written)
    first = answer(model, tokenizer, cfg, "Ni nini 2 jumlisha 2?")
    assert text.startswith(first) and "which has no system message" in text  # a template run has none
    assert text.count("[") >= 2 and "never read" not in text


def test_a_chat_run_takes_a_system_message(tmp_path, tiny_llama):
    cfg, model, tokenizer = load_run(run_folder(tmp_path, tiny_llama, "chat"), model=str(tiny_llama))
    written = []
    chat_loop(model, tokenizer, cfg, iter(["/system Be brief.", "Hello?", "/system", "Hello?"]), written.append)
    assert "System message set." in "".join(written) and "System message cleared." in "".join(written)


def test_a_folder_that_is_no_run_or_has_no_model_gets_one_sentence(tmp_path, tiny_llama):
    def clo(*args):
        return subprocess.run([sys.executable, "-m", "clo_lib", "chat", *map(str, args)], cwd=REPO,
                              capture_output=True, text=True, input="/quit\n")

    done = clo(tmp_path)
    assert done.returncode == 2 and "is neither a run folder (no config.yaml) nor a config file" in done.stderr
    done = clo(run_folder(tmp_path, tiny_llama))
    assert done.returncode == 2 and "this run has no trained model yet" in done.stderr
    (tmp_path / "other").mkdir()
    done = clo(run_folder(tmp_path / "other", tiny_llama), "--model", tiny_llama)  # a base model, for a run
    assert done.returncode == 0 and done.stdout.startswith("Type a message (sw or English)")
