"""What the numbered notebooks show: the CLO pairs as a table, the training curves, answers side by side.

Tables are pandas DataFrames and figures matplotlib figures, so a notebook cell is one call and a script can save
them. Nothing here computes a metric: the numbers come from the train log (clo_lib.train), the cached answers and
the scorers of clo_lib.evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from clo_lib.config import RunConfig
from clo_lib.languages import get_language

DIRECTIONS = {"en": "English prompt", "tgt": "target prompt"}


def pairs_table(records: Sequence[dict], n: int = 2) -> pd.DataFrame:
    """The CLO preference pairs of the first `n` records, both directions of each: prompt, chosen, rejected."""
    from clo_lib.pairs import build_clo_pairs

    rows = build_clo_pairs(list(records[:n]))
    return pd.DataFrame([{"record": row["pair_id"], "direction": DIRECTIONS["tgt" if row["is_target"] else "en"],
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
    """One English record translated separately and jointly (clo_lib.joint) with the config's translator, side by
    side: what joint translation changes, and whether its output split back. Uses and fills the stage's cache."""
    import dataclasses

    from clo_lib.languages import SOURCE_LANGUAGE
    from clo_lib.translate import make_translator, translate_records, translation_cache

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


def run_answers(run_dir: str | Path, cfg: RunConfig) -> list[dict] | None:
    """A run folder's cached answers made with `cfg`'s decoding settings, or None when it has none yet."""
    from clo_lib.evaluate import reference_answers

    if not (Path(run_dir) / "generations.jsonl").is_file():
        return None
    return reference_answers(run_dir, cfg)


def side_by_side(prompts: Sequence[dict], answers: dict[str, Sequence[dict] | None], cfg: RunConfig,
                 n: int = 4) -> pd.DataFrame:
    """`n` prompts spread over the file, each asked in the target language and in English: the prompt, the expected
    answer, and for every labelled set of answers (base, SFT, this run, ...) the answer, the language lingua
    detects in it ("?" when unsure) and whether it is right (✓ / ✗; blank where the prompt has no reference).

    A label whose answers are None (that run was not evaluated) is left out, and said so in the table's caption.
    """
    from clo_lib import langid
    from clo_lib.evaluate import is_correct, spread

    codes = ["en", cfg.language]
    chosen = spread(list(prompts), n)
    keyed = {label: {(row["id"], row["side"]): row["answer"] for row in rows}
             for label, rows in answers.items() if rows is not None}
    table = []
    for prompt in chosen:
        for side in ("tgt", "en"):
            expected = prompt.get(f"answer_{side}")
            row = {"prompt": prompt[f"prompt_{side}"], "expected": expected or ""}
            for label, by_key in keyed.items():
                answer = by_key.get((prompt["id"], side))
                if answer is None:
                    continue
                detected = langid.detect(answer, codes, cfg.eval.lid_min_confidence, cfg.eval.lid_min_letters)[0]
                right = "" if expected is None else ("✓" if is_correct(answer, prompt) else "✗")
                row[label] = answer
                row[f"{label} lang"] = detected or "?"
                row[f"{label} ok"] = right
            table.append(row)
    frame = pd.DataFrame(table)
    missing = [label for label, rows in answers.items() if rows is None]
    frame.attrs["caption"] = (f"{get_language(cfg.language).name} and English prompts; lang: lingua's pick between en "
                              f"and {cfg.language}; ok: the expected answer in either language"
                              + (f"; not evaluated yet: {', '.join(missing)}" if missing else ""))
    return frame


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

    from clo_lib.transfer import token_map
    from clo_lib.vocab import neighbours

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


def transfer_lesson_settings(language: str, donor: str = "", seed: int = 0,
                             grid_file: str | Path = "params/grids/toy_salt.yaml", model: str = "toy-salt") -> dict:
    """05_transfer's transfer.* settings: those of `model` in the toy study's grid (not a copy of them), `{lang}`
    filled in; with `donor` (a folder or hub id) that donor, else the toy world's, built in
    outputs/lesson/donor-<lang> (seconds) with its text for fastText and continued pretraining."""
    from clo_lib import toyworld
    from clo_lib.config import read_yaml

    settings = {f"transfer.{key}": value.replace("{lang}", language) if isinstance(value, str) else value
                for key, value in read_yaml(Path(grid_file))["models"][model]["transfer"].items()}
    if donor:  # your own PLM; keep the study's text files only if they are in your language
        return {**settings, "transfer.donor": donor}
    built = Path(f"outputs/lesson/donor-{language}")
    toyworld.build_donor(built, language, seed)
    return {**settings, "transfer.donor": str(built / "model"), "transfer.aux_text": str(built / "text.txt"),
            "transfer.pretrain_text": str(built / "text.txt")}
