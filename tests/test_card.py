"""The model card written beside an evaluated run's model (clo_lib.artifacts.card)."""

import shutil

import yaml

from clo_lib.artifacts.card import CARD, model_card
from clo_lib.config.load import load_config
from clo_lib.stages import evaluate

METRICS = {"fidelity_tgt": 0.5, "fidelity_en": 1.0, "prompts": 96, "fidelity_en@mtbench": 0.9, "prompts@mtbench": 80,
           "winrate_vs_sft_tgt": 0.35, "winrate_vs_sft_tgt_ci_low": 0.29, "winrate_vs_sft_tgt_ci_high": 0.41,
           "winrate_vs_sft_tgt_ties": 0.5}


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_the_card_carries_hub_metadata_training_settings_intervals_and_the_citation():
    cfg = load_config({"language": "sw", "data": {"source": "oasst1", "size": 200},
                       "train": {"method": "clo", "lam": 0.5, "beta": 0.1}})
    card = model_card(cfg, METRICS, "clo", "llama-sw-clo-n200-s0", "outputs/models/SmolLM2-135M-Instruct")
    meta = front_matter(card)
    assert meta["base_model"] == "outputs/models/SmolLM2-135M-Instruct" and meta["language"] == ["en", "sw"]
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["OpenAssistant/oasst1"]
    assert {"cross-lingual-optimization", "dpo"} <= set(meta["tags"])
    assert "| λ (NLL weight) | 0.5 |" in card and "| β | 0.1 |" in card and "| examples | 200 |" in card
    # Wilson's interval for 48 of 96, worked by hand: 0.5 ± 1.96·sqrt(0.25/96 + 1.96²/(4·96²)) / (1 + 1.96²/96)
    assert "| fidelity_tgt | 0.500 | [0.402, 0.598] | 96 |" in card
    assert "| fidelity_en@mtbench | 0.900 |" in card and "| 80 |" in card
    assert "| target | 0.350 | [0.290, 0.410] | 0.50 |" in card
    assert card.count("@inproceedings") == 1 and "10.18653/v1/2025.acl-long.734" in card


def test_an_unknown_license_is_not_guessed_and_the_siblings_are_cited_when_used(tmp_path):
    base = tmp_path / "my-model"
    base.mkdir()
    cfg = load_config({"language": "ko", "translation": {"mode": "joint"}, "train": {"method": "sft"}})
    card = model_card(cfg, {}, "sft", "run", str(base), transferred=True)
    assert "license" not in front_matter(card) and "not known to the kit; check it" in card
    assert "moon2024joint" in card and "lee2025salt" in card and "λ" not in card
    (base / "README.md").write_text("---\nlicense: mit\n---\n# mine\n")
    assert front_matter(model_card(cfg, {}, "sft", "run", str(base)))["license"] == "mit"


def test_evaluating_a_run_writes_its_card_beside_its_model_and_the_base_model_gets_none(tmp_path, tiny_llama):
    from test_evaluate import eval_config

    cfg = eval_config(tmp_path, tiny_llama)
    shutil.copytree(tiny_llama, tmp_path / "run" / "model")
    evaluate.run_evaluate(cfg, tmp_path / "run", method="clo", progress=False)
    card = (tmp_path / "run" / CARD).read_text()
    assert front_matter(card)["base_model"] == str(tiny_llama) and "| fidelity_tgt |" in card
    evaluate.run_evaluate(cfg, tmp_path / "base", tiny_llama, method="base", progress=False)
    assert not (tmp_path / "base" / CARD).exists()
