"""The toy world: a small synthetic instruction world in English and the paper's six target languages.

What it is an analogue of (PAPER.md): an English instruction set (oasst1) translated by an MT model into a target
language, and an English-centric LLM that knows the facts in English and the target language only as plain text.
Here the instructions are questions over a small knowledge base, written in real words of each language (so that
lingua can tell the languages apart, as it does for real answers), and the "MT model" is an exact translator: it
parses a sentence of the world back into (kind, phrasing, slots) and renders it in another language.

Design (version 2, and version 3's validation split), written down before any CLO result was looked at, to make
the paper's premise testable: with little target-language data, SFT stays English-biased on what it has not seen.
- Four kinds of question, balanced: 16 facts each (the colour of a thing, the kind of a thing, the number of legs
  of an animal, the sum of two numbers from 1 to 9).
- Eight phrasings per kind and language: four frames (bare, "Question: ...", "Please answer this: ...", "I would
  like to know something: ...") times two question forms, each one sentence (translation splits at sentence
  ends). A run's translator keeps the phrasing.
- Answers are sentences ("The spider has 8 legs."), one form per kind and language.
- The world's seed holds out 20 % of the facts of each kind and one of the two question forms of each kind (its
  four phrasings). No SFT record has a held-out fact or the held-out form, and no target-language text of the
  base model's pretraining has either, so the held-out form's words are new in the target language, as a real
  evaluation set's phrasings are new to a small SFT set. Evaluation asks `new_phrasing` questions (known facts in
  the held-out form: does answering in the prompt's language generalise to unseen forms?) and `new_fact` questions
  (held-out facts in every phrasing: does knowledge taught in English carry over?).
- Version 3 adds a validation split, disjoint from test, for choosing settings (a grid's `search`): one more
  held-out fact per kind (validation's new_fact) and a quarter of the remaining known facts, whose held-out form is
  asked at validation only (validation's new_phrasing). Test keeps version 2's held-out facts and form: 240
  questions per language (144 new_phrasing, 96 new_fact); validation has 80 (48, 32); the SFT pool 192 items.
- A first version held out 3 of the 8 phrasings (one frame wholly, one frame with one form) and kept both forms
  in SFT data: SFT at 64 examples then answered 97-99 % of the held-out phrasings in the target language, leaving
  no English bias to study. That was decided from the base model and SFT alone, before any CLO run.
- Numbers are digits in every language, as they mostly are in real text; every other word differs.
- The sentences are short and grammatical enough for language ID, not linguistically perfect: German articles are
  part of the noun entry, Korean avoids particles that depend on the noun, Yoruba keeps its tone marks.
- Every language has the same facts and phrasings, so no language is easier by construction.

Public names: `LANGS`, `KINDS_OF_QUESTION`, `render(kind, slots, lang, phrasing)`, `all_facts()`, `World` and
`world(seed)`, `generate_english(n, seed, world_seed)`, `evaluation_prompts(lang, world_seed, split)`, `translate(text,
src, tgt)` and `ToyTranslationError` for text that is not a sentence of this world.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from functools import lru_cache

from clo_lib.common.errors import InputError
from clo_lib.method.pairs import DEFAULT_PROMPT_TEMPLATE

LANGS = ("en", "zh", "de", "ko", "id", "sw", "yo")
# Raised whenever what the world generates changes (questions, answers, translations, the base model's corpus): a
# cached world or cached toy translations of another version are not reused.
WORLD_VERSION = 3

# thing -> its name per language (German with its article, as the sentences need it)
THINGS: dict[str, dict[str, str]] = {
    "banana": dict(en="banana", de="die Banane", id="pisang", sw="ndizi", yo="ọ̀gẹ̀dẹ̀", zh="香蕉", ko="바나나"),
    "apple": dict(en="apple", de="der Apfel", id="apel", sw="tufaha", yo="ápù", zh="苹果", ko="사과"),
    "lemon": dict(en="lemon", de="die Zitrone", id="lemon", sw="limau", yo="ọsàn wẹ́wẹ́", zh="柠檬", ko="레몬"),
    "tomato": dict(en="tomato", de="die Tomate", id="tomat", sw="nyanya", yo="tòmátì", zh="西红柿", ko="토마토"),
    "strawberry": dict(en="strawberry", de="die Erdbeere", id="stroberi", sw="stroberi", yo="sítírọ́bẹ́rì", zh="草莓",
                       ko="딸기"),
    "cucumber": dict(en="cucumber", de="die Gurke", id="mentimun", sw="tango", yo="kùkúmbà", zh="黄瓜", ko="오이"),
    "milk": dict(en="milk", de="die Milch", id="susu", sw="maziwa", yo="wàrà", zh="牛奶", ko="우유"),
    "coffee": dict(en="coffee", de="der Kaffee", id="kopi", sw="kahawa", yo="kọfí", zh="咖啡", ko="커피"),
    "tea": dict(en="tea", de="der Tee", id="teh", sw="chai", yo="tíì", zh="茶", ko="차"),
    "sugar": dict(en="sugar", de="der Zucker", id="gula", sw="sukari", yo="ṣúgà", zh="糖", ko="설탕"),
    "grass": dict(en="grass", de="das Gras", id="rumput", sw="nyasi", yo="koríko", zh="草", ko="풀"),
    "leaf": dict(en="leaf", de="das Blatt", id="daun", sw="jani", yo="ewé igi", zh="叶子", ko="잎"),
    "tree": dict(en="tree", de="der Baum", id="pohon", sw="mti", yo="igi", zh="树", ko="나무"),
    "sky": dict(en="sky", de="der Himmel", id="langit", sw="anga", yo="ojú ọ̀run", zh="天空", ko="하늘"),
    "crow": dict(en="crow", de="die Krähe", id="gagak", sw="kunguru", yo="ẹyẹ ìwò", zh="乌鸦", ko="까마귀"),
    "frog": dict(en="frog", de="der Frosch", id="katak", sw="chura", yo="àkèré", zh="青蛙", ko="개구리"),
    "cow": dict(en="cow", de="die Kuh", id="sapi", sw="ng'ombe", yo="màlúù", zh="牛", ko="소"),
    "chicken": dict(en="chicken", de="das Huhn", id="ayam", sw="kuku", yo="adìẹ", zh="鸡", ko="닭"),
    "spider": dict(en="spider", de="die Spinne", id="laba-laba", sw="buibui", yo="alántakùn", zh="蜘蛛", ko="거미"),
    "ant": dict(en="ant", de="die Ameise", id="semut", sw="sisimizi", yo="èèrà", zh="蚂蚁", ko="개미"),
    "snake": dict(en="snake", de="die Schlange", id="ular", sw="nyoka", yo="ejò", zh="蛇", ko="뱀"),
    "fish": dict(en="fish", de="der Fisch", id="ikan", sw="samaki", yo="ẹja", zh="鱼", ko="물고기"),
    "horse": dict(en="horse", de="das Pferd", id="kuda", sw="farasi", yo="ẹṣin", zh="马", ko="말"),
    "dog": dict(en="dog", de="der Hund", id="anjing", sw="mbwa", yo="ajá", zh="狗", ko="개"),
    "duck": dict(en="duck", de="die Ente", id="bebek", sw="bata", yo="pẹ́pẹ́yẹ", zh="鸭子", ko="오리"),
    "bee": dict(en="bee", de="die Biene", id="lebah", sw="nyuki", yo="kòkòrò oyin", zh="蜜蜂", ko="벌"),
    "goat": dict(en="goat", de="die Ziege", id="kambing", sw="mbuzi", yo="ewúrẹ́", zh="山羊", ko="염소"),
    "cat": dict(en="cat", de="die Katze", id="kucing", sw="paka", yo="ológbò", zh="猫", ko="고양이"),
    "crab": dict(en="crab", de="die Krabbe", id="kepiting", sw="kaa", yo="akan", zh="螃蟹", ko="게"),
    "butterfly": dict(en="butterfly", de="der Schmetterling", id="kupu-kupu", sw="kipepeo", yo="labalábá", zh="蝴蝶",
                      ko="나비"),
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
    "blue": dict(en="blue", de="blau", id="biru", sw="bluu", yo="búlúù", zh="蓝色", ko="파란색"),
}
KINDS: dict[str, dict[str, str]] = {
    "fruit": dict(en="a fruit", de="eine Frucht", id="buah", sw="tunda", yo="èso", zh="水果", ko="과일"),
    "drink": dict(en="a drink", de="ein Getränk", id="minuman", sw="kinywaji", yo="ohun mímu", zh="饮料", ko="음료"),
    "plant": dict(en="a plant", de="eine Pflanze", id="tumbuhan", sw="mmea", yo="ohun ọ̀gbìn", zh="植物", ko="식물"),
    "animal": dict(en="an animal", de="ein Tier", id="hewan", sw="mnyama", yo="ẹranko", zh="动物", ko="동물"),
    "vehicle": dict(en="a vehicle", de="ein Fahrzeug", id="kendaraan", sw="chombo cha usafiri", yo="ọkọ̀",
                    zh="交通工具", ko="탈것"),
}

# The knowledge base: which facts hold, the same in every language; 16 facts of each kind of question.
COLOR_OF = {"banana": "yellow", "apple": "red", "lemon": "yellow", "tomato": "red", "strawberry": "red",
            "cucumber": "green", "milk": "white", "coffee": "black", "sugar": "white", "grass": "green",
            "leaf": "green", "sky": "blue", "crow": "black", "frog": "green", "snow": "white", "coal": "black"}
KIND_OF = {"banana": "fruit", "apple": "fruit", "lemon": "fruit", "strawberry": "fruit", "milk": "drink",
           "coffee": "drink", "tea": "drink", "grass": "plant", "leaf": "plant", "tree": "plant", "crow": "animal",
           "frog": "animal", "cow": "animal", "spider": "animal", "car": "vehicle", "bicycle": "vehicle"}
LEGS_OF = {"crow": 2, "frog": 4, "cow": 4, "chicken": 2, "spider": 8, "ant": 6, "snake": 0, "fish": 0, "horse": 4,
           "dog": 4, "duck": 2, "bee": 6, "goat": 4, "cat": 4, "crab": 10, "butterfly": 6}
SUMS = [(a, b) for a in range(1, 10) for b in range(1, 10)][3::5][:16]  # 16 spread-out sums of digits 1 to 9

# Phrasings: a frame around one of two question forms. {q} is the question; in the forms, {t} is a thing, {T} the
# same capitalised at a sentence start, {c} a colour, {k} a kind, {n}, {a}, {b}, {s} digits.
FRAMES: dict[str, tuple[str, str, str, str]] = {
    "en": ("{q}", "Question: {q}", "Please answer this: {q}", "I would like to know something: {q}"),
    "de": ("{q}", "Frage: {q}", "Bitte beantworte das: {q}", "Ich möchte etwas wissen: {q}"),
    "id": ("{q}", "Pertanyaan: {q}", "Tolong jawab ini: {q}", "Saya ingin tahu sesuatu: {q}"),
    "sw": ("{q}", "Swali: {q}", "Tafadhali jibu hili: {q}", "Ningependa kujua jambo: {q}"),
    "yo": ("{q}", "Ìbéèrè: {q}", "Jọ̀wọ́ dáhùn èyí: {q}", "Mo fẹ́ mọ nǹkan kan: {q}"),
    "zh": ("{q}", "问题：{q}", "请回答这个：{q}", "我想知道一件事：{q}"),
    "ko": ("{q}", "질문: {q}", "이것에 답해 주세요: {q}", "알고 싶은 것이 있습니다: {q}"),
}
QUESTIONS: dict[str, dict[str, tuple[str, str]]] = {
    "color": {
        "en": ("What color is the {t}?", "Which color does the {t} have?"),
        "de": ("Welche Farbe hat {t}?", "Wie sieht {t} farblich aus?"),
        "id": ("Apa warna {t}?", "{T} berwarna apa?"),
        "sw": ("{T} ina rangi gani?", "Rangi ya {t} ni ipi?"),
        "yo": ("Àwọ̀ wo ni {t} ní?", "Kí ni àwọ̀ {t}?"),
        "zh": ("{t}是什么颜色的？", "{t}的颜色是什么？"),
        "ko": ("{t}의 색은 무엇입니까?", "{t}의 색깔은 어떻습니까?"),
    },
    "kind": {
        "en": ("What kind of thing is the {t}?", "What sort of thing is the {t}?"),
        "de": ("Was für ein Ding ist {t}?", "Zu welcher Art gehört {t}?"),
        "id": ("{T} termasuk jenis apa?", "Apa jenis {t}?"),
        "sw": ("{T} ni kitu cha aina gani?", "Aina ya {t} ni ipi?"),
        "yo": ("Irú nǹkan wo ni {t}?", "Kí ni irú {t}?"),
        "zh": ("{t}是哪一类东西？", "{t}属于什么类别？"),
        "ko": ("{t}의 종류는 무엇입니까?", "{t}의 분류는 무엇입니까?"),
    },
    "legs": {
        "en": ("How many legs does the {t} have?", "What is the number of legs of the {t}?"),
        "de": ("Wie viele Beine hat {t}?", "Auf wie vielen Beinen läuft {t}?"),
        "id": ("Berapa jumlah kaki {t}?", "{T} punya berapa kaki?"),
        "sw": ("{T} ana miguu mingapi?", "Idadi ya miguu ya {t} ni ngapi?"),
        "yo": ("Ẹsẹ̀ mélòó ni {t} ní?", "Iye ẹsẹ̀ {t} jẹ́ mélòó?"),
        "zh": ("{t}有几条腿？", "{t}的腿有多少条？"),
        "ko": ("{t}의 다리는 몇 개입니까?", "{t}에게는 다리가 몇 개 있습니까?"),
    },
    "sum": {
        "en": ("What is the sum of {a} and {b}?", "How much is {a} added to {b}?"),
        "de": ("Was ist die Summe von {a} und {b}?", "Wie viel ergibt {a} zusammen mit {b}?"),
        "id": ("Berapa {a} tambah {b}?", "Berapakah jumlah dari {a} dan {b}?"),
        "sw": ("{a} jumlisha {b} ni ngapi?", "Jumla ya {a} na {b} ni ngapi?"),
        "yo": ("Kí ni {a} àti {b} papọ̀?", "Àpapọ̀ {a} àti {b} jẹ́ mélòó?"),
        "zh": ("{a}加{b}等于多少？", "{a}和{b}的和是多少？"),
        "ko": ("{a} 더하기 {b}는 얼마입니까?", "{a} 그리고 {b}의 합은 얼마입니까?"),
    },
}
ANSWERS: dict[str, dict[str, str]] = {
    "color": dict(en="The {t} is {c}.", de="{T} ist {c}.", id="Warna {t} adalah {c}.", sw="{T} ina rangi ya {c}.",
                  yo="{T} ní àwọ̀ {c}.", zh="{t}是{c}的。", ko="{t}의 색은 {c}입니다."),
    "kind": dict(en="The {t} is {k}.", de="{T} ist {k}.", id="{T} adalah {k}.", sw="{T} ni {k}.", yo="{T} jẹ́ {k}.",
                 zh="{t}是一种{k}。", ko="{t}의 종류는 {k}입니다."),
    "legs": dict(en="The {t} has {n} legs.", de="{T} hat {n} Beine.", id="{T} memiliki {n} kaki.",
                 sw="{T} ana miguu {n}.", yo="{T} ní ẹsẹ̀ {n}.", zh="{t}有{n}条腿。", ko="{t}의 다리는 {n}개입니다."),
    "sum": dict(en="The sum of {a} and {b} is {s}.", de="Die Summe von {a} und {b} ist {s}.",
                id="{a} tambah {b} adalah {s}.", sw="{a} jumlisha {b} ni {s}.", yo="{a} àti {b} papọ̀ jẹ́ {s}.",
                zh="{a}加{b}等于{s}。", ko="{a} 더하기 {b}는 {s}입니다."),
}
KINDS_OF_QUESTION = tuple(QUESTIONS)
PHRASINGS = 8  # phrasing p: frame p // 2 around question form p % 2
# Which lexicon fills each slot letter; digits are the same everywhere.
_SLOT_LEXICON = {"t": THINGS, "T": THINGS, "c": COLORS, "k": KINDS}


class ToyTranslationError(InputError):
    """Raised for text that is not a sentence of the toy world, or a language the world does not have."""


def check_lang(lang: str) -> None:
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


def question_template(kind: str, lang: str, phrasing: int) -> str:
    return FRAMES[lang][phrasing // 2].replace("{q}", QUESTIONS[kind][lang][phrasing % 2])


def render(kind: str, slots: dict, lang: str, phrasing: int = 0) -> tuple[str, str]:
    """(question, answer) of one fact of the world in `lang` and phrasing 0-7. Slots hold English keys and ints."""
    check_lang(lang)
    return _fill(question_template(kind, lang, phrasing), slots, lang), _fill(ANSWERS[kind][lang], slots, lang)


def all_facts() -> list[tuple[str, dict]]:
    """Every (kind, slots) of the knowledge base, in a fixed order: 16 of each kind."""
    facts: list[tuple[str, dict]] = []
    facts += [("color", {"t": t, "c": c}) for t, c in COLOR_OF.items()]
    facts += [("kind", {"t": t, "k": k}) for t, k in KIND_OF.items()]
    facts += [("legs", {"t": t, "n": n}) for t, n in LEGS_OF.items()]
    facts += [("sum", {"a": a, "b": b, "s": a + b}) for a, b in SUMS]
    return facts


HELDOUT_FACT_SHARE = 0.2  # of each kind's facts: never in SFT data or target-language text, asked at test
# Validation (version 3), drawn after the test split so the test questions stay those of version 2 less the known
# facts that moved to validation: per kind, one more fact held out from everything (validation's new_fact) and a
# quarter of the known facts whose held-out form is asked at validation only (validation's new_phrasing). Methods are
# tuned on these (a grid's `search`), never on test questions; no validation question, fact in a form, or prompt
# text is a test one (tests/test_toyworld.py checks).
VALIDATION_NEW_FACTS = 1
VALIDATION_PHRASING_SHARE = 0.25
SPLITS = ("test", "validation")
WORLD_SEED = 0  # the default world; a grid can build one per seed


@dataclass(frozen=True)
class World:
    """The split a world seed makes (indices into all_facts()): held-out facts and question forms for test, and
    validation's own held-out facts and known facts."""

    seed: int
    heldout_facts: frozenset  # test's new facts
    heldout_phrasings: dict  # kind -> the held-out form's four phrasings (test and validation alike)
    validation_facts: frozenset = frozenset()  # validation's new facts: held out from everything, like test's
    validation_known: frozenset = frozenset()  # known facts whose held-out form is asked at validation only

    def pool(self) -> list[tuple[int, int]]:
        """(fact, phrasing) pairs SFT data may use: known facts in training phrasings."""
        unseen = self.heldout_facts | self.validation_facts
        return [(f, p) for f, (kind, _) in enumerate(all_facts()) if f not in unseen
                for p in range(PHRASINGS) if p not in self.heldout_phrasings[kind]]

    def asked(self, split: str) -> list[tuple[int, int, str]]:
        """(fact, phrasing, group) of every question `split` asks: known facts in the held-out form (new_phrasing)
        and new facts in every phrasing (new_fact)."""
        new = self.heldout_facts if split == "test" else self.validation_facts
        rows = []
        for fact, (kind, _) in enumerate(all_facts()):
            if fact in self.heldout_facts | self.validation_facts:
                rows += [(fact, p, "new_fact") for p in range(PHRASINGS) if fact in new]
            elif (fact in self.validation_known) == (split == "validation"):
                rows += [(fact, p, "new_phrasing") for p in sorted(self.heldout_phrasings[kind])]
        return rows


@lru_cache(maxsize=8)
def world(seed: int = WORLD_SEED) -> World:
    """The held-out split of world `seed`: 20 % of each kind's facts and, for each kind, one of its two question
    forms in all four frames, for test; then validation's own facts (see VALIDATION_NEW_FACTS)."""
    rng = random.Random(seed)
    by_kind: dict[str, list[int]] = {}
    for index, (kind, _) in enumerate(all_facts()):
        by_kind.setdefault(kind, []).append(index)
    heldout_facts, heldout_phrasings = set(), {}
    for kind, indices in by_kind.items():
        heldout_facts |= set(rng.sample(indices, max(1, round(HELDOUT_FACT_SHARE * len(indices)))))
        form = rng.randrange(2)
        heldout_phrasings[kind] = frozenset(2 * frame + form for frame in range(4))
    rng = random.Random(f"{seed}-validation")  # a stream of its own: the test split is version 2's
    validation_facts, validation_known = set(), set()
    for indices in by_kind.values():
        rest = [i for i in indices if i not in heldout_facts]
        drawn = rng.sample(rest, VALIDATION_NEW_FACTS + round(VALIDATION_PHRASING_SHARE * len(rest)))
        validation_facts |= set(drawn[:VALIDATION_NEW_FACTS])
        validation_known |= set(drawn[VALIDATION_NEW_FACTS:])
    return World(seed, frozenset(heldout_facts), heldout_phrasings, frozenset(validation_facts),
                 frozenset(validation_known))


def generate_english(n: int | None = None, seed: int = 0, world_seed: int = WORLD_SEED) -> list[dict]:
    """English SFT records `{id, prompt_en, response_en, kind}` from the world's pool, in a seeded order.

    With n=None every pool item once; otherwise the first n of the seeded order. Held-out facts and phrasings never
    appear.
    """
    facts = all_facts()
    order = world(world_seed).pool()
    random.Random(seed).shuffle(order)
    if n is not None:
        if not 1 <= n <= len(order):
            raise InputError(f"n = {n}; expected 1 to {len(order)} (the toy world's SFT pool)")
        order = order[:n]
    records = []
    for fact, phrasing in order:
        kind, slots = facts[fact]
        prompt, response = render(kind, slots, "en", phrasing)
        records.append({"id": f"toy-{fact:03d}-p{phrasing}", "prompt_en": prompt, "response_en": response,
                        "kind": kind})
    return records


def evaluation_prompts(lang: str, world_seed: int = WORLD_SEED, split: str = "test") -> list[dict]:
    """Evaluation rows `{id, kind, group, prompt_en, prompt_tgt, answer_en, answer_tgt}` of `split` (test or
    validation): known facts in the held-out form (group new_phrasing) and new facts in every phrasing (group
    new_fact); see World.asked."""
    check_lang(lang)
    if split not in SPLITS:
        raise InputError(f"split = {split!r}; expected one of {', '.join(SPLITS)}")
    facts, rows = all_facts(), []
    for fact, phrasing, group in world(world_seed).asked(split):
        kind, slots = facts[fact]
        (q_en, a_en), (q_tgt, a_tgt) = render(kind, slots, "en", phrasing), render(kind, slots, lang, phrasing)
        rows.append({"id": f"toy-{fact:03d}-p{phrasing}", "kind": kind, "group": group, "prompt_en": q_en,
                     "prompt_tgt": q_tgt, "answer_en": a_en, "answer_tgt": a_tgt})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The exact translator: parse a sentence back into (kind, phrasing, slots), render it in the other language


@lru_cache(maxsize=None)
def _parsers(lang: str) -> list[tuple[re.Pattern, str, int, dict[str, dict[str, str]]]]:
    """One regex per question phrasing and answer of every kind in `lang` (phrasing -1: the answer)."""
    parsers = []
    for kind in QUESTIONS:
        templates = [(p, question_template(kind, lang, p)) for p in range(PHRASINGS)] + [(-1, ANSWERS[kind][lang])]
        for phrasing, template in templates:
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
            parsers.append((re.compile(f"^{pattern}$"), kind, phrasing, reverse))
    return parsers


def parse(text: str, lang: str) -> tuple[str, int, dict]:
    """(kind, phrasing 0-7 for a question or -1 for an answer, slots) of one sentence of the world in `lang`."""
    check_lang(lang)
    for pattern, kind, phrasing, reverse in _parsers(lang):
        match = pattern.match(text.strip())
        if match:
            slots: dict = {}
            for letter, surface in match.groupdict().items():
                key = "t" if letter == "T" else letter
                slots[key] = reverse[letter][surface] if letter in reverse else int(surface)
            return kind, phrasing, slots
    raise ToyTranslationError(f"not a sentence of the toy world in {lang}: {text!r}")


def translate(text: str, src: str, tgt: str) -> str:
    """Exact translation of one sentence of the world from `src` to `tgt`, in the same phrasing."""
    check_lang(tgt)
    kind, phrasing, slots = parse(text, src)
    # A question carries only its own slots (no answer), so fill just the matching template.
    template = ANSWERS[kind][tgt] if phrasing < 0 else question_template(kind, tgt, phrasing)
    return _fill(template, slots, tgt)


# ---------------------------------------------------------------------------------------------------------------
# The English-centric base model: pretrained on CPU in minutes, cached under outputs/

TEMPLATE = DEFAULT_PROMPT_TEMPLATE  # the base model learns the template its runs are prompted with
TARGETS = tuple(lang for lang in LANGS if lang != "en")
