"""The vocabulary transfer stage (SALT, S. Lee et al., Findings of ACL 2025; SIBLINGS.md 2): an English-centric LLM
gets a small target-language PLM's vocabulary, its new embeddings made by clo_lib.vocab.

    LLM + its tokenizer, donor PLM + its tokenizer, auxiliary vectors (fastText)
      ─► shared tokens (same text after normalising Ġ / ▁ / ##) and special tokens (by role: bos, eos, pad, unk)
      ─► new input embeddings by salt | focus | mean | multivariate (clo_lib.vocab.init_embeddings)
      ─► the LM head: tied models share the new input rows; an untied head gets the same method applied to the
         LLM's output rows (assumed: the paper's models tie them and it says nothing of untied heads)
      ─► the LLM with the donor's tokenizer

    ─► language-adaptive continued pretraining on target-language text (the causal-LM objective), the held-out
       loss logged from step 0

This module holds the assembly and the continued pretraining; the stage's config keys, CLI and notebook, and the
toy-world study come next (issue 19).
"""

from __future__ import annotations

from typing import Sequence

import torch

from clo_lib.vocab import init_embeddings, shared_tokens

SPECIAL_ROLES = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def special_tokens(new_tokenizer, llm_tokenizer) -> dict[int, int]:
    """new id -> LLM id for the special tokens both tokenizers have, matched by role, not by text (`[SEP]` and
    `</s>` are both the end of a sequence)."""
    pairs = {}
    for role in SPECIAL_ROLES:
        new, old = getattr(new_tokenizer, role, None), getattr(llm_tokenizer, role, None)
        if new is not None and old is not None and new not in pairs:
            pairs[new] = old
    return pairs


def donor_input_embeddings(donor_model, new_tokenizer) -> torch.Tensor:
    """The donor PLM's input embeddings, one row per id of its tokenizer (a padded matrix is cut to the ids)."""
    rows = max(new_tokenizer.get_vocab().values()) + 1
    weight = donor_model.get_input_embeddings().weight.detach()
    if weight.shape[0] < rows:
        raise ValueError(f"the donor model has {weight.shape[0]} input embeddings but its tokenizer has ids up to "
                         f"{rows - 1}; expected the model and the tokenizer of the same PLM")
    return weight[:rows]


def transfer_model(llm, llm_tokenizer, donor_embeddings: torch.Tensor | None, new_tokenizer,
                   aux: torch.Tensor | None, method: str = "salt", ridge: float = 0.0, seed: int = 0) -> dict:
    """Give `llm` the vocabulary of `new_tokenizer` in place: new input embeddings (and an untied head) by `method`,
    config ids of its special tokens. Returns counts for the stage's report."""
    mapped = {**shared_tokens(new_tokenizer, llm_tokenizer), **special_tokens(new_tokenizer, llm_tokenizer)}
    size = max(new_tokenizer.get_vocab().values()) + 1
    generator = torch.Generator().manual_seed(seed)
    inputs = llm.get_input_embeddings().weight
    head = llm.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == inputs.data_ptr()
    new_inputs = init_embeddings(method, inputs, donor_embeddings, aux, mapped, ridge, generator)
    new_head = None
    if head is not None and not tied:
        new_head = init_embeddings(method, head.weight, donor_embeddings, aux, mapped, ridge, generator)
    before = inputs.shape[0]
    llm.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        llm.get_input_embeddings().weight.copy_(new_inputs)
        if new_head is not None:
            llm.get_output_embeddings().weight.copy_(new_head)
    for role in SPECIAL_ROLES:
        if role != "unk_token_id" and getattr(new_tokenizer, role, None) is not None:
            setattr(llm.config, role, getattr(new_tokenizer, role))
            if getattr(llm, "generation_config", None) is not None:
                setattr(llm.generation_config, role, getattr(new_tokenizer, role))
    with_aux = int((~torch.isnan(aux).any(dim=1)).sum()) if aux is not None else 0
    return {"method": method, "vocab_before": before, "vocab_after": size, "shared": len(mapped),
            "special_by_role": len(special_tokens(new_tokenizer, llm_tokenizer)), "with_aux_vector": with_aux,
            "tied_head": tied}


def tokens_per_word(tokenizer, texts: Sequence[str]) -> float:
    """Tokens per whitespace-separated word over `texts`: how finely a tokenizer cuts a language."""
    words = sum(len(text.split()) for text in texts)
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    return tokens / words if words else float("nan")


def mean_loss(model, tokenizer, texts: Sequence[str], batch_size: int = 16, max_length: int = 128) -> float:
    """Token-weighted causal-LM loss of `model` on `texts` (each with the tokenizer's EOS appended)."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(texts), batch_size):
            batch = [text + (tokenizer.eos_token or "") for text in texts[begin: begin + batch_size]]
            encoded = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                                add_special_tokens=False).to(model.device)
            labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
            logits = model(**encoded).logits[:, :-1]
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += float(loss)
            tokens += int((target != -100).sum())
    return total / tokens if tokens else float("nan")


def continued_pretraining(model, tokenizer, texts: Sequence[str], held_out: Sequence[str], steps: int,
                          learning_rate: float = 1e-3, batch_size: int = 16, trainable: str = "embeddings",
                          seed: int = 0, max_length: int = 128, eval_every: int = 10) -> list[dict]:
    """Language-adaptive continued pretraining: the causal-LM objective on target-language `texts` for `steps`
    optimizer steps, training the embeddings (input and output rows) or everything. Returns the held-out loss at
    step 0 and every `eval_every` steps: [{step, loss}]. (Which parts train, the rate and the steps are not in the
    paper: parameters, assumed.)"""
    import random

    if trainable not in ("embeddings", "all"):
        raise ValueError(f"trainable = {trainable!r}; expected embeddings or all")
    torch.manual_seed(seed)
    for parameter in model.parameters():
        parameter.requires_grad = trainable == "all"
    if trainable == "embeddings":
        model.get_input_embeddings().weight.requires_grad = True
        if model.get_output_embeddings() is not None:
            model.get_output_embeddings().weight.requires_grad = True
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    order, rng = list(range(len(texts))), random.Random(seed)
    curve = [{"step": 0, "loss": mean_loss(model, tokenizer, held_out, batch_size, max_length)}]
    position = len(order)
    for step in range(1, steps + 1):
        if position + batch_size > len(order):
            rng.shuffle(order)
            position = 0
        batch = [texts[i] + (tokenizer.eos_token or "") for i in order[position: position + batch_size]]
        position += batch_size
        model.train()
        encoded = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                            add_special_tokens=False).to(model.device)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        loss = model(**encoded, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % eval_every == 0 or step == steps:
            curve.append({"step": step, "loss": mean_loss(model, tokenizer, held_out, batch_size, max_length)})
    return curve
