"""The translation backends, by `translation.backend`: a seq2seq model (`hf`: M2M100, NLLB, MADLAD-400, Marian), a
local causal LM (`hf_causal`, also from GGUF), an OpenAI-compatible endpoint (`openai`), and, reached by name, the
toy world's exact translator (`toy`). Each says what it can check before loading, how it is made from the config, and
which settings enter the cache key."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from clo_lib.artifacts.corpus import hub_errors
from clo_lib.common.endpoint import ChatEndpoint
from clo_lib.common.languages import get_language
from clo_lib.common.registry import resolve
from clo_lib.config.schema import TranslationConfig
from clo_lib.method import joint
from clo_lib.modeling.models import check_gguf, load_gguf, torch_dtype
from clo_lib.mt.codes import UnsupportedLanguageError, language_code, model_family, model_for_pair
from clo_lib.mt.translator import TRANSLATOR_SYSTEM_PROMPT, Translator, catalyst_text

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# A base model's few-shot examples: a question and its answer in each language that has them (the toy world's
# first evaluation question, kept as data so the words, and so translation cache keys, stay as they were).
FEW_SHOT = json.loads((Path(__file__).parent / "few_shot.json").read_text(encoding="utf-8"))

# ---------------------------------------------------------------------------------------------------------------
# Backends: one interface, `count_tokens` (for splitting) and `translate_batch` (for a list of chunks)


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
    return torch_dtype("auto") if torch_dtype("auto") == torch.bfloat16 else torch.float16


class HFTranslator(Translator):
    """A seq2seq model from transformers, called through generate() (transformers 5 has no translation pipeline)."""

    backend = "hf"

    @classmethod
    def check(cls, cfg: TranslationConfig, src: str, tgt: str) -> None:
        family = model_family(cfg.model)
        language_code(family, src), language_code(family, tgt)

    @classmethod
    def create(cls, cfg: TranslationConfig, src: str, tgt: str, indicator: str | None) -> Translator:
        return cls(cfg.model, src, tgt, cfg.num_beams, cfg.max_input_tokens, cfg.max_new_tokens, cfg.device,
                   cfg.revision)

    @classmethod
    def settings(cls, cfg: TranslationConfig) -> dict[str, Any]:
        # inputs past the limit are cut (and flagged); half precision on a GPU changes beams
        device = _device(cfg.device)
        return {"num_beams": cfg.num_beams, "max_new_tokens": cfg.max_new_tokens, "revision": cfg.revision,
                "max_input_tokens": cfg.max_input_tokens, "device": device, "dtype": str(_hf_dtype(device))}

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


class CausalTranslator(Translator):
    """A local causal LM as translator (`translation.backend: hf_causal`), greedy, one line out per line in.

    A model with a chat template is asked through it (the system prompt of the openai backend). A base model is
    prompted few-shot, `English: ...` / `German: ...` after two example pairs, and its output is cut at the first
    newline. The examples are a question and its answer of the toy world, which exist in every language it has;
    in joint mode they carry the markers, so the model sees how they are kept.
    """

    backend = "hf_causal"

    @classmethod
    def check(cls, cfg: TranslationConfig, src: str, tgt: str) -> None:
        if cfg.gguf_file:
            check_gguf(cfg.model, cfg.gguf_file, key="translation.gguf_file")  # missing, or not loadable

    @classmethod
    def create(cls, cfg: TranslationConfig, src: str, tgt: str, indicator: str | None) -> Translator:
        return cls(cfg.model, src, tgt, cfg.gguf_file, cfg.max_new_tokens, cfg.device, indicator,
                   catalyst_text(cfg) if indicator else None)

    @classmethod
    def settings(cls, cfg: TranslationConfig) -> dict[str, Any]:
        # the few-shot examples follow from the languages and, jointly, the markers
        return {"max_new_tokens": cfg.max_new_tokens, "gguf_file": cfg.gguf_file, "revision": cfg.revision,
                "system_prompt": TRANSLATOR_SYSTEM_PROMPT, "prompt": "few-shot-v1", "device": _device(cfg.device)}

    def __init__(self, model: str, src: str, tgt: str, gguf_file: str | None = None, max_new_tokens: int = 256,
                 device: str = "auto", indicator: str | None = None, catalyst: str | None = None):
        import torch


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
            for lang in (src, tgt):
                if lang not in FEW_SHOT:
                    raise UnsupportedLanguageError(
                        f"{model} has no chat template, so it is prompted few-shot with the toy world's sentences, "
                        f"which have no {get_language(lang).name}; expected a chat model or one of "
                        f"{', '.join(FEW_SHOT)}")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def few_shot(self, text: str, src: str, tgt: str) -> str:
        """The base-model prompt: two example pairs, then `text` to continue."""
        names = get_language(src).name, get_language(tgt).name
        (q_src, a_src), (q_tgt, a_tgt) = FEW_SHOT[src], FEW_SHOT[tgt]
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

    @classmethod
    def check(cls, cfg: TranslationConfig, src: str, tgt: str) -> None:
        ChatEndpoint(cfg.api_base_url or DEFAULT_BASE_URL, cfg.model, cfg.api_key_env).check()

    @classmethod
    def create(cls, cfg: TranslationConfig, src: str, tgt: str, indicator: str | None) -> Translator:
        return cls(cfg.model, cfg.api_base_url, cfg.api_key_env, concurrency=cfg.batch_size,
                   max_new_tokens=cfg.max_new_tokens, indicator=indicator)

    @classmethod
    def settings(cls, cfg: TranslationConfig) -> dict[str, Any]:
        return {"max_new_tokens": cfg.max_new_tokens, "system_prompt": TRANSLATOR_SYSTEM_PROMPT,
                "base_url": cfg.api_base_url or DEFAULT_BASE_URL}

    def __init__(self, model: str, base_url: str | None, api_key_env: str, concurrency: int = 8,
                 max_new_tokens: int = 1024, indicator: str | None = None):
        super().__init__(model)
        self.endpoint = ChatEndpoint(base_url or DEFAULT_BASE_URL, model, api_key_env)
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


# The backends by `translation.backend`. A class, or "module:Class" for one that is imported only when asked for
# (the toy world's translator, so the real pipeline does not import the toy world).
BACKENDS: dict[str, type[Translator] | str] = {
    "hf": HFTranslator,
    "hf_causal": CausalTranslator,
    "openai": OpenAITranslator,
    "toy": "clo_lib.toy.translator:ToyTranslator",
}


def backend_class(name: str) -> type[Translator]:
    entry = BACKENDS[name]
    return resolve(entry) if isinstance(entry, str) else entry


def check_pair(cfg: TranslationConfig, src: str, tgt: str) -> None:
    """Everything that can be checked about a translation setup without loading a model."""
    backend_class(cfg.backend).check(cfg, src, tgt)


def make_translator(cfg: TranslationConfig, src: str, tgt: str) -> Translator:
    check_pair(cfg, src, tgt)
    indicator = cfg.indicator if cfg.mode == "joint" else None
    return backend_class(cfg.backend).create(cfg, src, tgt, indicator)


def translation_settings(cfg: TranslationConfig) -> dict[str, Any]:
    """What, besides backend, model, languages and text, changes a translation: part of every cache key. In joint
    mode the markers and the Catalyst Statement too, for the backends whose handling of a text depends on them
    (whether a text counts as a joint input, its instruction, the few-shot examples); joint mode's part-by-part
    fallback translates with no markers, exactly as separate mode (Translator.separately)."""
    joint_prompt = {"joint": [cfg.indicator, catalyst_text(cfg)]} if cfg.mode == "joint" else {}
    return {**backend_class(cfg.backend).settings(cfg), **joint_prompt}
