"""Training with 16-bit weights: the trained weights keep float32 master copies, so the paper's small learning rate
moves them as it does in float32; frozen weights stay 16-bit. CPU runs bfloat16 too, so this is tested here.

Tolerances (measured on the 2-core CPU machine, 40 steps at lr 8e-6, constant schedule):
- elements of the attention weights that moved: 100 % in both runs (15 % in bfloat16 before master weights); the
  test asks for at least 99 %;
- the bfloat16 loss curve against the float32 one: at most 6e-5 relative per logged step; the test allows 1e-3;
- the bfloat16 run's weight update against the float32 run's: 0.5 % relative error (cosine 0.99999); allowed 5 %.
"""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from clo_lib.config.load import load_config
from clo_lib.method.pairs import METHOD_STAGES
from clo_lib.modeling import tiny
from clo_lib.modeling.models import BackendError, load_model_and_tokenizer
from clo_lib.stages.train import build_trainer, run_train

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def records(n):
    return [{"id": i, "lang": "sw", "prompt_en": f"What is {i} plus {i}?", "response_en": f"It is {2 * i}.",
             "prompt_tgt": f"Ni nini {i} jumlisha {i}?", "response_tgt": f"Ni {2 * i}."} for i in range(n)]


@pytest.fixture(scope="module")
def bf16_exact_llama(tmp_path_factory):
    """A tiny Llama whose float32 weights are exactly bfloat16 numbers, so both runs start from the same model."""
    folder = tiny.make_tiny_causal_lm(tmp_path_factory.mktemp("bf16") / "model", "llama")
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    model.save_pretrained(folder)
    return folder


def config(model_dir, dtype, method="clo", **train):
    return load_config({"language": "sw", "model": {"name_or_path": str(model_dir), "backend": "hf",
                                                    "max_length": 64, "dtype": dtype},
                        "train": {"method": method, "learning_rate": 8e-6, "epochs": 1, "batch_size": 4,
                                  "lr_scheduler": "constant", "warmup_ratio": 0.0, "logging_steps": 1, **train}})


@pytest.mark.parametrize("method", ["clo", "sft"])
def test_bf16_training_moves_the_weights_as_float32_does(bf16_exact_llama, tmp_path, method):
    start = AutoModelForCausalLM.from_pretrained(bf16_exact_llama, dtype=torch.float32).state_dict()
    names = [n for n in start if n.split(".")[-2] in ATTENTION]
    update, curve = {}, {}
    for dtype in ("float32", "bfloat16"):
        log = run_train(config(bf16_exact_llama, dtype, method), tmp_path / dtype, records(80))
        assert log["stages"][-1]["steps"] == 40
        curve[dtype] = torch.tensor([h["loss"] for h in log["stages"][-1]["log_history"] if "loss" in h])
        saved = load_file(str(tmp_path / dtype / "model" / "model.safetensors"))
        # the saved file keeps the learned change: trained tensors in float32, frozen ones as loaded
        assert all(saved[n].dtype == torch.float32 for n in names)
        frozen = [n for n in saved if n not in names]
        assert all(saved[n].dtype == getattr(torch, dtype) for n in frozen)
        moved = sum((saved[n] != start[n]).sum().item() for n in names) / sum(start[n].numel() for n in names)
        assert moved >= 0.99, (dtype, moved)
        update[dtype] = torch.cat([(saved[n] - start[n]).flatten() for n in names])
    relative = ((curve["bfloat16"] - curve["float32"]).abs() / curve["float32"].abs()).max().item()
    assert relative <= 1e-3, relative
    error = ((update["bfloat16"] - update["float32"]).norm() / update["float32"].norm()).item()
    assert error <= 0.05, error


def test_first_bf16_step_sees_the_reference_exactly(bf16_exact_llama, tmp_path):
    """The reference pass runs under the same autocast as training: at step 0 policy = reference, DPO = log 2."""
    log = run_train(config(bf16_exact_llama, "bfloat16", epochs=0.1), tmp_path / "run", records(40))
    first = next(h for h in log["stages"][-1]["log_history"] if "dpo" in h)
    assert first["dpo"] == pytest.approx(0.6931472, abs=1e-6)
    assert first["en/rewards_margin"] == 0.0 and first["tgt/rewards_margin"] == 0.0


def test_frozen_weights_stay_bf16_and_trained_ones_are_float32(bf16_exact_llama, tmp_path):
    trainer, counts = build_trainer(config(bf16_exact_llama, "bfloat16"), records(8), tmp_path / "run",
                                    METHOD_STAGES["clo"][0])
    dtypes = {name: p.dtype for name, p in trainer.model.named_parameters()}
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all(dtypes[n] == torch.float32 for n in trained)
    assert all(dtypes[n] == torch.bfloat16 for n in dtypes if n not in trained)
    assert trainer.args.bf16  # the Trainer's autocast runs the 16-bit compute


def test_float16_is_refused_where_the_loss_cannot_be_scaled(bf16_exact_llama, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("float16 trains on CUDA, with loss scaling")
    with pytest.raises(BackendError, match="float16 trains only on a CUDA GPU"):
        run_train(config(bf16_exact_llama, "float16"), tmp_path / "run", records(4))
    assert not (tmp_path / "run").exists()


def test_a_later_stage_starts_from_the_float32_master_weights(bf16_exact_llama, tmp_path):
    """sft_dpo's init_from: loading a run for training restores its trained tensors in float32 (not their bf16
    rounding); loading it for evaluation gives the plain bf16 model."""
    run_train(config(bf16_exact_llama, "bfloat16", "sft"), tmp_path / "sft", records(16))
    saved = load_file(str(tmp_path / "sft" / "model" / "model.safetensors"))
    cfg = config(bf16_exact_llama, "bfloat16", "sft_dpo", init_from=str(tmp_path / "sft" / "model"))
    model, _ = load_model_and_tokenizer(cfg, for_training=True)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert model.get_parameter(q).dtype == torch.float32 and torch.equal(model.get_parameter(q), saved[q])
    assert model.get_parameter("model.layers.0.mlp.up_proj.weight").dtype == torch.bfloat16
    model, _ = load_model_and_tokenizer(cfg, str(tmp_path / "sft" / "model"))
    assert model.get_parameter(q).dtype == torch.bfloat16


@pytest.mark.parametrize("capability,expected", [((7, 5), torch.float32), ((8, 0), torch.bfloat16)])
def test_dtype_auto_picks_bfloat16_only_where_the_gpu_computes_in_it(monkeypatch, capability, expected):
    """A T4 (7.5) says torch.cuda.is_bf16_supported() but only emulates bfloat16: auto gives float32 there."""
    from clo_lib.modeling.models import torch_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    assert torch_dtype("auto") == expected
