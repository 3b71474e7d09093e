"""The vocabulary transfer stage (SALT, S. Lee et al., Findings of ACL 2025; SIBLINGS.md 2): an English-centric LLM
gets a small target-language PLM's vocabulary, its new embeddings made by clo_lib.method.salt.

    LLM + its tokenizer, donor PLM + its tokenizer, auxiliary vectors (fastText)
      ─► shared tokens (same text after normalising Ġ / ▁ / ##) and special tokens (by role: bos, eos, pad, unk;
         the LLM's other special tokens and chat template carried over, so its prompt format survives)
      ─► new input embeddings by salt | focus | mean | multivariate (clo_lib.method.salt.init_embeddings)
      ─► the LM head: tied models share the new input rows; an untied head gets the same method applied to the
         LLM's output rows (assumed: the paper's models tie them and it says nothing of untied heads)
      ─► the LLM with the donor's tokenizer

    ─► language-adaptive continued pretraining on target-language text (the causal-LM objective), the held-out
       loss logged from step 0

    clo transfer RUN.yaml --out DIR      (config keys: transfer.*, params/REFERENCE.md)

writes DIR/model, a base model for `model.name_or_path`, and DIR/transfer.json (counts, tokens per word, the loss
curve, the fingerprint). In a grid, a model whose settings name transfer.donor (or transfer.pretrain_steps, for
method none: continued pretraining only, a control) gets a transfer stage and its runs train from DIR/model
(clo_lib.grid.run); params/grids/toy_salt.yaml is the toy-world study, notebooks/05_transfer.ipynb the lesson.
"""

from __future__ import annotations

from typing import Sequence

import torch

from clo_lib.artifacts.corpus import read_text
from clo_lib.artifacts.provenance import stage_fingerprint
from clo_lib.common.errors import InputError
from clo_lib.common.io import atomic_write_json
from clo_lib.config.load import load_config
from clo_lib.method.loss import sequence_logps
from clo_lib.method.salt import init_embeddings, salt_diagnostics, salt_warning
from clo_lib.modeling.models import (
    check_training_precision,
    keep_trained_in_float32,
    load_model_and_tokenizer,
    training_autocast,
)
from clo_lib.modeling.tokens import aux_embeddings, load_fasttext, shared_tokens, train_fasttext

SPECIAL_ROLES = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def _special_texts(tokenizer) -> list[str]:
    """Every special token of a tokenizer by its text: the roles' and the added ones (a chat format's markers)."""
    added = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    return list(dict.fromkeys([*tokenizer.all_special_tokens, *added]))


def adopt_llm_conventions(new_tokenizer, llm_tokenizer) -> list[str]:
    """Give the donor's tokenizer, in place, the LLM's sequence conventions, which the LLM was trained with and
    training and generation rely on: the roles bos, eos and pad it lacks taken from the LLM (a WordPiece donor has
    no EOS, a T5 donor no BOS: CLO appended a None EOS, and the config kept the old ids, pointing at [CLS]), and
    the LLM's rule for what the tokenizer adds around a text (its BOS, or nothing) instead of the donor's own
    ([CLS] ... [SEP], or ... </s>). Returns the roles taken from the LLM."""
    from tokenizers import processors

    taken = []
    for role in ("bos_token", "eos_token", "pad_token"):
        if getattr(new_tokenizer, role, None) is None and getattr(llm_tokenizer, role, None) is not None:
            new_tokenizer.add_special_tokens({role: getattr(llm_tokenizer, role)})
            taken.append(role)
    plain = llm_tokenizer("x", add_special_tokens=False)["input_ids"]
    marked = llm_tokenizer("x")["input_ids"]
    start = len(marked) - len(plain) if marked[len(marked) - len(plain):] == plain else 0
    # the LLM's added tokens before the text, by role (BOS, in practice), in the new vocabulary
    ids = {llm_tokenizer.convert_ids_to_tokens(i): i for i in marked[:start]}
    roles = {getattr(llm_tokenizer, f"{r}_token_id", None): getattr(new_tokenizer, f"{r}_token", None)
             for r in ("bos", "eos", "cls")}
    before = [roles.get(i) or text for text, i in ids.items()]
    single = " ".join([*before, "$A"])
    pair = " ".join([*before, "$A", "$B:1"])
    new_tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, new_tokenizer.convert_tokens_to_ids(t)) for t in before])
    return taken


def carry_chat_format(new_tokenizer, llm_tokenizer) -> list[str]:
    """Give the donor's tokenizer, in place, what the LLM's prompt format needs: the LLM's special tokens it lacks
    (a chat template's `<|im_start|>`, `<|im_end|>`, ...) as special tokens of its own, and the LLM's chat template
    (the format the LLM learnt; it replaces a donor's). Returns the tokens added; special_tokens maps them to the
    LLM's rows."""
    vocab = new_tokenizer.get_vocab()
    missing = [text for text in _special_texts(llm_tokenizer) if text not in vocab]
    if missing:
        new_tokenizer.add_tokens(missing, special_tokens=True)  # never split, skipped when decoding
    if llm_tokenizer.chat_template:
        new_tokenizer.chat_template = llm_tokenizer.chat_template
    return missing


def special_tokens(new_tokenizer, llm_tokenizer) -> dict[int, int]:
    """new id -> LLM id for the special tokens: by role, not by text, for those both tokenizers have (`[SEP]` and
    `</s>` are both the end of a sequence), then by text for the LLM's other special tokens that the new tokenizer
    holds as special tokens too (carry_chat_format adds them)."""
    pairs = {}
    for role in SPECIAL_ROLES:
        new, old = getattr(new_tokenizer, role, None), getattr(llm_tokenizer, role, None)
        if new is not None and old is not None and new not in pairs:
            pairs[new] = old
    new_vocab, llm_vocab = new_tokenizer.get_vocab(), llm_tokenizer.get_vocab()
    for text in set(_special_texts(llm_tokenizer)) & set(_special_texts(new_tokenizer)):
        pairs.setdefault(new_vocab[text], llm_vocab[text])
    return pairs


def token_map(new_tokenizer, llm_tokenizer) -> dict[int, int]:
    """new id -> LLM id for every token whose row is copied: the shared ordinary tokens and the special tokens."""
    return {**shared_tokens(new_tokenizer, llm_tokenizer), **special_tokens(new_tokenizer, llm_tokenizer)}


def plain_tokenizer(tokenizer):
    """The same tokenizer as a plain fast tokenizer: a donor's own class (BERT's, T5's) would rebuild the
    post-processor adopt_llm_conventions replaced when the saved tokenizer is loaded."""
    from transformers import PreTrainedTokenizerFast

    roles = {role: getattr(tokenizer, role) for role in ("bos_token", "eos_token", "unk_token", "pad_token")
             if getattr(tokenizer, role, None) is not None}
    plain = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, **roles)
    plain.chat_template = tokenizer.chat_template
    return plain


def donor_input_embeddings(donor_model, new_tokenizer) -> torch.Tensor:
    """The donor PLM's input embeddings, one row per id of its tokenizer (a padded matrix is cut to the ids)."""
    rows = max(new_tokenizer.get_vocab().values()) + 1
    weight = donor_model.get_input_embeddings().weight.detach()
    if weight.shape[0] < rows:
        raise InputError(f"the donor model has {weight.shape[0]} input embeddings but its tokenizer has ids up to "
                         f"{rows - 1}; expected the model and the tokenizer of the same PLM")
    return weight[:rows]


def _padded(rows: torch.Tensor | None, size: int, fill: float) -> torch.Tensor | None:
    """`rows` extended to `size` rows of `fill`."""
    if rows is None or rows.shape[0] >= size:
        return rows
    return torch.cat([rows, rows.new_full((size - rows.shape[0], rows.shape[1]), fill)])


def transfer_model(llm, llm_tokenizer, donor_embeddings: torch.Tensor | None, new_tokenizer,
                   aux: torch.Tensor | None, method: str = "salt", ridge: float = 0.0, seed: int = 0) -> dict:
    """Give `llm` the vocabulary of `new_tokenizer` in place: new input embeddings (and an untied head) by `method`,
    config ids of its special tokens. `new_tokenizer` gains the LLM's chat format (carry_chat_format). Returns
    counts for the stage's report."""
    roles_taken = adopt_llm_conventions(new_tokenizer, llm_tokenizer)
    carried = carry_chat_format(new_tokenizer, llm_tokenizer)
    mapped = token_map(new_tokenizer, llm_tokenizer)
    size = max(new_tokenizer.get_vocab().values()) + 1
    # the carried tokens are new ids past the donor's rows: no auxiliary vector, and a donor row never read (they
    # are mapped, so they take the LLM's rows)
    aux = _padded(aux, size, float("nan"))
    donor_embeddings = _padded(donor_embeddings, size, 0.0)
    generator = torch.Generator().manual_seed(seed)
    inputs = llm.get_input_embeddings().weight
    head = llm.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == inputs.data_ptr()
    new_inputs = init_embeddings(method, inputs, donor_embeddings, aux, mapped, ridge, generator, size)
    new_head = None
    if head is not None and not tied:
        new_head = init_embeddings(method, head.weight, donor_embeddings, aux, mapped, ridge, generator, size)
    before = inputs.shape[0]
    llm.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        llm.get_input_embeddings().weight.copy_(new_inputs)
        if new_head is not None:
            llm.get_output_embeddings().weight.copy_(new_head)
    for role in SPECIAL_ROLES:  # every id from the new tokenizer, None where it has none: an old id would point
        if role != "unk_token_id":  # at an unrelated token of the new vocabulary
            setattr(llm.config, role, getattr(new_tokenizer, role, None))
            if getattr(llm, "generation_config", None) is not None:
                setattr(llm.generation_config, role, getattr(new_tokenizer, role, None))
    with_aux = int((~torch.isnan(aux).any(dim=1)).sum()) if aux is not None else 0
    diagnostics = None
    if method == "salt":  # how well posed the per-token least squares were (transfer.json; a warning when not)
        made_ids = torch.tensor([i for i in range(size) if i not in mapped], dtype=torch.long)
        diagnostics = salt_diagnostics(donor_embeddings, aux, mapped, made_ids)
    # how large the made rows are next to the LLM's own (SALT's unregularised least squares can blow them up)
    made = torch.tensor([i for i in range(size) if i not in mapped], dtype=torch.long)
    ratio = float(new_inputs[made].double().norm(dim=1).median() / inputs.detach().double().norm(dim=1).median()) \
        if len(made) else None
    return {"method": method, "vocab_before": before, "vocab_after": size, "shared": len(mapped),
            "special": len(special_tokens(new_tokenizer, llm_tokenizer)), "special_carried": carried,
            "roles_from_llm": roles_taken, "salt_diagnostics": diagnostics,
            "with_aux_vector": with_aux, "tied_head": tied, "made_row_norm_ratio": ratio}


def tokens_per_word(tokenizer, texts: Sequence[str]) -> float:
    """Tokens per whitespace-separated word over `texts`: how finely a tokenizer cuts a language."""
    words = sum(len(text.split()) for text in texts)
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    return tokens / words if words else float("nan")


def held_out_loss(model, tokenizer, texts: Sequence[str], batch_size: int = 16, max_length: int = 128) -> dict:
    """The causal-LM loss of `model` on `texts` (each with the tokenizer's EOS appended): {loss: nats per predicted
    token, loss_per_word: the same nats per whitespace-separated word, which compares tokenizers}."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(texts), batch_size):
            batch = [text + (tokenizer.eos_token or "") for text in texts[begin: begin + batch_size]]
            encoded = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                                add_special_tokens=False).to(model.device)
            labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
            sums, counts = sequence_logps(model(**encoded).logits, labels)  # the kit's own log-probs
            total -= float(sums.sum())
            tokens += int(counts.sum())
    words = sum(len(text.split()) for text in texts)
    return {"loss": total / tokens if tokens else float("nan"), "loss_per_word": total / words if words else
            float("nan")}


class _TextDataset(torch.utils.data.Dataset):
    """Target-language texts for the Trainer: each tokenised with the tokenizer's EOS appended, labels = ids
    (DataCollatorForSeq2Seq pads the labels with -100, so padding never counts, even where pad = EOS)."""

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int):
        eos = tokenizer.eos_token or ""
        self.items = [tokenizer(text + eos, truncation=True, max_length=max_length, add_special_tokens=False)
                      for text in texts]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        return {"input_ids": item["input_ids"], "attention_mask": item["attention_mask"],
                "labels": list(item["input_ids"])}


def continued_pretraining(model, tokenizer, texts: Sequence[str], held_out: Sequence[str], steps: int,
                          learning_rate: float = 1e-3, batch_size: int = 16, trainable: str = "embeddings",
                          seed: int = 0, max_length: int = 128, eval_every: int = 10) -> list[dict]:
    """Language-adaptive continued pretraining with the transformers Trainer: the causal-LM objective on
    target-language `texts` for `steps` optimizer steps (AdamW, constant rate, no weight decay), training the
    embeddings (input and output rows) or everything. 16-bit weights train as float32 master weights under the
    Trainer's autocast, as the kit's training does. Returns the held-out loss (held_out_loss: per token and per
    word) at step 0 and every `eval_every` steps: [{step, loss, loss_per_word}]. Which parts train, the rate, the
    schedule and the steps are not in the paper: parameters, assumed."""
    import tempfile

    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    if trainable not in ("embeddings", "all"):
        raise InputError(f"trainable = {trainable!r}; expected embeddings or all")
    dtype = model.get_input_embeddings().weight.dtype
    for parameter in model.parameters():
        parameter.requires_grad = trainable == "all"
    if trainable == "embeddings":
        model.get_input_embeddings().weight.requires_grad = True
        if model.get_output_embeddings() is not None:
            model.get_output_embeddings().weight.requires_grad = True
    keep_trained_in_float32(model)
    curve: list[dict] = []

    class HeldOutLoss(TrainerCallback):
        def measure(self, step: int, model) -> None:
            # under the training autocast: 16-bit frozen weights meet float32 trained ones
            with training_autocast(dtype, model.device):
                curve.append({"step": step, **held_out_loss(model, tokenizer, held_out, batch_size, max_length)})

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.measure(0, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % eval_every == 0 or state.global_step == steps:
                self.measure(state.global_step, model)

    with tempfile.TemporaryDirectory() as scratch:
        arguments = TrainingArguments(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=batch_size,
            learning_rate=learning_rate, lr_scheduler_type="constant", weight_decay=0.0, seed=seed, data_seed=seed,
            bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
            save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(), remove_unused_columns=False)
        trainer = Trainer(model=model, args=arguments, train_dataset=_TextDataset(tokenizer, texts, max_length),
                          data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
                          callbacks=[HeldOutLoss()])
        trainer.train()
    return curve


def auxiliary_vectors(cfg):
    """The fastText vectors `transfer.*` names: the .bin of transfer.aux_vectors, else trained on transfer.aux_text
    (transfer.aux_dim, transfer.aux_epochs, the run's seed)."""
    tcfg = cfg.transfer
    if tcfg.aux_vectors:
        return load_fasttext(tcfg.aux_vectors)
    return train_fasttext(tcfg.aux_text, tcfg.aux_dim, tcfg.aux_epochs, cfg.seed)


def run_transfer(cfg, out_dir, log=print) -> dict:
    """The stage: the config's LLM (`model.*`) given the donor's vocabulary by `transfer.method`, optionally
    pretrained further on target text; written to <out_dir>/model (a base model for `model.name_or_path`) with
    transfer.json (the counts, tokens per word before and after, the loss curve). A folder already holding a
    transfer made with the same settings is returned as it is."""
    import json
    from pathlib import Path

    from transformers import AutoModel, AutoTokenizer

    tcfg = cfg.transfer
    replace = tcfg.method != "none"
    if replace and not tcfg.donor:
        raise InputError("transfer.donor is not set; expected the target-language PLM (a folder or hub id) whose "
                         "vocabulary the LLM takes")
    needs_aux = tcfg.method in ("salt", "focus")
    if needs_aux and not (tcfg.aux_vectors or tcfg.aux_text):
        raise InputError(f"transfer.method = {tcfg.method} needs auxiliary vectors; expected transfer.aux_vectors "
                         "(a fastText .bin) or transfer.aux_text (a target-language text file to train them on)")
    if not replace and not tcfg.pretrain_steps:
        raise InputError("transfer.method = none keeps the vocabulary, so it needs transfer.pretrain_steps > 0 to do "
                         "anything")
    lines = []
    if tcfg.pretrain_steps:
        if not tcfg.pretrain_text:
            raise InputError("transfer.pretrain_steps > 0 needs transfer.pretrain_text, a target-language text file")
        lines = [line for line in read_text(Path(tcfg.pretrain_text), "transfer.pretrain_text").splitlines()
                 if line.strip()]
        if len(lines) <= tcfg.held_out:
            raise InputError(f"transfer.pretrain_text has {len(lines)} lines, not more than transfer.held_out = "
                             f"{tcfg.held_out}; expected more text or a smaller held_out")
        check_training_precision(cfg)  # before anything loads: float16 trains on CUDA only
    out = Path(out_dir)
    marker, fingerprint = out / "transfer.json", stage_fingerprint(cfg, "transfer")
    if marker.is_file() and (out / "model" / "config.json").is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("fingerprint") == fingerprint:  # as run_train does: the same settings are not run twice
            log(f"{out} already holds this transfer ({tcfg.method}); delete it to make it again")
            return done
    model, llm_tokenizer = load_model_and_tokenizer(cfg, backend="hf")
    sample = lines[-tcfg.held_out:] if lines else []
    report = {"before_tokens_per_word": tokens_per_word(llm_tokenizer, sample) if sample else None}
    new_tokenizer = llm_tokenizer
    if replace:
        new_tokenizer = AutoTokenizer.from_pretrained(tcfg.donor)
        donor = AutoModel.from_pretrained(tcfg.donor) if tcfg.method == "salt" else None
        donor_rows = donor_input_embeddings(donor, new_tokenizer) if donor is not None else None
        aux = None
        if needs_aux:
            aux = aux_embeddings(new_tokenizer, auxiliary_vectors(cfg))
        log(f"transferring {cfg.model.name_or_path} to the vocabulary of {tcfg.donor} by {tcfg.method}")
        report.update(transfer_model(model, llm_tokenizer, donor_rows, new_tokenizer, aux, tcfg.method, tcfg.ridge,
                                     cfg.seed))
        warning = salt_warning(report["salt_diagnostics"] or {})
        if warning:
            log(f"warning: {warning}")
            report["warning"] = warning
    else:
        report["method"] = "none"
    report["after_tokens_per_word"] = tokens_per_word(new_tokenizer, sample) if sample else None
    if tcfg.pretrain_steps:
        if new_tokenizer.pad_token is None:
            new_tokenizer.pad_token = new_tokenizer.eos_token
        report["curve"] = continued_pretraining(model, new_tokenizer, lines[:-tcfg.held_out], sample,
                                                tcfg.pretrain_steps, tcfg.pretrain_learning_rate,
                                                tcfg.pretrain_batch_size, tcfg.trainable, cfg.seed,
                                                cfg.model.max_length)
        log(f"held-out loss {report['curve'][0]['loss']:.3f} at step 0, {report['curve'][-1]['loss']:.3f} at step "
            f"{report['curve'][-1]['step']}")
    model.save_pretrained(out / "model")
    plain_tokenizer(new_tokenizer).save_pretrained(out / "model")
    report["config"] = json.loads(json.dumps(cfg.to_dict()["transfer"]))
    report["fingerprint"] = fingerprint  # what the grid and the runs built on it check
    atomic_write_json(marker, report)  # written last: the stage is done when it exists
    return report


def add_arguments(parser) -> None:
    """`clo transfer RUN.yaml --out DIR [--set key=value ...]`: the LLM of RUN.yaml (model.*) with the vocabulary
    of transfer.donor, written to DIR/model; DIR/transfer.json says what was done."""
    parser.add_argument("configs", nargs="+", help="YAML layers, later overriding earlier")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def command(args) -> int:
    run_transfer(load_config(*args.configs, overrides=args.overrides), args.out)
    return 0
