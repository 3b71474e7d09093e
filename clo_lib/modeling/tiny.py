"""Tiny, randomly initialised models and tokenizers built locally, for tests, benchmarks and smoke runs.

Nothing here touches a model hub. Each builder trains a tokenizer on a small corpus, creates a model from a
transformers config, saves both with `save_pretrained`, and returns the folder, so callers load them back through
the same `from_pretrained` code path as the real checkpoints named in params.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from clo_lib.modeling.gguf_writer import write_gguf

# A few lines in each of the paper's languages, so tokenizers see every script the tests use.
DEFAULT_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea. The sea is wide and blue.",
    "Explain why the sky is blue in one sentence.",
    "法国的首都是哪里？法国的首都是巴黎。",
    "Was ist die Hauptstadt von Frankreich? Die Hauptstadt von Frankreich ist Paris.",
    "프랑스의 수도는 어디입니까? 프랑스의 수도는 파리입니다.",
    "Apa ibu kota Prancis? Ibu kota Prancis adalah Paris.",
    "Mji mkuu wa Ufaransa ni upi? Mji mkuu wa Ufaransa ni Paris.",
    "Kí ni olú ìlú Faransé? Olú ìlú Faransé ni Paris.",
    "### Instruction:\n### Response:\n 0 1 2 3 4 5 6 7 8 9 + - = ? ! . ,",
]

DECODER_ARCHS = ("llama", "mistral", "qwen2")
SEQ2SEQ_ARCHS = ("m2m100", "marian", "nllb")

# A minimal chat template, so chat-model prompt formatting can be tested on a tiny model.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_bpe_tokenizer(corpus: list[str] | None = None, vocab_size: int = 512, chat_template: bool = True):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `corpus` (any script, no unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus or DEFAULT_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
    )
    if chat_template:
        fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def make_tiny_causal_lm(
    path: str | Path,
    arch: str = "llama",
    corpus: list[str] | None = None,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab_size: int = 512,
) -> Path:
    """Save a tiny decoder of `arch` (llama, mistral, qwen2) and its tokenizer to `path`; return `path`."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    configs = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    if arch not in configs:
        raise ValueError(f"arch = {arch!r}; expected one of {', '.join(DECODER_ARCHS)}")
    path = Path(path)
    tokenizer = build_bpe_tokenizer(corpus, vocab_size=vocab_size)
    config = configs[arch](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _train_sentencepiece(corpus: list[str], vocab_size: int) -> bytes:
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buffer, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, hard_vocab_limit=False, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1,
        minloglevel=2,
    )
    return buffer.getvalue()


def _spm_vocab(spm_bytes: bytes, specials: list[str]) -> dict[str, int]:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=spm_bytes)
    vocab = {token: i for i, token in enumerate(specials)}
    for i in range(processor.get_piece_size()):
        vocab.setdefault(processor.id_to_piece(i), len(vocab))
    return vocab


def make_tiny_seq2seq(
    path: str | Path,
    arch: str = "m2m100",
    corpus: list[str] | None = None,
    seed: int = 0,
    d_model: int = 32,
    spm_vocab_size: int = 300,
) -> Path:
    """Save a tiny translation model (m2m100, marian or nllb) with a tokenizer trained locally.

    m2m100 and marian get a SentencePiece model; nllb gets NLLB's tokenizers-based BPE with its FLORES-200 language
    tokens (eng_Latn, swh_Latn, ...). NLLB shares M2M100's architecture; keep "nllb" in the folder name, as in the
    hub ids, so that the translation stage can tell the two families apart.
    """
    if arch not in SEQ2SEQ_ARCHS:
        raise ValueError(f"arch = {arch!r}; expected one of {', '.join(SEQ2SEQ_ARCHS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if arch == "nllb":
        from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

        tokenizer = NllbTokenizer().train_new_from_iterator(corpus or DEFAULT_CORPUS, vocab_size=spm_vocab_size)
        torch.manual_seed(seed)
        config = M2M100Config(
            vocab_size=len(tokenizer), d_model=d_model, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=d_model * 2,
            decoder_ffn_dim=d_model * 2, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
        )
        M2M100ForConditionalGeneration(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path
    spm_bytes = _train_sentencepiece(corpus or DEFAULT_CORPUS, spm_vocab_size)
    torch.manual_seed(seed)
    if arch == "m2m100":
        from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer

        (path / "sentencepiece.bpe.model").write_bytes(spm_bytes)
        vocab = _spm_vocab(spm_bytes, ["<s>", "<pad>", "</s>", "<unk>"])
        (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        tokenizer = M2M100Tokenizer(str(path / "vocab.json"), str(path / "sentencepiece.bpe.model"))
        # Language tokens (__sw__) sit after the SentencePiece vocab, so size the embeddings by the largest id.
        largest_id = max(max(tokenizer.get_vocab().values()), max(tokenizer.lang_token_to_id.values()))
        config = M2M100Config(
            vocab_size=largest_id + 1 + tokenizer.num_madeup_words, d_model=d_model, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=d_model * 2,
            decoder_ffn_dim=d_model * 2, max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
        )
        model = M2M100ForConditionalGeneration(config)
    else:
        from transformers import MarianConfig, MarianMTModel, MarianTokenizer

        (path / "source.spm").write_bytes(spm_bytes)
        (path / "target.spm").write_bytes(spm_bytes)
        vocab = _spm_vocab(spm_bytes, ["</s>", "<unk>", "<pad>"])
        (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        tokenizer = MarianTokenizer(str(path / "source.spm"), str(path / "target.spm"), str(path / "vocab.json"))
        config = MarianConfig(
            vocab_size=len(tokenizer), d_model=d_model, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=d_model * 2,
            decoder_ffn_dim=d_model * 2, max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id, forced_eos_token_id=tokenizer.eos_token_id,
        )
        model = MarianMTModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


DONOR_FAMILIES = ("wordpiece", "bpe", "sentencepiece")


def make_tiny_donor(path: str | Path, family: str, corpus: list[str] | None = None, seed: int = 0) -> Path:
    """A tiny target-language PLM of one tokenizer family, as SALT's donors are (BERT, GPT and T5 style): WordPiece
    with BERT's [CLS] ... [SEP] and no BOS or EOS (a BertModel); byte-level BPE (a Llama decoder, as
    make_tiny_causal_lm); SentencePiece (Unigram, ▁) that appends </s> and has no BOS (a T5Model)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, T5Config, T5Model

    if family == "bpe":
        return make_tiny_causal_lm(path, "llama", corpus=corpus, seed=seed, vocab_size=300, hidden_size=16)
    if family not in DONOR_FAMILIES:
        raise ValueError(f"family = {family!r}; expected one of {', '.join(DONOR_FAMILIES)}")
    corpus = corpus or DEFAULT_CORPUS
    if family == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        backend.train_from_iterator(corpus, trainers.WordPieceTrainer(
            vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
        cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
        torch.manual_seed(seed)
        model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32))
    else:
        backend = Tokenizer(models.Unigram())
        backend.normalizer = normalizers.NFKC()
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        backend.train_from_iterator(corpus, trainers.UnigramTrainer(
            vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
        backend.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", backend.token_to_id("</s>"))])
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                            eos_token="</s>")
        torch.manual_seed(seed)
        model = T5Model(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def make_tiny_gguf(path: str | Path, seed: int = 0, quantize: bool = False) -> Path:
    """Write a tiny Llama as a GGUF file (weights, config and tokenizer in one file; clo_lib.modeling.gguf_writer),
    next to the same model as an HF folder (`<path>.hf/`) to compare against; return the .gguf path. `quantize`
    stores the 2-D weights as Q8_0, as real GGUF checkpoints store quantised weights; else float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    reference = make_tiny_causal_lm(path.with_suffix(".hf"), seed=seed, vocab_size=300)
    model = AutoModelForCausalLM.from_pretrained(reference)
    tokenizer = AutoTokenizer.from_pretrained(reference)
    return write_gguf(model, tokenizer, path, "q8_0" if quantize else "f32", name="tiny-llama")
