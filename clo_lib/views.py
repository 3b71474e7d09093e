"""What the numbered notebooks show: the CLO pairs as a table, the training curves, answers side by side.

Tables are pandas DataFrames and figures matplotlib figures, so a notebook cell is one call and a script can save
them. Nothing here computes a metric: the numbers come from the train log (clo_lib.stages.train), the cached answers and
the scorers of clo_lib.stages.evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from clo_lib.common.languages import SOURCE_LANGUAGE
from clo_lib.config.schema import RunConfig
from clo_lib.method.pairs import build_clo_pairs
from clo_lib.method.salt import neighbours
from clo_lib.mt.backends import make_translator
from clo_lib.mt.cache import translation_cache
from clo_lib.mt.records import translate_records
from clo_lib.stages.transfer import token_map

SIDE_NAMES = {"en": "English prompt", "tgt": "target prompt"}  # a row's side: the language of its prompt


def pairs_table(records: Sequence[dict], n: int = 2) -> pd.DataFrame:
    """The CLO preference pairs of the first `n` records, both directions of each: prompt, chosen, rejected."""
    rows = build_clo_pairs(list(records[:n]))
    return pd.DataFrame([{"record": row["pair_id"], "side": SIDE_NAMES["tgt" if row["is_target"] else "en"],
                          "prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
                         for row in rows])


# (panel, logged key, curve): the loss split, then per direction the DPO reward margin and accuracy. A direction
# keeps its colour in both reward panels: "English prompt" is the pair whose chosen answer is English.
CURVES = [
    ("loss", "loss", "total loss"),
    ("loss", "nll", "NLL of target answers (weight λ)"),
    ("loss", "dpo", "DPO, both directions (weight 1−λ)"),
    ("reward margin: chosen − rejected", "en/rewards_margin", "English prompt"),
    ("reward margin: chosen − rejected", "tgt/rewards_margin", "target prompt"),
    ("reward accuracy: share of pairs with chosen ahead", "en/rewards_accuracy", "English prompt"),
    ("reward accuracy: share of pairs with chosen ahead", "tgt/rewards_accuracy", "target prompt"),
]


def training_curves(log: dict) -> pd.DataFrame:
    """Every logged point of a train log as long rows {stage, step, panel, curve, value}.

    SFT stages log only their loss; CLO (and sft_dpo's DPO stage) also log nll, dpo and, per direction, the rewards.
    """
    rows = []
    for stage in log["stages"]:
        for entry in stage["log_history"]:
            for panel, key, label in CURVES:
                if key in entry and "step" in entry:
                    rows.append({"stage": stage["stage"], "step": entry["step"], "panel": panel, "curve": label,
                                 "value": entry[key]})
    return pd.DataFrame(rows, columns=["stage", "step", "panel", "curve", "value"])


def plot_training(log: dict, title: str = ""):
    """One panel per quantity (loss split, reward margins, reward accuracies), steps on the x axis; None when the
    log holds no point (a run finished before this kit logged steps)."""
    import seaborn as sns

    frame = training_curves(log)
    if frame.empty:
        return None
    panels = list(dict.fromkeys(frame["panel"]))
    dots = "o" if frame["step"].nunique() <= 40 else None  # each logged step marked while they can be told apart
    grid = sns.relplot(data=frame, x="step", y="value", hue="curve", col="panel", col_order=panels, kind="line",
                       marker=dots, height=3.2, aspect=1.3, facet_kws={"sharey": False}, col_wrap=min(3, len(panels)))
    grid.set_titles("{col_name}")
    grid.set_axis_labels("optimizer step", "")
    for axis in grid.axes.flat:
        if axis.get_title().startswith("reward margin"):  # above 0: the chosen answer is preferred
            axis.axhline(0, color="grey", linewidth=0.8)
    if title:
        grid.figure.suptitle(title, y=1.03)
    return grid.figure


def both_ways(cfg: RunConfig, record: dict) -> pd.DataFrame:
    """One English record translated separately and jointly (clo_lib.method.joint) with the config's translator, side by
    side: what joint translation changes, and whether its output split back. Uses and fills the stage's cache."""
    import dataclasses

    joint_cfg = dataclasses.replace(cfg.translation, mode="joint")
    translator = make_translator(joint_cfg, SOURCE_LANGUAGE, cfg.language)  # keeps markers; plain text as usual
    cache = translation_cache(cfg)
    rows = []
    for mode in ("separate", "joint"):
        tcfg = dataclasses.replace(cfg.translation, mode=mode)
        (row,), _ = translate_records([record], translator, cache, cfg.language, tcfg, progress=False)
        split = "–" if mode == "separate" else ("no: translated part by part" if row["joint_fallback"] else "yes")
        rows.append({"mode": mode, "prompt": row["prompt_tgt"], "response": row["response_tgt"],
                     "split back": split, "flags": ", ".join(row["flags"])})
    return pd.DataFrame(rows).set_index("mode")


def run_folder(template: str, cfg: RunConfig) -> Path | None:
    """A run folder named by a template such as "outputs/toy/toy-{lang}-sft-n{size}-s{seed}", filled in from `cfg`
    (the run being evaluated); None for an empty template."""
    if not template:
        return None
    return Path(template.format(lang=cfg.language, size=cfg.data.size, seed=cfg.seed, name=cfg.name))


def evaluated_run(template: str, cfg: RunConfig, what: str) -> Path | None:
    """The run folder `template` names for `cfg` (run_folder) when it holds evaluated answers; else None, saying
    that `what` is left out (a notebook run before `make demo`, or a misspelt folder)."""
    folder = run_folder(template, cfg)
    if folder is not None and not (folder / "generations.jsonl").is_file():
        print(f"{what}: {folder} holds no evaluated run, so they are left out (`make demo` evaluates one)")
        return None
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary transfer (05_transfer)


def tokenization_table(text: str, tokenizers: dict) -> pd.DataFrame:
    """How each tokenizer ({name: tokenizer}) cuts `text`: the pieces, how many, and tokens per word."""
    rows = []
    for name, tokenizer in tokenizers.items():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append({"vocabulary": name, "tokens": len(ids), "tokens per word": round(len(ids) / len(text.split()), 2),
                     "pieces": " | ".join(tokenizer.decode([i]) for i in ids)})
    return pd.DataFrame(rows)


def neighbours_table(new_tokenizer, llm_tokenizer, aux, count: int = 6, top: int = 4) -> pd.DataFrame:
    """SALT's and FOCUS's neighbours for the `count` longest new tokens that have an auxiliary vector: the shared
    tokens sparsemax gives a weight (k of them), the heaviest `top` with their weights."""
    import torch

    mapped = token_map(new_tokenizer, llm_tokenizer)
    has = ~torch.isnan(aux).any(dim=1)
    names = new_tokenizer.convert_ids_to_tokens(list(range(aux.shape[0])))
    todo = sorted((i for i in range(aux.shape[0]) if i not in mapped and has[i]), key=lambda i: -len(names[i]))
    anchors, weights = neighbours(aux, mapped, torch.tensor(todo[:count], dtype=torch.long))
    rows = []
    for row, token in zip(weights, todo[:count]):
        order = row.argsort(descending=True)[:top]
        rows.append({"new token": new_tokenizer.decode([token]), "k (neighbours)": int((row > 0).sum()),
                     "heaviest neighbours": ", ".join(f"{new_tokenizer.decode([int(anchors[j])])!r} {row[j]:.2f}"
                                                      for j in order if row[j] > 0)})
    return pd.DataFrame(rows)
