"""Building the toy world: its pretraining corpus and tiny base model, its SFT pool and evaluation questions,
its target-language text and donor PLM for vocabulary transfer, and the lesson settings of notebook 05.
`clo toy build`, `clo toy donor`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from clo_lib.common.io import atomic_write_json, atomic_write_text, write_jsonl
from clo_lib.config.load import read_yaml
from clo_lib.modeling.tiny import make_tiny_causal_lm
from clo_lib.stages.transfer import continued_pretraining
from clo_lib.toy.world import (
    LANGS,
    PHRASINGS,
    TARGETS,
    TEMPLATE,
    WORLD_SEED,
    WORLD_VERSION,
    all_facts,
    check_lang,
    evaluation_prompts,
    generate_english,
    render,
    world,
)

PLAIN_SHARE = 0.5  # share of SFT-pool items whose target-language sentences appear as plain text


def pretraining_corpus(seed: int = 0, world_seed: int = WORLD_SEED) -> list[str]:
    """Documents of the base model's pretraining, like an English-centric LLM's.

    - English instruction-style text: every fact of the world in every phrasing, in the instruction template with
      its answer, held-out facts and phrasings included. All knowledge is taught here, in English only.
    - Plain target-language text: the question and answer sentences of half the SFT-pool items (known facts in
      training phrasings), per language, as running text without the template. The model learns the languages'
      words, never to answer in them, and sees no held-out fact or held-out phrasing in a target language.
    """
    rng = random.Random(seed)
    facts = all_facts()
    documents = []
    for kind, slots in facts:
        for phrasing in range(PHRASINGS):
            question, answer = render(kind, slots, "en", phrasing)
            documents.append(TEMPLATE.replace("{prompt}", question) + answer)
    pool = world(world_seed).pool()
    for lang in TARGETS:
        for fact, phrasing in rng.sample(pool, round(PLAIN_SHARE * len(pool))):
            documents.append(" ".join(render(*facts[fact], lang, phrasing)))
    rng.shuffle(documents)
    return documents


# The pretraining learning rate; fine-tuning in the toy preset is a tenth of it (params/presets/toy.yaml), a rule
# fixed before any method was compared.
PRETRAIN_LEARNING_RATE = 3e-3
# torch's threads for the pretraining, whatever the machine: its result depends on the thread count (one thread and
# two built different version-3 worlds from the same seed, and every verdict of the demo moved with it), so a
# fresh clone builds this project's world on any machine; 2 is the CI machine's count, its numbers the README's.
PRETRAIN_THREADS = 2


def pretrain_base_model(out_dir: str | Path, seed: int = 0, epochs: int = 30, hidden_size: int = 128,
                        num_layers: int = 4, batch_size: int = 32, learning_rate: float = PRETRAIN_LEARNING_RATE,
                        log=print, world_seed: int = WORLD_SEED) -> dict:
    """Train the toy base model from scratch on `pretraining_corpus(seed, world_seed)`; save it to `out_dir`.
    Deterministic."""
    import math
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    documents = pretraining_corpus(seed, world_seed)
    every_sentence = [text for fact in all_facts() for lang in LANGS for phrasing in range(PHRASINGS)
                      for text in render(*fact, lang, phrasing)]
    make_tiny_causal_lm(out_dir, "llama", corpus=every_sentence + [TEMPLATE], seed=seed, hidden_size=hidden_size,
                        num_layers=num_layers, vocab_size=1024)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    encoded = [tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id] for doc in documents]
    steps = epochs * math.ceil(len(encoded) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        model.train()
        start, losses = time.perf_counter(), []
        for epoch in range(epochs):
            order = torch.randperm(len(encoded), generator=generator).tolist()
            for begin in range(0, len(order), batch_size):
                batch = [encoded[i] for i in order[begin: begin + batch_size]]
                width = max(map(len, batch))
                ids = torch.full((len(batch), width), tokenizer.pad_token_id)
                labels = torch.full((len(batch), width), -100)
                for row, seq in enumerate(batch):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    labels[row, : len(seq)] = torch.tensor(seq)
                loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
            took = time.perf_counter() - start  # every epoch: under load one epoch can take a minute
            log(f"pretraining epoch {epoch + 1}/{epochs}: loss {sum(losses[-20:]) / len(losses[-20:]):.3f} "
                f"({took:.0f} s, ~{took / (epoch + 1) * (epochs - epoch - 1):.0f} s left)")
    finally:  # the caller's thread count back, whatever happened
        torch.set_num_threads(threads)
    model.save_pretrained(out_dir)
    return {"documents": len(documents), "steps": steps, "threads": PRETRAIN_THREADS,
            "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(time.perf_counter() - start, 1),
            "parameters": sum(p.numel() for p in model.parameters())}


def build_tasks(out: str | Path, seed: int = 0, log=print) -> dict:
    """World `seed`'s data without a base model: pool.jsonl (the English SFT pool), eval_<lang>.jsonl (the test
    questions), val_<lang>.jsonl (the validation questions, disjoint from test) and tasks.json, for grids that bring
    their own base model (params/grids/smol.yaml). Cached per seed
    and WORLD_VERSION; tasks.json is written last, so its presence means the files are complete."""
    import json

    out = Path(out)
    summary_file = out / "tasks.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        if (summary.get("seed"), summary.get("version")) == (seed, WORLD_VERSION):
            log(f"toy world tasks already in {out} (seed {seed}, version {WORLD_VERSION})")
            return summary
    for lang in TARGETS:
        write_jsonl(out / f"eval_{lang}.jsonl", evaluation_prompts(lang, seed))
        write_jsonl(out / f"val_{lang}.jsonl", evaluation_prompts(lang, seed, "validation"))
    write_jsonl(out / "pool.jsonl", generate_english(world_seed=seed))
    split = world(seed)
    summary = {"version": WORLD_VERSION, "seed": seed, "sft_pool": len(split.pool()),
               "heldout_facts": len(split.heldout_facts), "evaluation_prompts": len(evaluation_prompts("sw", seed)),
               "validation_prompts": len(evaluation_prompts("sw", seed, "validation")),
               "validation_facts": len(split.validation_facts), "validation_known": len(split.validation_known),
               "heldout_phrasings": {k: sorted(v) for k, v in split.heldout_phrasings.items()},
               "languages": list(LANGS)}
    atomic_write_json(summary_file, summary)
    return summary


def build(out: str | Path, seed: int = 0, epochs: int = 30, log=print) -> dict:
    """World `seed` on disk: its tasks (build_tasks), base_model/ and world.json. Cached per seed, epochs and
    WORLD_VERSION."""
    import json

    out = Path(out)
    summary_file = out / "world.json"
    if summary_file.is_file() and (out / "base_model" / "config.json").is_file():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        made = (summary.get("seed"), summary.get("epochs"), summary.get("version"),
                summary.get("pretraining", {}).get("threads"))
        if made == (seed, epochs, WORLD_VERSION, PRETRAIN_THREADS):  # a world of another thread count: rebuilt
            log(f"toy world already built in {out} (seed {seed}, version {WORLD_VERSION}); delete it to rebuild")
            return summary
    summary = {**build_tasks(out, seed, log=lambda message: None), "epochs": epochs}
    summary["pretraining"] = pretrain_base_model(out / "base_model", seed=seed, epochs=epochs, log=log, world_seed=seed)
    atomic_write_json(summary_file, summary)  # written last: its presence means the world is complete
    return summary


def target_text(lang: str, seed: int = 0, world_seed: int = WORLD_SEED) -> list[str]:
    """The world's plain text in `lang` for vocabulary transfer: each SFT-pool item's question and answer (known
    facts in training phrasings, nothing held out from evaluation), one line each, in an order set by `seed`."""
    check_lang(lang)
    facts = all_facts()
    lines = [" ".join(render(*facts[fact], lang, phrasing)) for fact, phrasing in world(world_seed).pool()]
    random.Random(seed).shuffle(lines)
    return lines


# The vocabulary-transfer study's donor (params/grids/toy_salt.yaml), fixed before any transfer was compared: a
# small target-language decoder (half the base model's width and layers), as SALT's donors are small PLMs next to
# the LLM, with as many tokens as the base model's vocabulary spent on one language instead of seven, as a
# monolingual PLM's are (the base model's 1024 already cut the world's Swahili at 1.7 tokens a word; a donor of
# 384 tokens cut it no finer).
DONOR_VOCAB, DONOR_HIDDEN, DONOR_LAYERS, DONOR_STEPS, HELD_OUT_LINES = 1024, 64, 2, 300, 32


def build_donor(out: str | Path, lang: str, seed: int = 0, world_seed: int = WORLD_SEED, log=print) -> dict:
    """A target-language PLM built locally (SIBLINGS.md 2's donor): a byte-level BPE tokenizer trained on
    `target_text(lang)` and a tiny decoder pretrained on it (clo_lib.stages.transfer.continued_pretraining, everything
    trained). Writes <out>/model, <out>/text.txt (its last HELD_OUT_LINES lines never trained on: the held-out text
    of the transfer's loss curve; set transfer.held_out to the same) and <out>/donor.json, written last."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    summary_file = out / "donor.json"
    # the recipe too: a donor made another way is built again, never reused
    wanted = {"lang": lang, "seed": seed, "world_seed": world_seed, "version": WORLD_VERSION,
              "recipe": [DONOR_VOCAB, DONOR_HIDDEN, DONOR_LAYERS, DONOR_STEPS, HELD_OUT_LINES]}
    if summary_file.is_file() and all(json.loads(summary_file.read_text(encoding="utf-8")).get(k) == v
                                      for k, v in wanted.items()):
        log(f"donor already built in {out}; delete it to rebuild")
        return json.loads(summary_file.read_text(encoding="utf-8"))
    lines = target_text(lang, seed, world_seed)
    train, held_out = lines[:-HELD_OUT_LINES], lines[-HELD_OUT_LINES:]
    atomic_write_text(out / "text.txt", "\n".join(lines) + "\n")
    make_tiny_causal_lm(out / "model", "llama", corpus=train, seed=seed, hidden_size=DONOR_HIDDEN,
                        num_layers=DONOR_LAYERS, vocab_size=DONOR_VOCAB)
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    log(f"pretraining the {lang} donor on {len(train)} lines for {DONOR_STEPS} steps")
    curve = continued_pretraining(model, tokenizer, train, held_out, DONOR_STEPS, PRETRAIN_LEARNING_RATE,
                                  trainable="all", seed=seed, eval_every=100)
    model.save_pretrained(out / "model")
    summary = {**wanted, "lines": len(lines), "vocab": len(tokenizer),
               "parameters": sum(p.numel() for p in model.parameters()), "curve": curve}
    log(f"donor held-out loss {curve[0]['loss']:.3f} -> {curve[-1]['loss']:.3f}")
    atomic_write_json(summary_file, summary)
    return summary


def ensure_world(cfg) -> None:
    """The toy world a toy config points at (the folder of its `base_model`), built with the defaults when it is
    missing (about a minute on a CPU, once), so the notebooks run on Colab or a fresh clone without `make demo`.
    A world already there is used as it is, whatever its pretraining epochs."""
    model = Path(cfg.model.name_or_path)
    if cfg.data.source != "toy" or model.name != "base_model" or (model.parent / "world.json").is_file():
        return
    print(f"building the toy world in {model.parent} (about a minute on a CPU, once)")
    build(model.parent)


def add_arguments(parser) -> None:
    """`clo toy build --out outputs/toy/world [--seed 0] [--tasks-only]`: build (or reuse) the toy world;
    --tasks-only writes its SFT pool and evaluation questions without pretraining a base model.
    `clo toy donor --lang sw --out DIR [--seed 0]`: a target-language donor PLM for vocabulary transfer."""
    parser.add_argument("what", choices=["build", "donor"])
    parser.add_argument("--lang", default="sw", choices=TARGETS, help="donor: its language")
    parser.add_argument("--out", default="outputs/toy/world")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--tasks-only", action="store_true", help="no base model: the pool and questions only")


def command(args) -> int:
    if args.what == "donor":
        summary = {k: v for k, v in build_donor(args.out, args.lang, args.seed).items() if k != "curve"}
    elif args.tasks_only:
        summary = build_tasks(args.out, args.seed)
    else:
        summary = build(args.out, args.seed, args.epochs)
    print(json.dumps(summary))
    return 0


def transfer_lesson_settings(language: str, donor: str = "", seed: int = 0,
                             grid_file: str | Path = "params/grids/toy_salt.yaml", model: str = "toy-salt") -> dict:
    """05_transfer's transfer.* settings: those of `model` in the toy study's grid (not a copy of them), `{lang}`
    filled in; with `donor` (a folder or hub id) that donor, else the toy world's, built in
    outputs/lesson/donor-<lang> (seconds) with its text for fastText and continued pretraining."""
    settings = {f"transfer.{key}": value.replace("{lang}", language) if isinstance(value, str) else value
                for key, value in read_yaml(Path(grid_file))["models"][model]["transfer"].items()}
    if donor:  # your own PLM; keep the study's text files only if they are in your language
        return {**settings, "transfer.donor": donor}
    built = Path(f"outputs/lesson/donor-{language}")
    build_donor(built, language, seed)
    return {**settings, "transfer.donor": str(built / "model"), "transfer.aux_text": str(built / "text.txt"),
            "transfer.pretrain_text": str(built / "text.txt")}
