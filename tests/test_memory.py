"""Memory estimates from a config alone: parameter counts checked against real models and published sizes."""

from types import SimpleNamespace

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from clo_lib.config.load import load_config
from clo_lib.config.schema import PARAMS_DIR
from clo_lib.modeling.memory import PAPER_MODEL_SHAPES, check_fits, count_params, estimate_for_run


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_counts_match_an_instantiated_model(tiny_model_dir, arch):
    path = tiny_model_dir(arch)
    model = AutoModelForCausalLM.from_pretrained(path)
    total, attention, _ = count_params(AutoConfig.from_pretrained(path))
    assert total == sum(p.numel() for p in model.parameters())
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    assert attention == sum(p.numel() for n, p in model.named_parameters() if n.split(".")[-2] in projections)


@pytest.mark.parametrize("name,billions", [
    ("meta-llama/Llama-2-7b-hf", 6.74), ("meta-llama/Llama-2-13b-hf", 13.02), ("meta-llama/Meta-Llama-3-8B", 8.03),
    ("mistralai/Mistral-7B-v0.1", 7.24), ("Qwen/Qwen2.5-3B", 3.09),
])
def test_paper_models_have_their_published_sizes(name, billions):
    total, _, _ = count_params(SimpleNamespace(**PAPER_MODEL_SHAPES[name]))
    assert total / 1e9 == pytest.approx(billions, abs=0.01)


def test_llama2_13b_advice_follows_from_the_estimate():
    """The paper grid's Llama-2-13B settings are the ones the estimate says fit one 80 GB GPU, and they keep the
    preset's 32 rows per optimizer step."""
    from clo_lib.grid.expand import load_grid

    cfg = load_config(PARAMS_DIR / "presets" / "paper.yaml",
                      {"language": "sw", "model": {"name_or_path": "meta-llama/Llama-2-13b-hf"}})
    estimate = estimate_for_run(cfg)
    assert 100 < estimate.total_gb < 110  # float32 master weights, gradients and moments of 4.2B parameters
    message = check_fits(estimate, 80)
    assert message and "adamw_8bit" in message
    cfg.train.optim = "adamw_8bit"
    assert check_fits(estimate_for_run(cfg), 80)  # 8-bit moments alone are not enough any more
    grid = load_grid(PARAMS_DIR / "grids" / "paper.yaml")
    for stage in grid.stages.values():
        if stage.kind == "train":
            run = stage.config.train
            assert check_fits(estimate_for_run(stage.config), 80) is None, stage.id
            assert run.batch_size * run.grad_accum == 32, stage.id


@pytest.mark.parametrize("trainable", ["attention", "full", "lora"])
def test_estimate_counts_what_a_bf16_training_step_allocates(tiny_llama, tmp_path, trainable):
    """Weights (frozen bf16, trained float32), float32 gradients and AdamW's moments, measured in the Trainer at
    the optimizer step, byte for byte against the estimate from the config alone."""
    import torch
    from transformers import TrainerCallback

    from clo_lib.method.pairs import METHOD_STAGES
    from clo_lib.modeling.memory import GB, estimate_memory
    from clo_lib.stages.train import build_trainer

    cfg = load_config({"language": "sw", "model": {"name_or_path": str(tiny_llama), "backend": "hf",
                                                   "max_length": 32, "dtype": "bfloat16"},
                       "train": {"method": "clo", "trainable": trainable, "batch_size": 4, "epochs": 1, "lora_r": 2,
                                 "save_steps": 1000}})
    records = [{"id": i, "lang": "sw", "prompt_en": f"Q {i}?", "response_en": f"A {i}.", "prompt_tgt": f"S {i}?",
                "response_tgt": f"J {i}."} for i in range(4)]
    trainer, _ = build_trainer(cfg, records, tmp_path / "run", METHOD_STAGES["clo"][0])
    measured = {}

    class Measure(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            measured["weights"] = sum(p.numel() * p.element_size() for p in model.parameters())
            measured["gradients"] = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()
                                        if p.grad is not None)

    trainer.add_callback(Measure())
    trainer.train()
    measured["optimizer"] = sum(t.numel() * t.element_size() for state in trainer.optimizer.state.values()
                                for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    estimate = estimate_memory(AutoConfig.from_pretrained(tiny_llama), cfg.train, 32, dtype_bytes=2)
    for part in ("weights", "gradients", "optimizer"):
        assert getattr(estimate, f"{part}_gb") * GB == pytest.approx(measured[part], rel=1e-9), part


def test_the_summary_says_megabytes_below_a_gigabyte():
    from clo_lib.modeling.memory import GB, MemoryEstimate

    small = MemoryEstimate(850_000, 200_000, 3.3 / 1024, 0.0, 0.8 / 1024, 1.5 / 1024, 108 / 1024)
    assert small.summary().startswith("~113.6 MB: weights 3.3 + ") and "0.20M of 0.85M parameters" in small.summary()
    large = MemoryEstimate(8 * 10**9, 10**9, 16.0, 2.0, 4.0, 8.0, 10.0)
    assert large.summary().startswith("~40.0 GB: weights 16.0 + 16-bit casts 2.0") and GB == 1024**3
