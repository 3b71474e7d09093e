"""Translation stage: an English SFT set to the parallel corpus CLO trains on (PAPER.md, "The data", step 2).

    load English records ─► split each text into chunks the model can take ─► translate the chunks not yet cached,
    longest first, in batches ─► join the chunks back ─► flag doubtful translations ─► parallel.jsonl + dataset

Splitting keeps the layout: every line is translated on its own, leading list markers and blank lines stay as they
are, fenced code blocks, inline code and URLs are never sent to the model, and a line longer than
`translation.max_input_tokens` is cut at sentence ends (or, for one overlong sentence, between words). Numbers stay
inside their sentence, where the model needs them for grammar, and are checked afterwards: a translation whose
digits differ from the source's is flagged `numbers_changed`.

Backends (`translation.backend`):
    hf      a seq2seq model through generate(): M2M100 (the paper's facebook/m2m100_1.2B), NLLB-200, MADLAD-400,
            Marian opus-mt (one model per pair; `{src}`/`{tgt}` in the model id are filled in)
    openai  an OpenAI-compatible chat endpoint as an LLM translator (key from the environment variable only)
    toy     the toy world's exact translator (clo_lib.toyworld)

Every chunk's translation is cached on disk, keyed by (backend, model, source, target, text): a rerun translates
nothing twice and a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

from clo_lib import joint
from clo_lib.config import ConfigError, RunConfig, TranslationConfig, load_config
from clo_lib.data import corpus_dir
from clo_lib.endpoint import EndpointError
from clo_lib.io import append_jsonl, atomic_write_json, atomic_write_text, write_jsonl
from clo_lib.langid import CODE_FENCE, MIN_LETTERS, PROTECTED_SPAN
from clo_lib.languages import SOURCE_LANGUAGE, get_language

# ---------------------------------------------------------------------------------------------------------------
# Language codes per model family: checked before any model is loaded


class UnsupportedLanguageError(ValueError):
    pass


FAMILIES = ("m2m100", "nllb", "madlad", "marian")


def model_family(model: str) -> str:
    """The family of a translation model, from a local folder's config.json or else from the hub id."""
    config_file = Path(model) / "config.json"
    if config_file.is_file():
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "")
        name = model.lower()
        if model_type == "m2m_100":
            return "nllb" if "nllb" in name else "m2m100"
        if model_type == "marian":
            return "marian"
        if model_type in ("t5", "mt5") and "madlad" in name:
            return "madlad"
    name = model.lower()
    for key, family in (("nllb", "nllb"), ("m2m100", "m2m100"), ("m2m_100", "m2m100"), ("madlad", "madlad"),
                        ("opus-mt", "marian"), ("marian", "marian")):
        if key in name:
            return family
    raise ConfigError(f"translation.model = {model!r}: cannot tell its family; expected an M2M100, NLLB-200, "
                      "MADLAD-400 or Marian opus-mt model (by name or a local folder with its config.json)",
                      key="translation.model")


def language_code(family: str, lang: str) -> str:
    """How `family` names language `lang` (ISO 639-1 in the kit), or a clear UnsupportedLanguageError."""
    row = get_language(lang)
    code = {"m2m100": row.m2m100, "nllb": row.nllb, "madlad": row.code, "marian": row.code}[family]
    if code is None:
        raise UnsupportedLanguageError(f"{row.name} ({lang}) is not supported by {family} models; choose another "
                                       "translation.model (NLLB-200 and MADLAD-400 cover the most languages)")
    return code


def model_for_pair(model: str, src: str, tgt: str) -> str:
    """Marian ships one model per pair: `Helsinki-NLP/opus-mt-{src}-{tgt}` becomes opus-mt-en-sw."""
    return model.replace("{src}", src).replace("{tgt}", tgt)


# ---------------------------------------------------------------------------------------------------------------
# Splitting texts into chunks, and joining the translations back

_LINE_PREFIX = re.compile(r"^\s*(?:[-*+•]|\d+[.)]|#{1,6}|>)?\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def _pack(pieces: list[str], count_tokens: Callable[[str], int], max_tokens: int, glue: str) -> list[str]:
    """Greedily join consecutive pieces while the result stays within `max_tokens`."""
    chunks: list[str] = []
    for piece in pieces:
        if chunks and count_tokens(chunks[-1] + glue + piece) <= max_tokens:
            chunks[-1] += glue + piece
        else:
            chunks.append(piece)
    return chunks


def _split_long(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[str]:
    """Cut one line at sentence ends, then an overlong sentence between words, so each chunk fits."""
    if count_tokens(text) <= max_tokens:
        return [text]
    chunks = []
    for sentence in _pack(_SENTENCE_END.split(text), count_tokens, max_tokens, " "):
        if count_tokens(sentence) <= max_tokens:
            chunks.append(sentence)
        else:
            chunks.extend(_pack(sentence.split(" "), count_tokens, max_tokens, " "))
    return chunks


def segment(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[tuple[bool, str]]:
    """`text` as (translate?, piece) pairs whose pieces concatenate back to `text` exactly.

    Pieces marked True are the chunks for the model; False pieces (layout, code, URLs) pass through untouched.
    """
    pieces: list[tuple[bool, str]] = []

    def add_prose(prose: str) -> None:
        for line in prose.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            ending = line[len(body):]
            prefix = _LINE_PREFIX.match(body).group(0)
            rest = body[len(prefix):]
            trailing = rest[len(rest.rstrip()):]
            rest = rest.rstrip()
            if prefix:
                pieces.append((False, prefix))
            position = 0
            for match in PROTECTED_SPAN.finditer(rest):
                add_words(rest[position:match.start()])
                pieces.append((False, match.group(0)))
                position = match.end()
            add_words(rest[position:])
            if trailing + ending:
                pieces.append((False, trailing + ending))

    def add_words(words: str) -> None:
        # Keep the spaces around a fragment outside it, so that joining restores them exactly.
        stripped = words.strip()
        if not stripped:
            if words:
                pieces.append((False, words))
            return
        lead = words[: len(words) - len(words.lstrip())]
        tail = words[len(words.rstrip()):]
        if lead:
            pieces.append((False, lead))
        # Pieces with no letters (numbers, punctuation, emoji) have nothing to translate.
        if not re.search(r"[^\W\d_]", stripped):
            pieces.append((False, stripped))
        else:
            for index, chunk in enumerate(_split_long(stripped, count_tokens, max_tokens)):
                if index:
                    pieces.append((False, " "))
                pieces.append((True, chunk))
        if tail:
            pieces.append((False, tail))

    position = 0
    for match in CODE_FENCE.finditer(text):
        add_prose(text[position:match.start()])
        pieces.append((False, match.group(0)))
        position = match.end()
    add_prose(text[position:])
    return pieces


def join(pieces: Sequence[tuple[bool, str]], translations: dict[str, str]) -> str:
    """Rebuild a text: chunks replaced by their translation, everything else as it was."""
    return "".join(translations[piece] if to_translate else piece for to_translate, piece in pieces)


# ---------------------------------------------------------------------------------------------------------------
# Backends: one interface, `count_tokens` (for splitting) and `translate_batch` (for a list of chunks)


class Translator:
    backend = "base"

    def __init__(self, model: str):
        self.model = model
        self.use_markers(None, None)
        # Inputs whose output stopped at max_new_tokens (or whose input had to be cut): text was lost. Each backend
        # adds to it in translate_batch; the stage records it in the cache and never splits or trusts such output.
        self.cut: set[str] = set()

    @contextmanager
    def separately(self):
        """Translate as separate mode does inside the block (joint mode's part-by-part fallback): no markers, so a
        chunk gets exactly the prompt, and the translation, it gets in separate mode."""
        saved = self.indicator, self.catalyst
        self.use_markers(None, None)
        try:
            yield self
        finally:
            self.use_markers(*saved)

    def use_markers(self, indicator: str | None, catalyst: str | None) -> None:
        """Joint mode's Indicator Token template and Catalyst Statement (None: separate mode), for the backends
        whose prompt depends on them (few-shot examples, an LLM's instruction, the toy translator's splitting)."""
        self.indicator, self.catalyst = indicator, catalyst
        self.markers = joint.marker_pattern(indicator) if indicator else None

    def marked(self, text: str) -> bool:
        """Whether `text` is a joint input (it holds the markers)."""
        return self.markers is not None and self.markers.search(text) is not None

    def instruction(self, text: str, src: str, tgt: str) -> str:
        """An LLM translator's system prompt for `text`: the plain one, plus keeping the markers for a joint input
        (the Catalyst Statement as an instruction, SIBLINGS.md 1)."""
        system = TRANSLATOR_SYSTEM_PROMPT.format(src=get_language(src).name, tgt=get_language(tgt).name)
        return system + JOINT_INSTRUCTION.format(marker=joint.marker(self.indicator, 1)) if self.marked(text) \
            else system

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def translate_batch(self, texts: list[str], src: str, tgt: str) -> list[str]:
        raise NotImplementedError


class ToyTranslator(Translator):
    """The toy world's exact translator, sentence by sentence. In joint mode it keeps the indicator markers and
    translates the text between them; the Catalyst Statement, which is not in the world, passes unchanged."""

    backend = "toy"

    def __init__(self, model: str, indicator: str | None = None, catalysts: Sequence[str] = ()):
        super().__init__(model)
        self.use_markers(indicator, None)
        self.catalysts = set(catalysts)

    def translate_batch(self, texts: list[str], src: str, tgt: str) -> list[str]:
        return [self._translate(text, src, tgt) for text in texts]

    def _translate(self, text: str, src: str, tgt: str) -> str:
        from clo_lib import toyworld

        if self.marked(text):
            pieces, position = [], 0
            for match in self.markers.finditer(text):
                pieces += [self._translate(text[position: match.start()], src, tgt), match.group(0)]
                position = match.end()
            pieces.append(self._translate(text[position:], src, tgt))
            return " ".join(piece for piece in pieces if piece)
        if text.strip() in self.catalysts:
            return text.strip()
        return " ".join(toyworld.translate(s, src, tgt) for s in re.split(r"(?<=[.?!。？])\s*", text) if s.strip())


def _device(device: str) -> str:
    """`translation.device`: auto is CUDA when there is one."""
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _hf_dtype(device: str):
    """The seq2seq translator's dtype: bfloat16 where the GPU computes in it natively, float16 on older GPUs (a T4
    only emulates bfloat16); float32 on CPU, where half precision is slow and, for beam search, less stable."""
    import torch

    if device != "cuda":
        return torch.float32
    from clo_lib.models import torch_dtype

    return torch_dtype("auto") if torch_dtype("auto") == torch.bfloat16 else torch.float16


class HFTranslator(Translator):
    """A seq2seq model from transformers, called through generate() (transformers 5 has no translation pipeline)."""

    backend = "hf"

    def __init__(self, model: str, src: str, tgt: str, num_beams: int = 4, max_input_tokens: int = 200,
                 max_new_tokens: int = 256, device: str = "auto", revision: str | None = None):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        super().__init__(model)
        self.family = model_family(model)
        self.src_code, self.tgt_code = language_code(self.family, src), language_code(self.family, tgt)
        path = model_for_pair(model, src, tgt) if self.family == "marian" else model
        device = _device(device)
        self.device, self.dtype = device, _hf_dtype(device)
        dtype = self.dtype
        from clo_lib.data import hub_errors

        with hub_errors(f"translation model {path!r}"):
            self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
            self.net = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype, revision=revision).to(device).eval()
        self.num_beams, self.max_input_tokens, self.max_new_tokens = num_beams, max_input_tokens, max_new_tokens
        self.generate_kwargs: dict[str, Any] = {}
        self._language_token_ids = set(getattr(self.tokenizer, "lang_token_to_id", {}).values())
        self._prefix = ""
        if self.family in ("m2m100", "nllb"):
            self.tokenizer.src_lang = self.src_code
            token = f"__{self.tgt_code}__" if self.family == "m2m100" else self.tgt_code
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == self.tokenizer.unk_token_id:
                raise UnsupportedLanguageError(f"{path} has no language token {token} for {tgt}")
            self.generate_kwargs["forced_bos_token_id"] = token_id
        elif self.family == "madlad":
            self._prefix = f"<2{self.tgt_code}> "  # MADLAD-400 takes the target language as a source prefix
            if f"<2{self.tgt_code}>" not in self.tokenizer.get_vocab():
                raise UnsupportedLanguageError(f"{path} has no language token <2{self.tgt_code}> for {tgt}")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def translate_batch(self, texts: list[str], src: str, tgt: str) -> list[str]:
        import torch

        limit = self.max_input_tokens + 8  # room for the special tokens and MADLAD's prefix
        inputs = self.tokenizer([self._prefix + t for t in texts], return_tensors="pt", padding=True,
                                truncation=True, max_length=limit).to(self.device)
        full_lengths = [len(ids) for ids in self.tokenizer([self._prefix + t for t in texts])["input_ids"]]
        with torch.inference_mode():
            output = self.net.generate(**inputs, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens,
                                       **self.generate_kwargs)
        eos = self.net.generation_config.eos_token_id
        eos = set(eos) if isinstance(eos, list) else {eos}
        for text, length, row in zip(texts, full_lengths, output.tolist()):
            if length > limit or not eos & set(row[1:]):  # input cut, or generation stopped by max_new_tokens
                self.cut.add(text)
        # Language tokens are not always registered as special tokens (transformers 5's M2M100Tokenizer), so
        # skip_special_tokens alone can leave "__sw__" in the text: drop them by id.
        rows = [[i for i in row if i not in self._language_token_ids] for row in output.tolist()]
        return [t.strip() for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]


TRANSLATOR_SYSTEM_PROMPT = (
    "You are a professional translator. Translate the user's text from {src} into {tgt}. Keep the meaning, tone, "
    "formatting, numbers, names and code exactly. Reply with the translation only, no notes."
)
# Joint mode with an LLM translator: the Catalyst Statement can be an instruction (SIBLINGS.md 1).
JOINT_INSTRUCTION = (
    " The text is one data point in parts, each behind a marker such as {marker}: keep every marker exactly once, "
    "in the same order, and translate the text after each one."
)


class CausalTranslator(Translator):
    """A local causal LM as translator (`translation.backend: hf_causal`), greedy, one line out per line in.

    A model with a chat template is asked through it (the system prompt of the openai backend). A base model is
    prompted few-shot, `English: ...` / `German: ...` after two example pairs, and its output is cut at the first
    newline. The examples are a question and its answer of the toy world, which exist in every language it has;
    in joint mode they carry the markers, so the model sees how they are kept.
    """

    backend = "hf_causal"

    def __init__(self, model: str, src: str, tgt: str, gguf_file: str | None = None, max_new_tokens: int = 256,
                 device: str = "auto", indicator: str | None = None, catalyst: str | None = None):
        import torch

        from clo_lib.data import hub_errors
        from clo_lib.models import load_gguf

        super().__init__(model)
        self.device = _device(device)
        with hub_errors(f"translation model {model!r}"):
            if gguf_file:
                self.net, self.tokenizer = load_gguf(model, gguf_file, torch.float32, key="translation.gguf_file")
            else:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(model)
                self.net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        self.net = self.net.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # every prompt continues from its own last token
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.max_new_tokens = max_new_tokens
        self.use_markers(indicator, catalyst)
        if not self.chat:
            from clo_lib import toyworld

            for lang in (src, tgt):
                if lang not in toyworld.LANGS:
                    raise UnsupportedLanguageError(
                        f"{model} has no chat template, so it is prompted few-shot with the toy world's sentences, "
                        f"which have no {get_language(lang).name}; expected a chat model or one of "
                        f"{', '.join(toyworld.LANGS)}")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def few_shot(self, text: str, src: str, tgt: str) -> str:
        """The base-model prompt: two example pairs, then `text` to continue."""
        from clo_lib import toyworld

        names = get_language(src).name, get_language(tgt).name
        rows = {lang: toyworld.evaluation_prompts(lang)[0] for lang in (src, tgt) if lang != SOURCE_LANGUAGE}
        sides = {lang: (row["prompt_tgt"], row["answer_tgt"]) for lang, row in rows.items()}
        english = toyworld.evaluation_prompts(tgt if tgt != SOURCE_LANGUAGE else src)[0]
        sides[SOURCE_LANGUAGE] = (english["prompt_en"], english["answer_en"])
        (q_src, a_src), (q_tgt, a_tgt) = sides[src], sides[tgt]
        if self.marked(text):
            examples = [(joint.compose([q_src, a_src], self.indicator, self.catalyst),
                         joint.compose([q_tgt, a_tgt], self.indicator, self.catalyst))]
        else:
            examples = [(q_src, q_tgt), (a_src, a_tgt)]
        shots = "".join(f"{names[0]}: {a}\n{names[1]}: {b}\n\n" for a, b in examples)
        return f"{shots}{names[0]}: {text}\n{names[1]}:"

    def prompt(self, text: str, src: str, tgt: str) -> str:
        if not self.chat:
            return self.few_shot(text, src, tgt)
        messages = [{"role": "system", "content": self.instruction(text, src, tgt)}, {"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def translate_batch(self, texts: list[str], src: str, tgt: str) -> list[str]:
        import torch

        prompts = [self.prompt(text, src, tgt) for text in texts]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True,
                                add_special_tokens=not self.chat).to(self.device)
        with torch.inference_mode():
            output = self.net.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                       pad_token_id=self.tokenizer.pad_token_id, stop_strings=["\n"],
                                       tokenizer=self.tokenizer)
        generated = output[:, inputs["input_ids"].shape[1]:]
        answers = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        for text, row, answer in zip(texts, generated.tolist(), answers):
            if self.tokenizer.eos_token_id not in row and "\n" not in answer:  # stopped by max_new_tokens
                self.cut.add(text)
        return [answer.strip().split("\n")[0].strip() for answer in answers]


class OpenAITranslator(Translator):
    """An LLM behind an OpenAI-compatible endpoint; requests of one batch run concurrently."""

    backend = "openai"

    def __init__(self, model: str, base_url: str | None, api_key_env: str, concurrency: int = 8,
                 max_new_tokens: int = 1024, indicator: str | None = None):
        from clo_lib.endpoint import ChatEndpoint

        super().__init__(model)
        self.endpoint = ChatEndpoint(base_url or "https://api.openai.com/v1", model, api_key_env)
        self.endpoint.check()
        self.concurrency, self.max_new_tokens = concurrency, max_new_tokens
        self.use_markers(indicator, None)

    def translate_batch(self, texts: list[str], src: str, tgt: str) -> list[str]:
        def one(text: str) -> str:
            messages = [{"role": "system", "content": self.instruction(text, src, tgt)},
                        {"role": "user", "content": text}]
            reply, finish_reason = self.endpoint.completion(messages, temperature=0.0, max_tokens=self.max_new_tokens)
            if finish_reason == "length":  # stopped by max_tokens
                self.cut.add(text)
            return reply.strip()

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, texts))


def check_pair(cfg: TranslationConfig, src: str, tgt: str) -> None:
    """Everything that can be checked about a translation setup without loading a model."""
    if cfg.backend == "hf":
        family = model_family(cfg.model)
        language_code(family, src), language_code(family, tgt)
    elif cfg.backend == "hf_causal" and cfg.gguf_file:
        from clo_lib.models import check_gguf

        check_gguf(cfg.model, cfg.gguf_file, key="translation.gguf_file")  # missing, or not loadable
    elif cfg.backend == "toy":
        from clo_lib import toyworld

        for lang in (src, tgt):
            if lang not in toyworld.LANGS:
                raise UnsupportedLanguageError(f"{get_language(lang).name} ({lang}) is not in the toy world; "
                                               f"it has {', '.join(toyworld.LANGS)}")
    elif cfg.backend == "openai":
        from clo_lib.endpoint import ChatEndpoint

        ChatEndpoint(cfg.api_base_url or "https://api.openai.com/v1", cfg.model, cfg.api_key_env).check()


def make_translator(cfg: TranslationConfig, src: str, tgt: str) -> Translator:
    check_pair(cfg, src, tgt)
    indicator = cfg.indicator if cfg.mode == "joint" else None
    if cfg.backend == "toy":
        return ToyTranslator("toy", indicator, cfg.catalyst_texts.values())
    if cfg.backend == "hf_causal":
        return CausalTranslator(cfg.model, src, tgt, cfg.gguf_file, cfg.max_new_tokens, cfg.device, indicator,
                                joint.catalyst_text(cfg) if indicator else None)
    if cfg.backend == "openai":
        return OpenAITranslator(cfg.model, cfg.api_base_url, cfg.api_key_env, concurrency=cfg.batch_size,
                                max_new_tokens=cfg.max_new_tokens, indicator=indicator)
    return HFTranslator(cfg.model, src, tgt, cfg.num_beams, cfg.max_input_tokens, cfg.max_new_tokens, cfg.device,
                        cfg.revision)


def translation_settings(cfg: TranslationConfig) -> dict[str, Any]:
    """What, besides backend, model, languages and text, changes a translation: part of every cache key. In joint
    mode the markers and the Catalyst Statement too, for the backends whose handling of a text depends on them
    (whether a text counts as a joint input, its instruction, the few-shot examples); joint mode's part-by-part
    fallback translates with no markers, exactly as separate mode (Translator.separately)."""
    joint_prompt = {"joint": [cfg.indicator, joint.catalyst_text(cfg)]} if cfg.mode == "joint" else {}
    if cfg.backend == "toy":
        from clo_lib import toyworld

        return {"generator": toyworld.WORLD_VERSION, **joint_prompt}
    if cfg.backend == "openai":
        return {"max_new_tokens": cfg.max_new_tokens, "system_prompt": TRANSLATOR_SYSTEM_PROMPT,
                "base_url": cfg.api_base_url or "https://api.openai.com/v1", **joint_prompt}
    device = _device(cfg.device)
    if cfg.backend == "hf_causal":  # the few-shot examples follow from the languages and, jointly, the markers
        return {"max_new_tokens": cfg.max_new_tokens, "gguf_file": cfg.gguf_file, "revision": cfg.revision,
                "system_prompt": TRANSLATOR_SYSTEM_PROMPT, "prompt": "few-shot-v1", "device": device,
                **joint_prompt}
    # seq2seq: inputs past the limit are cut (and flagged); half precision on a GPU changes beams
    return {"num_beams": cfg.num_beams, "max_new_tokens": cfg.max_new_tokens, "revision": cfg.revision,
            "max_input_tokens": cfg.max_input_tokens, "device": device, "dtype": str(_hf_dtype(device))}


def translation_cache(cfg: RunConfig) -> "TranslationCache":
    """The run's translation cache: shared by all runs of an output folder, keyed by every setting that matters."""
    tcfg = cfg.translation
    return TranslationCache(cache_dir(cfg), tcfg.backend, tcfg.model, SOURCE_LANGUAGE, cfg.language,
                            translation_settings(tcfg))


# ---------------------------------------------------------------------------------------------------------------
# The cache: one JSONL file per (backend, model, source, target), appended after every batch


class TranslationCache:
    """Chunk translations on disk, keyed by sha256 of (backend, model, src, tgt, settings, text).

    `settings` are whatever else changes a translation (see `translation_settings`): entries made under other
    settings stay in the file for those settings but are never served for these. Each line carries its key and a
    checksum of the translation; a line that does not parse or check out (a run killed mid-write) is dropped on
    load, the file is rewritten without it, and its chunk is translated again.
    """

    def __init__(self, directory: str | Path, backend: str, model: str, src: str, tgt: str,
                 settings: dict[str, Any] | None = None):
        self.identity = (backend, model, src, tgt, json.dumps(settings or {}, sort_keys=True))
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/"))[-80:]
        self.path = Path(directory) / f"{backend}__{slug}__{src}-{tgt}.jsonl"
        self.entries: dict[str, str] = {}
        self.cut_keys: set[str] = set()  # translations that stopped at max_new_tokens (or from a cut input)
        self.corrupt_lines = 0
        self.hits = 0
        self._load()

    def key(self, text: str) -> str:
        return hashlib.sha256(json.dumps([*self.identity, text], ensure_ascii=False).encode("utf-8")).hexdigest()

    @staticmethod
    def _checksum(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def _load(self) -> None:
        if not self.path.is_file():
            return
        good_lines = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                valid = isinstance(entry["out"], str) and entry["sum"] == self._checksum(entry["out"])
            except (json.JSONDecodeError, KeyError, TypeError):
                valid = False
            if not valid:
                self.corrupt_lines += 1
                continue
            good_lines.append(line)
            if entry["k"] == self.key(entry["src"]):  # else made under other settings: kept, not served
                self.entries[entry["k"]] = entry["out"]
                if entry.get("cut"):
                    self.cut_keys.add(entry["k"])
        if self.corrupt_lines:
            atomic_write_text(self.path, "".join(line + "\n" for line in good_lines))

    def get(self, text: str) -> str | None:
        found = self.entries.get(self.key(text))
        if found is not None:
            self.hits += 1
        return found

    def was_cut(self, text: str) -> bool:
        """Whether the cached translation of `text` stopped at the translator's limit (text was lost)."""
        return self.key(text) in self.cut_keys

    def put_many(self, pairs: Sequence[tuple[str, str]], cut: set[str] = frozenset()) -> None:
        """Append one batch in a single fsynced write, so a kill loses at most this batch. `cut`: the texts whose
        translation stopped at the translator's limit, recorded with them."""
        rows = []
        for text, out in pairs:
            key = self.key(text)
            self.entries[key] = out
            rows.append({"k": key, "src": text, "out": out, "sum": self._checksum(out)})
            if text in cut:
                self.cut_keys.add(key)
                rows[-1]["cut"] = True
        append_jsonl(self.path, rows)


def translate_chunks(chunks: Sequence[str], translator: Translator, cache: TranslationCache, src: str, tgt: str,
                     batch_size: int, progress: bool = True) -> dict[str, Any]:
    """Translate every distinct chunk not yet in the cache, longest first, `batch_size` at a time.

    Sorting by length puts similar lengths in one batch, so little compute goes to padding. Returns timing stats.
    """
    from tqdm.auto import tqdm

    todo = sorted({c for c in chunks if cache.get(c) is None}, key=lambda c: (-translator.count_tokens(c), c))
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="chunk", desc=f"translate {src}->{tgt}", disable=not progress or not todo)
    for begin in range(0, len(todo), batch_size):
        batch = todo[begin: begin + batch_size]
        cache.put_many(list(zip(batch, translator.translate_batch(batch, src, tgt))), translator.cut)
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - start
    return {"chunks": len(set(chunks)), "translated": len(todo), "cached": len(set(chunks)) - len(todo),
            "seconds": round(seconds, 3), "chunks_per_s": round(len(todo) / seconds, 2) if todo and seconds else None}


# ---------------------------------------------------------------------------------------------------------------
# Quality flags

# Rough characters-per-English-character of each script, so that a Chinese translation a third as long as its
# English source is not called "too short". Approximate; unlisted languages count as 1.
CHAR_RATIO = {"zh": 0.3, "ja": 0.35, "ko": 0.45}
FLAGS = ("empty", "too_short", "too_long", "wrong_language", "ngram_loop", "numbers_changed", "truncated")


def _max_ngram_repeats(text: str, n: int = 3) -> int:
    words = text.split()
    if len(words) < n * 2 and len(text) > 2 * len(words) * 4:  # no spaces to speak of (Chinese, Japanese)
        words = [ch for ch in text if not ch.isspace()]
        n = 4
    grams = Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
    return max(grams.values(), default=0)


def quality_flags(source: str, translation: str, tgt: str, max_length_ratio: float = 3.0,
                  lid_min_confidence: float = 0.5, min_chars_for_ratio: int = 20,
                  lid_min_letters: int = MIN_LETTERS) -> list[str]:
    """Which of FLAGS apply to one translation (an empty list means it looks fine)."""
    from clo_lib import langid

    flags = []
    if not translation.strip():
        return ["empty"] if source.strip() else []
    src_chars = len(re.sub(r"\s", "", source))
    out_chars = len(re.sub(r"\s", "", translation))
    if src_chars >= min_chars_for_ratio:
        ratio = out_chars / (src_chars * CHAR_RATIO.get(tgt, 1.0))
        if ratio < 1 / max_length_ratio:
            flags.append("too_short")
        elif ratio > max_length_ratio:
            flags.append("too_long")
    detected, _ = langid.detect(translation, [SOURCE_LANGUAGE, tgt], lid_min_confidence,
                                lid_min_letters)  # on its prose only
    if detected is not None and detected != tgt:
        flags.append("wrong_language")
    out_repeats = _max_ngram_repeats(translation)
    if out_repeats >= 4 and out_repeats > 2 * max(_max_ngram_repeats(source), 1):
        flags.append("ngram_loop")
    if Counter(re.findall(r"\d+", source)) != Counter(re.findall(r"\d+", translation)):
        flags.append("numbers_changed")
    return flags


# ---------------------------------------------------------------------------------------------------------------
# The stage


def translate_records(records: Sequence[dict], translator: Translator, cache: TranslationCache, tgt: str,
                      cfg: TranslationConfig, progress: bool = True) -> tuple[list[dict], dict[str, Any]]:
    """Parallel records `{id, lang, prompt_en, response_en, prompt_tgt, response_tgt, flags}` and timing stats."""
    src = SOURCE_LANGUAGE
    token_counts: dict[str, int] = {}

    def count(text: str) -> int:  # splitting asks for the same pieces more than once
        if text not in token_counts:
            token_counts[text] = translator.count_tokens(text)
        return token_counts[text]

    pieces = {}
    for record in records:
        for name in ("prompt_en", "response_en"):
            pieces[record[name]] = segment(record[name], count, cfg.max_input_tokens)
    stats: Counter = Counter()

    def translated(texts: list[str], joint_inputs: bool = False) -> dict[str, str]:  # cached, batched, longest first
        with (nullcontext() if joint_inputs else translator.separately()):
            took = translate_chunks(texts, translator, cache, src, tgt, cfg.batch_size, progress)
        stats.update({key: took[key] for key in ("chunks", "translated", "cached", "seconds")})
        return {text: cache.entries[cache.key(text)] for text in set(texts)}

    def chunks_of(text: str) -> list[str]:
        return [piece for to_translate, piece in pieces[text] if to_translate]

    if cfg.mode == "joint":
        result = joint.translate_jointly([(chunks_of(r["prompt_en"]), chunks_of(r["response_en"])) for r in records],
                                         cfg, count, translated, cache.was_cut)
        done_per_record, fallback, parted = result.translations, result.fallback, result.parted
        stats.update({"joint_inputs": result.inputs, "joint_split": result.split})
    else:
        done = translated([chunk for record in records for name in ("prompt_en", "response_en")
                           for chunk in chunks_of(record[name])])
        done_per_record, fallback = [done] * len(records), [None] * len(records)
        parted = [None] * len(records)  # every chunk on its own
    parallel = []
    for record, done, fell_back, own in zip(records, done_per_record, fallback, parted):
        prompt_tgt, response_tgt = join(pieces[record["prompt_en"]], done), join(pieces[record["response_en"]], done)
        flags = []
        for side, source, translation in (("prompt", record["prompt_en"], prompt_tgt),
                                          ("response", record["response_en"], response_tgt)):
            found = quality_flags(source, translation, tgt, cfg.max_length_ratio, cfg.lid_min_confidence,
                                  lid_min_letters=cfg.lid_min_letters)
            # a chunk translated on its own whose output stopped at the limit: its text is incomplete
            if any(cache.was_cut(chunk) for chunk in chunks_of(source) if own is None or chunk in own):
                found.append("truncated")
            flags += [f"{side}:{flag}" for flag in found]
        parallel.append({"id": record["id"], "lang": tgt, "prompt_en": record["prompt_en"],
                         "response_en": record["response_en"], "prompt_tgt": prompt_tgt,
                         "response_tgt": response_tgt, "flags": flags})
        if fell_back is not None:  # joint mode: translated part by part because the joint output did not split
            parallel[-1]["joint_fallback"] = fell_back
    return parallel, dict(stats)


def cache_dir(cfg: RunConfig) -> Path:
    return Path(cfg.translation.cache_dir or Path(cfg.output_dir) / "cache" / "translations")


def run_translation(cfg: RunConfig, out_dir: str | Path | None = None, progress: bool = True,
                    english: Any = None) -> dict[str, Any]:
    """Load the English set, translate it in one seeded order until `data.pool_size` (or `data.size`) records are
    usable (unflagged, unless data.keep_flagged), and write parallel.jsonl, dataset/ and report.{json,md}.

    A source with fewer records than that is refused before anything is translated. If every source record is
    translated and still too few are usable, the corpus and its report are written and ShortCorpusError is raised.
    english: the `LoadedData` already read by the caller (the notebook shows it first), so it is not read twice.
    """
    from clo_lib.data import OASST_HINT, ShortCorpusError, load_english, usable_records
    from clo_lib.pairs import nested_subset
    from clo_lib.provenance import stage_fingerprint

    out_dir = Path(out_dir) if out_dir else corpus_dir(cfg)
    tcfg, tgt = cfg.translation, cfg.language
    check_pair(tcfg, SOURCE_LANGUAGE, tgt)  # before reading data or loading a model
    loaded = english if english is not None else load_english(cfg.data)
    needed = cfg.data.pool_size or cfg.data.size
    if needed > len(loaded.records):
        raise ShortCorpusError(f"data.pool_size (or data.size) = {needed} but {loaded.summary()}; lower it or use "
                               f"a larger source{OASST_HINT if cfg.data.source in ('oasst1', 'oasst2') else ''}")
    # The whole source in one seeded order; the corpus is a prefix of it, so training's first N usable records
    # (and a larger corpus made later) keep the nesting.
    order = nested_subset(loaded.records, len(loaded.records), cfg.data.subset_seed)
    cache = translation_cache(cfg)
    corrupt = cache.corrupt_lines
    translator = make_translator(tcfg, SOURCE_LANGUAGE, tgt)
    parallel: list[dict] = []
    totals: Counter = Counter()
    batch = needed
    while True:
        part, stats = translate_records(order[len(parallel): len(parallel) + batch], translator, cache, tgt, tcfg,
                                        progress)
        parallel += part
        totals.update({k: v for k, v in stats.items() if k in ("chunks", "translated", "cached", "seconds",
                                                               "joint_inputs", "joint_split")})
        usable = len(usable_records(parallel, cfg.data.keep_flagged))
        if usable >= needed or len(parallel) == len(order):
            break
        # Translate as many more as the usable share so far says are missing, with a margin.
        share = max(usable / len(parallel), 0.05)
        batch = math.ceil((needed - usable) / share * 1.1) + 1
    flag_counts = Counter(flag for record in parallel for flag in record["flags"])
    report = {
        "language": tgt, "backend": tcfg.backend, "model": tcfg.model, "source": loaded.source,
        "source_records": len(loaded.records), "skipped_source_rows": [list(s) for s in loaded.skipped],
        "records": len(parallel), "usable_records": usable, "needed_records": needed,
        "flagged_records": sum(bool(r["flags"]) for r in parallel),
        "flags": dict(sorted(flag_counts.items())), "cache_file": str(cache.path),
        "cache_corrupt_lines_redone": corrupt, **{k: v for k, v in totals.items() if not k.startswith("joint_")},
        "seconds": round(totals["seconds"], 3),
        "chunks_per_s": round(totals["translated"] / totals["seconds"], 2) if totals["seconds"] else None,
        "fingerprint": stage_fingerprint(cfg, "translate"),
        "mode": tcfg.mode,
    }
    if tcfg.mode == "joint":
        split_records = sum(not r["joint_fallback"] for r in parallel)
        report["joint"] = {"catalyst": tcfg.catalyst, "indicator": tcfg.indicator,
                           "inputs": totals["joint_inputs"], "inputs_split": totals["joint_split"],
                           "records_split": split_records, "fallback_records": len(parallel) - split_records,
                           "reversibility": round(split_records / len(parallel), 4) if parallel else None}
    write_parallel(out_dir, parallel)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", report_markdown(report, parallel))
    if usable < needed:
        raise ShortCorpusError(f"all {len(parallel)} records of {loaded.source} are translated and {usable} are "
                               f"usable ({report['flagged_records']} flagged), fewer than the {needed} needed; the "
                               f"corpus is in {out_dir}: lower data.pool_size, set data.keep_flagged, or use a "
                               "larger source")
    return report


def write_parallel(out_dir: Path, parallel: list[dict]) -> None:
    """parallel.jsonl (atomic) and the same rows as a `datasets` dataset (written aside, then swapped in)."""
    import shutil

    import datasets

    write_jsonl(out_dir / "parallel.jsonl", parallel)
    staging = out_dir / ".dataset.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # saving a few MB needs no progress bar
    try:
        datasets.Dataset.from_list(parallel).save_to_disk(str(staging))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    final = out_dir / "dataset"
    old = out_dir / ".dataset.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def report_markdown(report: dict, parallel: Sequence[dict], examples: int = 3) -> str:
    lines = [f"# Translation into {get_language(report['language']).name} ({report['language']})", "",
             f"- source: {report['source']} ({report['source_records']} usable English records, "
             f"{len(report['skipped_source_rows'])} rows skipped)",
             f"- backend: {report['backend']}, model: {report['model']}",
             f"- records: {report['records']}, flagged: {report['flagged_records']} (dropped from training unless "
             f"data.keep_flagged); usable: {report['usable_records']} of the {report['needed_records']} needed",
             f"- chunks: {report['chunks']} distinct, {report['translated']} translated now, {report['cached']} "
             f"from the cache, {report['seconds']} s" + (f", {report['chunks_per_s']} chunks/s"
                                                         if report["chunks_per_s"] else "")]
    if report.get("joint"):
        j = report["joint"]
        lines.append(f"- joint translation (catalyst {j['catalyst']}, indicator {j['indicator']}): "
                     f"{j['records_split']} of {report['records']} records split back cleanly (reversibility "
                     f"{j['reversibility']:.1%}); {j['fallback_records']} translated part by part instead "
                     f"(joint_fallback); {j['inputs_split']} of {j['inputs']} joint inputs split")
    lines.append("")
    if report["flags"]:
        lines += ["| flag | records |", "|---|---|"] + [f"| {k} | {v} |" for k, v in report["flags"].items()] + [""]
    lines += ["## Examples", ""]
    for record in parallel[:examples]:
        lines += [f"**{record['id']}** {' '.join(record['flags'])}", "",
                  f"> EN: {record['prompt_en']}", ">", f"> {report['language'].upper()}: {record['prompt_tgt']}", "",
                  f"> EN: {record['response_en']}", ">", f"> {report['language'].upper()}: {record['response_tgt']}",
                  ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m clo_lib.translate RUN.yaml [--set key=value] [--out DIR]`: write the run's parallel corpus."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m clo_lib.translate", description=main.__doc__)
    parser.add_argument("configs", nargs="+", help="YAML layers, later overriding earlier")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="folder for the corpus (default: <output_dir>/data/<language>)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(*args.configs, overrides=args.overrides)
        report = run_translation(cfg, args.out)
    except (ConfigError, UnsupportedLanguageError, EndpointError, ConnectionError, FileNotFoundError,
            ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {k: report[k] for k in ("language", "records", "flagged_records", "translated", "cached", "seconds")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
