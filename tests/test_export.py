"""`clo export RUN --to DIR`: every form of a run's model/ becomes a folder that from_pretrained loads alone and
that answers as the run does."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from clo_lib.config.load import load_config
from clo_lib.method.pairs import format_prompt
from clo_lib.modeling.models import load_model_and_tokenizer
from clo_lib.stages.export import export_folder, template_chat
from clo_lib.stages.train import run_train

REPO = Path(__file__).resolve().parents[1]


def records(n):
    return [{"id": i, "lang": "sw", "prompt_en": f"What is {i} plus {i}?", "response_en": f"It is {2 * i}.",
             "prompt_tgt": f"Ni nini {i} jumlisha {i}?", "response_tgt": f"Ni {2 * i}."} for i in range(n)]


def trained_run(tmp_path, model_dir, **train):
    cfg = load_config({"language": "sw", "model": {"name_or_path": str(model_dir), "backend": "hf",
                                                   "dtype": "float32", "max_length": 64},
                       "train": {"method": "clo", "epochs": 1, "batch_size": 4, "learning_rate": 1e-3, **train}})
    run = tmp_path / "run"
    run_train(cfg, run, records(8))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (run / "model_card.md").write_text("---\nlicense: mit\n---\n# card\n")
    return cfg, run


@pytest.mark.parametrize("train", [{}, {"save": "trainable"}, {"trainable": "lora"}],
                         ids=["full", "trainable-only", "lora"])
def test_an_exported_run_loads_alone_and_gives_the_runs_logits(tmp_path, tiny_llama, train):
    cfg, run = trained_run(tmp_path, tiny_llama, **train)
    out = export_folder(run, tmp_path / "export")
    ours, tokenizer = load_model_and_tokenizer(cfg, run / "model", backend="hf")
    alone = AutoModelForCausalLM.from_pretrained(out)
    assert not (out / "adapter_config.json").exists() and (out / "README.md").read_text().startswith("---")
    ids = tokenizer("Ni nini 2 jumlisha 2?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, alone(ids).logits)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        assert not torch.equal(base(ids).logits, alone(ids).logits)  # the training is in it


def test_a_template_run_gets_its_template_as_chat_template_token_for_token(tmp_path, tiny_llama):
    cfg, run = trained_run(tmp_path, tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    (run / "model" / "chat_template.jinja").unlink()  # a base model's tokenizer: no chat template
    assert AutoTokenizer.from_pretrained(run / "model").chat_template is None
    out = export_folder(run, tmp_path / "export")
    exported = AutoTokenizer.from_pretrained(out)
    prompt = "Ni nini {2} jumlisha {% 2 %}?"  # braces that Jinja must not read
    got = exported.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
    want = format_prompt(prompt, tokenizer, "template", cfg.model.prompt_template)
    assert exported(got, add_special_tokens=False)["input_ids"] == tokenizer(want)["input_ids"]
    assert "{% raw %}" in template_chat("a {{b}} {prompt} c", adds_bos=False)


def test_bad_runs_and_a_used_folder_get_one_sentence_and_nothing_is_overwritten(tmp_path, tiny_llama):
    def clo(*args):
        return subprocess.run([sys.executable, "-m", "clo_lib", "export", *map(str, args)], cwd=REPO,
                              capture_output=True, text=True)

    done = clo(tmp_path, "--to", tmp_path / "x")
    assert done.returncode == 2 and "is not a run folder (no config.yaml)" in done.stderr
    (tmp_path / "config.yaml").write_text("language: sw\n")
    assert "holds no trained model" in clo(tmp_path, "--to", tmp_path / "x").stderr
    _, run = trained_run(tmp_path, tiny_llama)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    done = clo(run, "--to", tmp_path / "used")
    assert done.returncode == 2 and "is not an empty folder" in done.stderr
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_a_gguf_export_loads_back_in_transformers_close_to_the_run(tmp_path, tiny_llama, qtype):
    """f16: logits within 1e-2 of the run's (measured on the tiny run: 1.6e-4; q8_0: 3.8e-3). q8_0: every 2-D
    weight within half a quantisation step of the run's (the step is its block's max |w| / 127; the block scale is
    stored in float16, which adds at most 127·step·2⁻¹¹)."""
    cfg, run = trained_run(tmp_path, tiny_llama)
    path = tmp_path / f"run.{qtype}.gguf"
    done = subprocess.run([sys.executable, "-m", "clo_lib", "export", str(run), "--gguf", str(path), "--gguf-type",
                           qtype], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ours, tokenizer = load_model_and_tokenizer(cfg, run / "model", backend="hf")
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    vocab = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name).get_vocab()
    assert {token: vocab.get(token) for token in tokenizer.get_vocab()} == tokenizer.get_vocab()  # (it may add one)
    ids = tokenizer("Ni nini 2 jumlisha 2?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gap = (ours(ids).logits - back(ids).logits).abs().max().item()
    if qtype == "f16":
        assert gap <= 1e-2, gap
        return
    theirs = dict(back.named_parameters())
    for name, weight in ours.named_parameters():
        if weight.dim() != 2 or name == "lm_head.weight" and name not in theirs:
            continue
        blocks = weight.detach().reshape(-1, 32)
        step = blocks.abs().amax(dim=1, keepdim=True) / 127
        error = (theirs[name].detach().reshape(-1, 32) - blocks).abs()
        assert (error <= step * (0.5 + 127 * 2**-11) + 1e-12).all(), name


def test_a_gguf_file_that_exists_or_an_architecture_it_cannot_write_gets_one_sentence(tmp_path, tiny_llama):
    from clo_lib.common.errors import InputError
    from clo_lib.stages.export import export_gguf

    _, run = trained_run(tmp_path, tiny_llama)
    (tmp_path / "taken.gguf").write_text("mine")
    with pytest.raises(InputError, match="exists; give a new file name"):
        export_gguf(run, tmp_path / "taken.gguf")
    assert (tmp_path / "taken.gguf").read_text() == "mine"
    from clo_lib.modeling.gguf_writer import write_gguf

    model, tokenizer = load_model_and_tokenizer(load_config(run / "config.yaml"), run / "model", backend="hf")
    model.config.model_type = "gemma3"
    with pytest.raises(InputError, match="model type 'gemma3' is not written to GGUF here"):
        write_gguf(model, tokenizer, tmp_path / "x.gguf")
