"""The transfer stage's assembly (clo_lib.stages.transfer): an LLM given a target-language PLM's vocabulary."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from clo_lib.modeling import tiny
from clo_lib.modeling.tokens import aux_embeddings, shared_tokens, train_fasttext
from clo_lib.stages.transfer import tokens_per_word, transfer_model
from clo_lib.toy import world


@pytest.fixture(scope="module")
def german(tmp_path_factory):
    """The toy world's German sentences, a donor decoder whose tokenizer learnt them, and fastText vectors."""
    root = tmp_path_factory.mktemp("transfer")
    texts = [r["prompt_tgt"] + " " + r["answer_tgt"] for r in world.evaluation_prompts("de")]
    (root / "de.txt").write_text("\n".join(texts))
    donor = tiny.make_tiny_causal_lm(root / "donor", "llama", corpus=texts, vocab_size=400, hidden_size=16)
    return texts, donor, train_fasttext(str(root / "de.txt"), dim=16, epochs=3)


@pytest.mark.parametrize("tied", [False, True])
def test_the_llm_gets_the_donors_vocabulary_with_shared_rows_copied(tiny_llama, german, tied):
    texts, donor_dir, vectors = german
    if tied:  # the saved tiny model is untied; a tied one is built from its config
        torch.manual_seed(0)
        llm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama, tie_word_embeddings=True))
    else:
        llm = AutoModelForCausalLM.from_pretrained(tiny_llama)
    llm_tokenizer, new_tokenizer = AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(donor_dir)
    before_inputs = llm.get_input_embeddings().weight.detach().clone()
    before_head = llm.get_output_embeddings().weight.detach().clone()
    donor = AutoModelForCausalLM.from_pretrained(donor_dir).get_input_embeddings().weight.detach()
    stats = transfer_model(llm, llm_tokenizer, donor, new_tokenizer, aux_embeddings(new_tokenizer, vectors))
    size = len(new_tokenizer)
    assert llm.get_input_embeddings().weight.shape[0] == size == llm.config.vocab_size == stats["vocab_after"]
    shared = shared_tokens(new_tokenizer, llm_tokenizer)
    assert len(shared) > 20 and stats["tied_head"] == tied
    for new_id, llm_id in shared.items():
        assert torch.equal(llm.get_input_embeddings().weight[new_id], before_inputs[llm_id])
        if not tied:  # an untied head keeps its own rows for shared tokens
            assert torch.equal(llm.get_output_embeddings().weight[new_id], before_head[llm_id])
    if tied:
        assert llm.get_output_embeddings().weight.data_ptr() == llm.get_input_embeddings().weight.data_ptr()
    eos = new_tokenizer.eos_token_id
    assert torch.equal(llm.get_input_embeddings().weight[eos], before_inputs[llm_tokenizer.eos_token_id])  # by role
    assert llm.config.eos_token_id == eos and torch.isfinite(llm.get_input_embeddings().weight).all()
    ids = new_tokenizer(texts[:2], return_tensors="pt", padding=True)
    assert llm(**ids).logits.shape[-1] == size


def test_the_llms_chat_format_survives_the_new_vocabulary(tiny_llama, german):
    """A chat LLM's markers (here `<|im_end|>`, an added special token its template uses) become special tokens of
    the new vocabulary with the LLM's own rows, and the LLM's template comes along, so prompts format as before."""
    texts, donor_dir, vectors = german
    llm = AutoModelForCausalLM.from_pretrained(tiny_llama)
    llm_tokenizer, new_tokenizer = AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(donor_dir)
    donor = AutoModelForCausalLM.from_pretrained(donor_dir).get_input_embeddings().weight.detach()
    aux = aux_embeddings(new_tokenizer, vectors)  # made before the marker joins: one row short, as in the stage
    llm_tokenizer.add_tokens(["<|im_end|>"], special_tokens=True)
    llm_tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    llm.resize_token_embeddings(len(llm_tokenizer), mean_resizing=False)
    marker = llm_tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        llm.get_input_embeddings().weight[marker] = 7.0
    assert "<|im_end|>" not in new_tokenizer.get_vocab()
    stats = transfer_model(llm, llm_tokenizer, donor, new_tokenizer, aux, method="salt")
    assert stats["special_carried"] == ["<|im_end|>"] and stats["vocab_after"] == len(new_tokenizer)
    new_marker = new_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert torch.equal(llm.get_input_embeddings().weight[new_marker], torch.full((32,), 7.0))
    formatted = new_tokenizer.apply_chat_template([{"role": "user", "content": "Hallo"}], tokenize=False)
    assert formatted == "Hallo<|im_end|>"
    assert new_tokenizer(formatted, add_special_tokens=False)["input_ids"][-1] == new_marker  # one token


def test_the_donors_tokenizer_cuts_the_target_language_into_fewer_tokens(tiny_llama, german):
    texts, donor_dir, _ = german
    before = tokens_per_word(AutoTokenizer.from_pretrained(tiny_llama), texts)
    after = tokens_per_word(AutoTokenizer.from_pretrained(donor_dir), texts)
    assert after < before


def test_continued_pretraining_lowers_the_held_out_loss_and_trains_only_what_it_is_told(tiny_llama, german):
    from clo_lib.stages.transfer import continued_pretraining, held_out_loss

    texts, donor_dir, vectors = german
    llm = AutoModelForCausalLM.from_pretrained(tiny_llama)
    llm_tokenizer, new_tokenizer = AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(donor_dir)
    donor = AutoModelForCausalLM.from_pretrained(donor_dir).get_input_embeddings().weight.detach()
    transfer_model(llm, llm_tokenizer, donor, new_tokenizer, aux_embeddings(new_tokenizer, vectors))
    attention = llm.model.layers[0].self_attn.q_proj.weight.detach().clone()
    curve = continued_pretraining(llm, new_tokenizer, texts[:200], texts[200:], steps=30,
                                  learning_rate=3e-3, eval_every=10)
    assert [point["step"] for point in curve] == [0, 10, 20, 30]
    assert curve[-1]["loss"] < curve[0]["loss"]
    # the held-out loss is the model's own causal-LM loss, token-weighted: one text gives transformers' mean
    encoded = new_tokenizer([texts[-1] + new_tokenizer.eos_token], return_tensors="pt", add_special_tokens=False)
    own = llm(**encoded, labels=encoded["input_ids"]).loss
    measured = held_out_loss(llm, new_tokenizer, [texts[-1]])
    assert measured["loss"] == pytest.approx(float(own.detach()), rel=1e-5)
    # per word: the same nats over the words (transformers' mean times the predicted tokens, one fewer than the ids)
    predicted, words = encoded["input_ids"].shape[1] - 1, len(texts[-1].split())
    assert measured["loss_per_word"] == pytest.approx(float(own.detach()) * predicted / words, rel=1e-5)
    assert torch.equal(llm.model.layers[0].self_attn.q_proj.weight, attention)  # embeddings only


def test_continued_pretraining_of_bfloat16_weights_keeps_float32_master_rows(tiny_llama, german):
    """The bf16 defect's shape: 16-bit rows updated in place lose small steps. Trained rows become float32 (the
    frozen layers stay bf16) and the held-out loss, measured under the same autocast, still falls."""
    from clo_lib.stages.transfer import continued_pretraining

    texts, donor_dir, vectors = german
    llm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16)
    llm_tokenizer, new_tokenizer = AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(donor_dir)
    transfer_model(llm, llm_tokenizer, None, new_tokenizer, None, method="mean")
    curve = continued_pretraining(llm, new_tokenizer, texts[:200], texts[200:], steps=20, learning_rate=3e-3,
                                  eval_every=20)
    assert llm.get_input_embeddings().weight.dtype == torch.float32
    assert llm.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert curve[-1]["loss"] < curve[0]["loss"]


def test_the_stage_writes_a_base_model_that_clo_trains_from(tiny_llama, german, tmp_path):
    import json
    import subprocess
    import sys

    import yaml

    from clo_lib.cli import main
    from clo_lib.config.load import load_config
    from clo_lib.stages.train import run_train

    texts, donor_dir, _ = german
    (tmp_path / "de.txt").write_text("\n".join(texts))
    run = tmp_path / "run.yaml"
    text = str(tmp_path / "de.txt")
    transfer = {"donor": str(donor_dir), "aux_text": text, "aux_dim": 16, "aux_epochs": 2, "pretrain_text": text,
                "pretrain_steps": 10, "held_out": 40, "pretrain_learning_rate": 3e-3}
    model = {"name_or_path": str(tiny_llama), "dtype": "float32", "max_length": 64}
    run.write_text(yaml.safe_dump({"language": "de", "model": model, "transfer": transfer}))
    assert main(["transfer", str(run), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert report["after_tokens_per_word"] < report["before_tokens_per_word"] and report["method"] == "salt"
    assert report["curve"][-1]["loss"] < report["curve"][0]["loss"] and report["curve"][-1]["step"] == 10
    made = (tmp_path / "out" / "transfer.json").stat().st_mtime_ns
    # the same settings again: reused, not remade
    assert main(["transfer", str(run), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "transfer.json").stat().st_mtime_ns == made
    base = str(tmp_path / "out" / "model")
    records = [{"id": i, "lang": "de", "prompt_en": f"What is {i} plus {i}?", "response_en": f"It is {2 * i}.",
                "prompt_tgt": f"Was ist {i} plus {i}?", "response_tgt": f"Es ist {2 * i}."} for i in range(4)]
    cfg = load_config({"language": "de", "model": {"name_or_path": base, "backend": "hf", "dtype": "float32",
                                                   "max_length": 64},
                       "train": {"method": "clo", "epochs": 1, "batch_size": 4, "learning_rate": 1e-3}})
    log = run_train(cfg, tmp_path / "clo", records)
    assert log["stages"][-1]["steps"] == 2 and (tmp_path / "clo" / "model" / "config.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "clo_lib", "transfer", str(run), "--out", str(tmp_path / "x"),
                          "--set", "transfer.donor=null"], capture_output=True, text=True)
    assert bad.returncode == 2 and "transfer.donor is not set" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("family", tiny.DONOR_FAMILIES)
def test_each_donor_family_keeps_the_llms_sequence_conventions_and_trains_clo(tiny_llama, german, tmp_path, family):
    """A WordPiece (BERT) donor has no EOS, a SentencePiece (T5) donor no BOS and appends </s>: after transfer, the
    config kept the LLM's old ids ([CLS] in the new vocabulary), CLO appended a None EOS and crashed, and prompts
    were wrapped in [CLS] ... [SEP]. Now the roles the donor lacks come from the LLM, the ids in the config and the
    generation config are the new tokenizer's, the tokenizer adds what the LLM's adds (its BOS) and nothing else,
    and CLO trains on the result with EOS at the end of every answer."""
    import json

    import yaml
    from transformers import AutoTokenizer

    from clo_lib.cli import main
    from clo_lib.config.load import load_config
    from clo_lib.modeling.batches import encode
    from clo_lib.stages.train import run_train

    texts, _, _ = german
    donor = tiny.make_tiny_donor(tmp_path / "donor", family, corpus=texts)
    run = tmp_path / "run.yaml"
    model = {"name_or_path": str(tiny_llama), "dtype": "float32", "max_length": 64, "backend": "hf"}
    run.write_text(yaml.safe_dump({"language": "de", "model": model,
                                   "transfer": {"donor": str(donor), "method": "mean"}}))
    assert main(["transfer", str(run), "--out", str(tmp_path / "out")]) == 0
    base = tmp_path / "out" / "model"
    llm, new = AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(base)
    assert new.eos_token is not None and new.bos_token is not None
    config = json.loads((base / "config.json").read_text())
    generation = json.loads((base / "generation_config.json").read_text())
    assert config["eos_token_id"] == generation["eos_token_id"] == new.eos_token_id
    assert config["bos_token_id"] == new.bos_token_id
    ids = new("Der Himmel ist blau.")["input_ids"]
    plain = new("Der Himmel ist blau.", add_special_tokens=False)["input_ids"]
    llm_adds = len(llm("x")["input_ids"]) - len(llm("x", add_special_tokens=False)["input_ids"])
    assert ids == [new.bos_token_id] * llm_adds + plain  # no [CLS]/[SEP], no </s> appended
    cfg = load_config({"language": "de", "model": {**model, "name_or_path": str(base)},
                       "train": {"method": "clo", "epochs": 1, "batch_size": 4, "learning_rate": 1e-3}})
    encoded = encode(new, cfg, "Was ist zwei plus zwei?", "Es ist vier.")
    assert encoded["labels"][-1] == new.eos_token_id
    records = [{"id": i, "lang": "de", "prompt_en": f"What is {i} plus {i}?", "response_en": f"It is {2 * i}.",
                "prompt_tgt": f"Was ist {i} plus {i}?", "response_tgt": f"Es ist {2 * i}."} for i in range(4)]
    log = run_train(cfg, tmp_path / "clo", records)
    assert log["stages"][-1]["steps"] == 2
