"""A Llama-family model and its byte-level BPE tokenizer as one GGUF file, for llama.cpp and Ollama, with the `gguf`
package's writer, as llama.cpp's convert_hf_to_gguf.py writes it: GGUF tensor names from gguf's own name map, the
query and key projections permuted into GGML's rotary layout (transformers' GGUF loader undoes that), the
tokenizer's vocabulary, merges and chat template, and the model's config as GGUF metadata.

    write_gguf(model, tokenizer, "model.gguf", "f16")        # or "q8_0" (2-D weights), "f32"

Architectures: Llama (and models with Llama's layout and config, such as SmolLM2 and Mistral v0.1); others are
refused in one sentence (Qwen2 has biases, Gemma its own norms and soft-capping, not written here yet).
"""

from __future__ import annotations

import json
from pathlib import Path

from clo_lib.common.errors import InputError

QTYPES = ("f32", "f16", "q8_0")
ARCHITECTURES = {"llama": "llama", "mistral": "llama"}  # config.model_type -> the GGUF architecture written


def ggml_rotary(weight, n_head: int):
    """llama.cpp's permutation of a query or key projection into GGML's rotary layout."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def _add_config(writer, config, name: str) -> None:
    heads = config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(getattr(config, "head_dim", None) or config.hidden_size // heads)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(rope.get("rope_theta") or getattr(config, "rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _add_tokenizer(writer, tokenizer) -> None:
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "BPE":
        raise InputError(f"the tokenizer is {state['model']['type']}, not byte-level BPE; only BPE tokenizers are "
                         "written to GGUF here")
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in state["model"]["merges"]])
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id,
                          tokenizer.eos_token_id), (writer.add_pad_token_id, tokenizer.pad_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id)):
        if token_id is not None:
            add(token_id)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def write_gguf(model, tokenizer, path: str | Path, qtype: str = "f16", name: str = "model") -> Path:
    """Write `model` (a Llama-family causal LM) and `tokenizer` to the GGUF file `path` in `qtype`."""
    import gguf
    import numpy as np

    config = model.config
    if qtype not in QTYPES:
        raise InputError(f"GGUF type {qtype!r}; expected one of {', '.join(QTYPES)}")
    if config.model_type not in ARCHITECTURES:
        raise InputError(f"model type {config.model_type!r} is not written to GGUF here; expected one of "
                         f"{', '.join(ARCHITECTURES)} (Llama's layout)")
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), ARCHITECTURES[config.model_type])
    _add_config(writer, config, name)
    _add_tokenizer(writer, tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    # A tied head is written as its own output tensor too: llama.cpp reads it either way, and transformers' GGUF
    # reader then needs no tying rule to rebuild the head.
    for tensor_name, tensor in model.state_dict().items():
        data = tensor.detach().float().cpu().numpy()
        if tensor_name.endswith("q_proj.weight"):
            data = ggml_rotary(data, heads)
        elif tensor_name.endswith("k_proj.weight"):
            data = ggml_rotary(data, kv_heads)
        gguf_name = names.get_name(tensor_name, try_suffixes=(".weight", ".bias"))
        if data.ndim == 2 and qtype == "q8_0" and data.shape[-1] % 32 == 0:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif data.ndim == 2 and qtype != "f32":
            writer.add_tensor(gguf_name, data.astype(np.float16))
        else:  # norms (1-D) stay float32, as llama.cpp's converter keeps them
            writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
