"""A trained run's model card: `<run>/model_card.md`, Hugging Face model-card metadata on top, written by the
evaluation beside the run's model (not inside model/, whose content the run's fingerprints digest), and copied as
README.md by `clo export`.

It says how the model was trained (method, λ, β, trainable part, data size, translator), its metrics from the same
evaluation with 95 % Wilson intervals, the comparison with its SFT run where the grid judged one, and the papers to
cite: CLO always, joint translation when the corpus was translated jointly, SALT when the base model came from a
vocabulary transfer. The license is the base model's where the kit knows it (its own README's metadata, or
KNOWN_LICENSES); otherwise the card says to check it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from clo_lib.common.io import atomic_write_text
from clo_lib.common.languages import get_language
from clo_lib.common.stats import wilson
from clo_lib.config.schema import RunConfig

CARD = "model_card.md"
KNOWN_LICENSES = {  # substrings of a base model's id or path, and its license's model-card identifier
    "smollm2": "apache-2.0", "gemma": "gemma", "llama-2": "llama2", "meta-llama-3": "llama3",
    "mistral-7b": "apache-2.0", "qwen2.5-0.5b": "apache-2.0", "qwen2.5-3b": "other",
}
DATASETS = {"oasst1": "OpenAssistant/oasst1", "oasst2": "OpenAssistant/oasst2", "alpaca": "tatsu-lab/alpaca"}
CITATIONS = {
    "clo": ("@inproceedings{lee2025clo,\n  title = {Cross-Lingual Optimization for Language Transfer in Large Language "
            "Models},\n  author = {Lee and Hong and Moon and Lim},\n  booktitle = {Proceedings of ACL 2025},\n"
            "  pages = {15100--15119},\n  year = {2025},\n  doi = {10.18653/v1/2025.acl-long.734}\n}"),
    "joint": ("@inproceedings{moon2024joint,\n  title = {Translation of Multifaceted Data without Re-Training of "
              "Machine Translation Systems},\n  author = {Moon and Lee and Hong and Lee and Park and Lim},\n"
              "  booktitle = {Findings of EMNLP 2024},\n  pages = {2088--2108},\n  year = {2024}\n}"),
    "salt": ("@inproceedings{lee2025salt,\n  title = {Semantic Aware Linear Transfer by Recycling Pre-trained Language "
             "Models for Cross-lingual Transfer},\n  author = {Lee and Hong and Moon and Lim},\n"
             "  booktitle = {Findings of ACL 2025},\n  pages = {16180--16193},\n  year = {2025}\n}"),
}
SHARES = ("fidelity_tgt", "fidelity_en", "accuracy_tgt", "accuracy_en", "fidelity_en@mtbench")


def base_license(base: str) -> str | None:
    """The base model's license: from its own README's metadata when it is a local folder, else KNOWN_LICENSES."""
    readme = Path(base) / "README.md"
    if readme.is_file():
        found = re.search(r"^license:\s*(\S+)", readme.read_text(encoding="utf-8", errors="replace"), re.M)
        if found:
            return found.group(1)
    lowered = base.lower()
    return next((license for key, license in KNOWN_LICENSES.items() if key in lowered), None)


def _metadata(cfg: RunConfig, base: str, license: str | None, method: str) -> str:
    lines = ["---", f"base_model: {base}", "language:", "- en", f"- {cfg.language}"]
    lines.append(f"license: {license}" if license else "# license: the base model's (not known to the kit; check it)")
    if cfg.data.source in DATASETS:
        lines += ["datasets:", f"- {DATASETS[cfg.data.source]}"]
    tags = ["clo-kit", "cross-lingual-optimization" if method == "clo" else method]
    tags += ["dpo"] if method in ("clo", "sft_dpo") else []
    lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags:", *[f"- {t}" for t in tags], "---"]
    return "\n".join(lines)


def _share(metrics: dict, name: str) -> str | None:
    value = metrics.get(name)
    group = name.split("@")[1] if "@" in name else None
    n = metrics.get(f"prompts@{group}") if group else metrics.get("prompts")
    if value is None or not n:
        return None
    interval = wilson(value, int(n))
    return f"| {name} | {value:.3f} | [{interval['low']:.3f}, {interval['high']:.3f}] | {n} |"


def model_card(cfg: RunConfig, metrics: dict[str, Any], method: str, run_name: str, base: str,
               transferred: bool = False) -> str:
    """The card's text for a run of `cfg` trained by `method` from `base`, with this evaluation's `metrics`."""
    language = get_language(cfg.language).name
    train, tcfg = cfg.train, cfg.translation
    settings = [("method", method), ("trainable", train.trainable), ("examples", cfg.data.size),
                ("epochs", train.epochs), ("learning rate", train.learning_rate), ("seed", cfg.seed),
                ("translator", f"{tcfg.backend}: {tcfg.model}" + (" (joint)" if tcfg.mode == "joint" else "")),
                ("source data", cfg.data.source)]
    if method in ("clo", "sft_dpo"):
        settings[1:1] = [("λ (NLL weight)", train.lam), ("β", train.beta)]
    lines = [_metadata(cfg, base, base_license(base), method), "",
             f"# {run_name}: {Path(base).name} moved to {language} with {method}", "",
             f"Trained with the CLO kit from `{base}` on English instruction data and its {language} translation; "
             "the numbers below are from the kit's evaluation of this model (`metrics.json` beside it).", "",
             "## Training", "", "| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in settings], ""]
    rows = [row for row in (_share(metrics, name) for name in SHARES) if row]
    if rows:
        lines += ["## Evaluation", "", "Shares of prompts, with 95 % Wilson intervals over the prompts (one "
                  "evaluation, one training seed):", "", "| metric | value | 95 % interval | prompts |",
                  "|---|---|---|---|", *rows, ""]
    judged = [side for side in ("tgt", "en") if metrics.get(f"winrate_vs_sft_{side}") is not None]
    if judged:
        lines += ["## Compared with its SFT run", "", "Win rate against the SFT run of the same grid cell (ties "
                  "count half), with its 95 % interval:", "", "| prompts | win rate | 95 % interval | ties |",
                  "|---|---|---|---|"]
        for side in judged:
            key = f"winrate_vs_sft_{side}"
            lines.append(f"| {'target' if side == 'tgt' else 'English'} | {metrics[key]:.3f} | "
                         f"[{metrics[key + '_ci_low']:.3f}, {metrics[key + '_ci_high']:.3f}] | "
                         f"{metrics[key + '_ties']:.2f} |")
        lines.append("")
    papers = ["clo"] + (["joint"] if tcfg.mode == "joint" else []) + (["salt"] if transferred else [])
    lines += ["## Citation", "", "```bibtex", "\n\n".join(CITATIONS[p] for p in papers), "```", ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path, cfg: RunConfig, metrics: dict[str, Any], method: str, base: str,
                     transferred: bool = False) -> Path:
    path = Path(run_dir) / CARD
    atomic_write_text(path, model_card(cfg, metrics, method, Path(run_dir).name, base, transferred))
    return path
