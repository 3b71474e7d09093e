"""The tiny-model helper: every architecture the grid names saves and loads back through from_pretrained."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from clo_lib.modeling import tiny


@pytest.mark.parametrize("arch", tiny.DECODER_ARCHS)
def test_decoder_round_trips_through_from_pretrained(tiny_model_dir, arch):
    path = tiny_model_dir(arch)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == arch
    text = "Mji mkuu wa Ufaransa ni Paris. 法国的首都是巴黎。"
    ids = tokenizer(text, return_tensors="pt")
    assert tokenizer.unk_token_id not in ids.input_ids[0].tolist()  # byte-level: every script is covered
    assert tokenizer.decode(ids.input_ids[0]) == text
    logits = model(**ids).logits
    assert logits.shape == (1, ids.input_ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")


def test_decoder_is_deterministic_per_seed(tmp_path):
    a = AutoModelForCausalLM.from_pretrained(tiny.make_tiny_causal_lm(tmp_path / "a", seed=3))
    b = AutoModelForCausalLM.from_pretrained(tiny.make_tiny_causal_lm(tmp_path / "b", seed=3))
    c = AutoModelForCausalLM.from_pretrained(tiny.make_tiny_causal_lm(tmp_path / "c", seed=4))
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


@pytest.mark.parametrize("arch", tiny.SEQ2SEQ_ARCHS)
def test_seq2seq_generates_after_reload(tiny_model_dir, arch):
    path = tiny_model_dir(arch)
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    extra = {}
    if arch == "m2m100":
        tokenizer.src_lang = "en"
        extra["forced_bos_token_id"] = tokenizer.get_lang_id("sw")
    batch = tokenizer(["What is the capital of France?", "Explain why."], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, **extra)
    assert out.shape[0] == 2
    if arch == "m2m100":
        assert (out[:, 1] == tokenizer.get_lang_id("sw")).all()  # the target-language token is forced


def test_unknown_arch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected one of llama, mistral, qwen2"):
        tiny.make_tiny_causal_lm(tmp_path, "gpt2")
