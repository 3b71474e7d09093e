"""Memory estimates from a config alone: parameter counts checked against real models and published sizes."""

from types import SimpleNamespace

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from clo_lib.config import PARAMS_DIR, load_config
from clo_lib.memory import PAPER_MODEL_SHAPES, check_fits, count_params, estimate_for_run


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


def test_llama2_13b_attention_only_does_not_fit_one_80gb_gpu_with_adamw():
    cfg = load_config(PARAMS_DIR / "presets" / "paper.yaml",
                      {"language": "sw", "model": {"name_or_path": "meta-llama/Llama-2-13b-hf"}})
    estimate = estimate_for_run(cfg)
    assert 70 < estimate.total_gb < 95  # the "roughly 85 GB"
    message = check_fits(estimate, 80)
    assert message and "adamw_8bit" in message
    cfg.train.optim = "adamw_8bit"
    assert check_fits(estimate_for_run(cfg), 80) is None  # 8-bit AdamW moments: 4x less optimizer memory
