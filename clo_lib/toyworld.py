"""The toy world: a small synthetic instruction world in English and the paper's six target languages.

What it is an analogue of (PAPER.md): an English instruction set (oasst1) translated by an MT model into a target
language. Here the instructions are templated questions over a small knowledge base, written in real words of each
language (so that lingua can tell the languages apart, as it does for real answers), and the "MT model" is an exact
translator: it parses a sentence of the world back into (template, slots) and renders it in another language.

Design choices, made for being a fair analogue rather than for any method to win:
- Four kinds of question, each a template per language: the colour of a thing, the kind of a thing (fruit,
  drink, plant, animal, vehicle), the number of legs of an animal, and the sum of two numbers.
- Numbers are written as digits in every language, as they mostly are in real text; every other word differs
  (English and German say "the sum of", not "plus", which the two languages share and language ID cannot tell).
- The sentences are short and grammatical enough for language ID, not linguistically perfect: German articles are
  part of the noun entry, Korean avoids particles that depend on the noun, Yoruba keeps its tone marks.
- Every language has the same facts and the same templates, so no language is easier by construction.

Public names: `LANGS`, `render(kind, slots, lang)`, `all_items()`, `generate_english(n, seed)`, `translate(text, src,
tgt)` and `ToyTranslationError` for text that is not a sentence of this world.
"""

from __future__ import annotations

import random
import re
import string
from functools import lru_cache
from pathlib import Path

from clo_lib.pairs import DEFAULT_PROMPT_TEMPLATE

LANGS = ("en", "zh", "de", "ko", "id", "sw", "yo")
# Raised whenever what the world generates changes (questions, answers, translations, the base model's corpus): a
# cached world or cached toy translations of another version are not reused.
WORLD_VERSION = 1

# thing -> its name per language (German with its article, as the sentences need it)
THINGS: dict[str, dict[str, str]] = {
    "banana": dict(en="banana", de="die Banane", id="pisang", sw="ndizi", yo="ọ̀gẹ̀dẹ̀", zh="香蕉", ko="바나나"),
    "apple": dict(en="apple", de="der Apfel", id="apel", sw="tufaha", yo="ápù", zh="苹果", ko="사과"),
    "lemon": dict(en="lemon", de="die Zitrone", id="lemon", sw="limau", yo="ọsàn wẹ́wẹ́", zh="柠檬", ko="레몬"),
    "tomato": dict(en="tomato", de="die Tomate", id="tomat", sw="nyanya", yo="tòmátì", zh="西红柿", ko="토마토"),
    "milk": dict(en="milk", de="die Milch", id="susu", sw="maziwa", yo="wàrà", zh="牛奶", ko="우유"),
    "coffee": dict(en="coffee", de="der Kaffee", id="kopi", sw="kahawa", yo="kọfí", zh="咖啡", ko="커피"),
    "grass": dict(en="grass", de="das Gras", id="rumput", sw="nyasi", yo="koríko", zh="草", ko="풀"),
    "leaf": dict(en="leaf", de="das Blatt", id="daun", sw="jani", yo="ewé igi", zh="叶子", ko="잎"),
    "crow": dict(en="crow", de="die Krähe", id="gagak", sw="kunguru", yo="ẹyẹ ìwò", zh="乌鸦", ko="까마귀"),
    "frog": dict(en="frog", de="der Frosch", id="katak", sw="chura", yo="àkèré", zh="青蛙", ko="개구리"),
    "cow": dict(en="cow", de="die Kuh", id="sapi", sw="ng'ombe", yo="màlúù", zh="牛", ko="소"),
    "chicken": dict(en="chicken", de="das Huhn", id="ayam", sw="kuku", yo="adìẹ", zh="鸡", ko="닭"),
    "spider": dict(en="spider", de="die Spinne", id="laba-laba", sw="buibui", yo="alántakùn", zh="蜘蛛", ko="거미"),
    "ant": dict(en="ant", de="die Ameise", id="semut", sw="sisimizi", yo="èèrà", zh="蚂蚁", ko="개미"),
    "snake": dict(en="snake", de="die Schlange", id="ular", sw="nyoka", yo="ejò", zh="蛇", ko="뱀"),
    "fish": dict(en="fish", de="der Fisch", id="ikan", sw="samaki", yo="ẹja", zh="鱼", ko="물고기"),
    "car": dict(en="car", de="das Auto", id="mobil", sw="gari", yo="ọkọ̀ ayọ́kẹ́lẹ́", zh="汽车", ko="자동차"),
    "bicycle": dict(en="bicycle", de="das Fahrrad", id="sepeda", sw="baiskeli", yo="kẹ̀kẹ́", zh="自行车", ko="자전거"),
    "snow": dict(en="snow", de="der Schnee", id="salju", sw="theluji", yo="yìnyín", zh="雪", ko="눈"),
    "coal": dict(en="coal", de="die Kohle", id="arang", sw="makaa", yo="èédú", zh="煤", ko="석탄"),
}
COLORS: dict[str, dict[str, str]] = {
    "yellow": dict(en="yellow", de="gelb", id="kuning", sw="njano", yo="ofeefee", zh="黄色", ko="노란색"),
    "red": dict(en="red", de="rot", id="merah", sw="nyekundu", yo="pupa", zh="红色", ko="빨간색"),
    "green": dict(en="green", de="grün", id="hijau", sw="kijani", yo="ewé", zh="绿色", ko="초록색"),
    "white": dict(en="white", de="weiß", id="putih", sw="nyeupe", yo="funfun", zh="白色", ko="흰색"),
    "black": dict(en="black", de="schwarz", id="hitam", sw="nyeusi", yo="dúdú", zh="黑色", ko="검은색"),
}
KINDS: dict[str, dict[str, str]] = {
    "fruit": dict(en="a fruit", de="eine Frucht", id="buah", sw="tunda", yo="èso", zh="水果", ko="과일"),
    "drink": dict(en="a drink", de="ein Getränk", id="minuman", sw="kinywaji", yo="ohun mímu", zh="饮料", ko="음료"),
    "plant": dict(en="a plant", de="eine Pflanze", id="tumbuhan", sw="mmea", yo="ohun ọ̀gbìn", zh="植物", ko="식물"),
    "animal": dict(en="an animal", de="ein Tier", id="hewan", sw="mnyama", yo="ẹranko", zh="动物", ko="동물"),
    "vehicle": dict(en="a vehicle", de="ein Fahrzeug", id="kendaraan", sw="chombo cha usafiri", yo="ọkọ̀",
                    zh="交通工具", ko="탈것"),
}

# The knowledge base: which facts hold. Facts are the same in every language.
COLOR_OF = {"banana": "yellow", "apple": "red", "lemon": "yellow", "tomato": "red", "milk": "white",
            "coffee": "black", "grass": "green", "leaf": "green", "crow": "black", "frog": "green",
            "snow": "white", "coal": "black"}
KIND_OF = {"banana": "fruit", "apple": "fruit", "lemon": "fruit", "tomato": "fruit", "milk": "drink",
           "coffee": "drink", "grass": "plant", "leaf": "plant", "crow": "animal", "frog": "animal", "cow": "animal",
           "chicken": "animal", "spider": "animal", "ant": "animal", "snake": "animal", "fish": "animal",
           "car": "vehicle", "bicycle": "vehicle"}
LEGS_OF = {"crow": 2, "frog": 4, "cow": 4, "chicken": 2, "spider": 8, "ant": 6, "snake": 0, "fish": 0}
MAX_ADDEND = 12  # 169 sums: arithmetic stays a part of the world, not most of it

# Templates: (question, answer) per language. {t} is a thing, {T} the same capitalised at a sentence start,
# {c} a colour, {k} a kind, {n}, {a}, {b}, {s} digits.
TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "color": {
        "en": ("What color is the {t}?", "The {t} is {c}."),
        "de": ("Welche Farbe hat {t}?", "{T} ist {c}."),
        "id": ("Apa warna {t}?", "Warna {t} adalah {c}."),
        "sw": ("{T} ina rangi gani?", "{T} ina rangi ya {c}."),
        "yo": ("Àwọ̀ wo ni {t} ní?", "{T} ní àwọ̀ {c}."),
        "zh": ("{t}是什么颜色的？", "{t}是{c}的。"),
        "ko": ("{t}의 색은 무엇입니까?", "{t}의 색은 {c}입니다."),
    },
    "kind": {
        "en": ("What kind of thing is the {t}?", "The {t} is {k}."),
        "de": ("Was für ein Ding ist {t}?", "{T} ist {k}."),
        "id": ("{T} termasuk jenis apa?", "{T} adalah {k}."),
        "sw": ("{T} ni kitu cha aina gani?", "{T} ni {k}."),
        "yo": ("Irú nǹkan wo ni {t}?", "{T} jẹ́ {k}."),
        "zh": ("{t}是哪一类东西？", "{t}是一种{k}。"),
        "ko": ("{t}의 종류는 무엇입니까?", "{t}의 종류는 {k}입니다."),
    },
    "legs": {
        "en": ("How many legs does the {t} have?", "The {t} has {n} legs."),
        "de": ("Wie viele Beine hat {t}?", "{T} hat {n} Beine."),
        "id": ("Berapa jumlah kaki {t}?", "{T} memiliki {n} kaki."),
        "sw": ("{T} ana miguu mingapi?", "{T} ana miguu {n}."),
        "yo": ("Ẹsẹ̀ mélòó ni {t} ní?", "{T} ní ẹsẹ̀ {n}."),
        "zh": ("{t}有几条腿？", "{t}有{n}条腿。"),
        "ko": ("{t}의 다리는 몇 개입니까?", "{t}의 다리는 {n}개입니다."),
    },
    "sum": {
        "en": ("What is the sum of {a} and {b}?", "The sum of {a} and {b} is {s}."),
        "de": ("Was ist die Summe von {a} und {b}?", "Die Summe von {a} und {b} ist {s}."),
        "id": ("Berapa {a} tambah {b}?", "{a} tambah {b} adalah {s}."),
        "sw": ("{a} jumlisha {b} ni ngapi?", "{a} jumlisha {b} ni {s}."),
        "yo": ("Kí ni {a} àti {b} papọ̀?", "{a} àti {b} papọ̀ jẹ́ {s}."),
        "zh": ("{a}加{b}等于多少？", "{a}加{b}等于{s}。"),
        "ko": ("{a} 더하기 {b}는 얼마입니까?", "{a} 더하기 {b}는 {s}입니다."),
    },
}
# Which lexicon fills each slot letter; digits are the same everywhere.
_SLOT_LEXICON = {"t": THINGS, "T": THINGS, "c": COLORS, "k": KINDS}


class ToyTranslationError(ValueError):
    """Raised for text that is not a sentence of the toy world, or a language the world does not have."""


def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ToyTranslationError(f"language {lang!r} is not in the toy world; it has {', '.join(LANGS)}")


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, slots: dict, lang: str) -> str:
    values = {}
    for letter, value in slots.items():
        lexicon = _SLOT_LEXICON.get(letter)
        values[letter] = lexicon[value][lang] if lexicon else str(value)
    if "t" in values:
        values["T"] = _capitalize(values["t"])
    return template.format(**values)


def render(kind: str, slots: dict, lang: str) -> tuple[str, str]:
    """(question, answer) of one item of the world in `lang`. Slots hold English keys and ints."""
    _check_lang(lang)
    question, answer = TEMPLATES[kind][lang]
    return _fill(question, slots, lang), _fill(answer, slots, lang)


def all_items() -> list[tuple[str, dict]]:
    """Every (kind, slots) the knowledge base supports, in a fixed order: the whole world."""
    items: list[tuple[str, dict]] = []
    items += [("color", {"t": t, "c": c}) for t, c in COLOR_OF.items()]
    items += [("kind", {"t": t, "k": k}) for t, k in KIND_OF.items()]
    items += [("legs", {"t": t, "n": n}) for t, n in LEGS_OF.items()]
    items += [("sum", {"a": a, "b": b, "s": a + b}) for a in range(MAX_ADDEND + 1) for b in range(MAX_ADDEND + 1)]
    return items


HELDOUT_SHARE = 0.2  # of each kind of question: never in SFT data, asked at evaluation
WORLD_SEED = 0  # the split into SFT pool and held-out questions is part of the world, not of a run


def split_items(seed: int = WORLD_SEED) -> tuple[list[int], list[int]]:
    """(SFT-pool indices, held-out indices) into all_items(): a fixed share of every kind is held out."""
    by_kind: dict[str, list[int]] = {}
    for index, (kind, _) in enumerate(all_items()):
        by_kind.setdefault(kind, []).append(index)
    pool, heldout = [], []
    rng = random.Random(seed)
    for indices in by_kind.values():
        indices = indices[:]
        rng.shuffle(indices)
        cut = max(1, round(HELDOUT_SHARE * len(indices)))
        heldout += sorted(indices[:cut])
        pool += sorted(indices[cut:])
    return sorted(pool), sorted(heldout)


def generate_english(n: int | None = None, seed: int = 0) -> list[dict]:
    """English SFT records `{id, prompt_en, response_en, kind}` from the SFT pool, in a seeded order.

    With n=None every pool item once; otherwise the first n of the seeded order. Held-out questions never appear.
    """
    items = all_items()
    order, _ = split_items()
    order = order[:]
    random.Random(seed).shuffle(order)
    if n is not None:
        if not 1 <= n <= len(order):
            raise ValueError(f"n = {n}; expected 1 to {len(order)} (the toy world's SFT pool)")
        order = order[:n]
    records = []
    for index in order:
        kind, slots = items[index]
        prompt, response = render(kind, slots, "en")
        records.append({"id": f"toy-{index:04d}", "prompt_en": prompt, "response_en": response, "kind": kind})
    return records


def heldout_prompts(lang: str) -> list[dict]:
    """Evaluation rows for held-out questions: `{id, kind, prompt_en, prompt_tgt, answer_en, answer_tgt}`."""
    _check_lang(lang)
    items = all_items()
    rows = []
    for index in split_items()[1]:
        kind, slots = items[index]
        (q_en, a_en), (q_tgt, a_tgt) = render(kind, slots, "en"), render(kind, slots, lang)
        rows.append({"id": f"toy-{index:04d}", "kind": kind, "prompt_en": q_en, "prompt_tgt": q_tgt,
                     "answer_en": a_en, "answer_tgt": a_tgt})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The exact translator: parse a sentence back into (template, slots), render it in the other language


@lru_cache(maxsize=None)
def _parsers(lang: str) -> list[tuple[re.Pattern, str, int, dict[str, dict[str, str]]]]:
    """One regex per (kind, question/answer) template of `lang`, with reverse lexicons per slot."""
    parsers = []
    for kind, per_lang in TEMPLATES.items():
        for part, template in enumerate(per_lang[lang]):
            reverse: dict[str, dict[str, str]] = {}
            pattern, seen = "", set()
            for literal, letter, _, _ in string.Formatter().parse(template):
                pattern += re.escape(literal)
                if letter is None:
                    continue
                lexicon = _SLOT_LEXICON.get(letter)
                if lexicon:
                    surface = {(_capitalize(v[lang]) if letter == "T" else v[lang]): key for key, v in lexicon.items()}
                    reverse[letter] = surface
                    alternatives = "|".join(re.escape(s) for s in sorted(surface, key=len, reverse=True))
                else:
                    alternatives = r"\d+"
                # A slot used twice ({t} and {T}) must be the same thing: later uses become back-references.
                pattern += f"(?P={letter})" if letter in seen else f"(?P<{letter}>{alternatives})"
                seen.add(letter)
            parsers.append((re.compile(f"^{pattern}$"), kind, part, reverse))
    return parsers


def parse(text: str, lang: str) -> tuple[str, int, dict]:
    """(kind, 0 for a question / 1 for an answer, slots) of one sentence of the world in `lang`."""
    _check_lang(lang)
    for pattern, kind, part, reverse in _parsers(lang):
        match = pattern.match(text.strip())
        if match:
            slots: dict = {}
            for letter, surface in match.groupdict().items():
                key = "t" if letter == "T" else letter
                slots[key] = reverse[letter][surface] if letter in reverse else int(surface)
            return kind, part, slots
    raise ToyTranslationError(f"not a sentence of the toy world in {lang}: {text!r}")


def translate(text: str, src: str, tgt: str) -> str:
    """Exact translation of one sentence of the world from `src` to `tgt`."""
    _check_lang(tgt)
    kind, part, slots = parse(text, src)
    # A question carries only its own slots (no answer), so fill just the matching template.
    return _fill(TEMPLATES[kind][tgt][part], slots, tgt)


# ---------------------------------------------------------------------------------------------------------------
# The English-centric base model: pretrained on CPU in minutes, cached under outputs/

TEMPLATE = DEFAULT_PROMPT_TEMPLATE  # the base model learns the template its runs are prompted with
TARGETS = tuple(lang for lang in LANGS if lang != "en")
ENGLISH_REPEATS = 3  # each English question-answer pair is seen this often per pretraining epoch
PLAIN_SHARE = 0.5  # share of SFT-pool items whose target-language sentences appear as plain text


def pretraining_corpus(seed: int = 0) -> list[str]:
    """Documents of the base model's pretraining, like an English-centric LLM's.

    - English instruction-style text: every question of the world in the instruction template with its answer, the
      held-out ones included. All knowledge is taught here, in English only.
    - Plain target-language text: the question and answer sentences of half the SFT-pool items, per language, as
      running text without the template. The model learns the languages' words, never to answer in them, and sees
      no held-out fact in a target language.
    """
    rng = random.Random(seed)
    documents = []
    for kind, slots in all_items():
        question, answer = render(kind, slots, "en")
        documents += [TEMPLATE.replace("{prompt}", question) + answer] * ENGLISH_REPEATS
    pool, _ = split_items()
    items = all_items()
    for lang in TARGETS:
        for index in rng.sample(pool, round(PLAIN_SHARE * len(pool))):
            documents.append(" ".join(render(*items[index], lang)))
    rng.shuffle(documents)
    return documents


def pretrain_base_model(out_dir: str | Path, seed: int = 0, epochs: int = 30, hidden_size: int = 128,
                        num_layers: int = 4, batch_size: int = 32, learning_rate: float = 3e-3,
                        log=print) -> dict:
    """Train the toy base model from scratch on `pretraining_corpus(seed)`; save it to `out_dir`. Deterministic."""
    import math
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clo_lib.tiny import make_tiny_causal_lm

    out_dir = Path(out_dir)
    documents = pretraining_corpus(seed)
    every_sentence = [text for item in all_items() for lang in LANGS for text in render(*item, lang)]
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
        if (epoch + 1) % 10 == 0 or epoch == epochs - 1:
            log(f"pretraining epoch {epoch + 1}/{epochs}: loss {sum(losses[-20:]) / len(losses[-20:]):.3f} "
                f"({time.perf_counter() - start:.0f} s)")
    model.save_pretrained(out_dir)
    return {"documents": len(documents), "steps": steps, "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "seconds": round(time.perf_counter() - start, 1), "parameters": sum(p.numel() for p in model.parameters())}


def build(out: str | Path, seed: int = 0, epochs: int = 30, log=print) -> dict:
    """The toy world on disk: base_model/, eval_<lang>.jsonl (held-out questions) and world.json. Cached per seed."""
    import json

    from clo_lib.io import atomic_write_json, write_jsonl

    out = Path(out)
    summary_file = out / "world.json"
    if summary_file.is_file() and (out / "base_model" / "config.json").is_file():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        if (summary.get("seed"), summary.get("epochs"), summary.get("version")) == (seed, epochs, WORLD_VERSION):
            log(f"toy world already built in {out} (seed {seed}, version {WORLD_VERSION}); delete it to rebuild")
            return summary
    for lang in TARGETS:
        write_jsonl(out / f"eval_{lang}.jsonl", heldout_prompts(lang))
    pool, heldout = split_items()
    stats = pretrain_base_model(out / "base_model", seed=seed, epochs=epochs, log=log)
    summary = {"version": WORLD_VERSION, "seed": seed, "epochs": epochs, "sft_pool": len(pool), "heldout": len(heldout),
               "languages": list(LANGS), "pretraining": stats}
    atomic_write_json(summary_file, summary)  # written last: its presence means the world is complete
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m clo_lib.toyworld build --out outputs/toy/world [--seed 0]`: build (or reuse) the toy world."""
    import argparse
    import json
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(prog="python -m clo_lib.toyworld", description=main.__doc__)
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--out", default="outputs/toy/world")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    print(json.dumps(build(args.out, args.seed, args.epochs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
