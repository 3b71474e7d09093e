"""Trainers on a tiny local model: selected weights only, pairs kept in one batch, reference computed once,
losses going down for every method, backends chosen clearly."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from clo_lib.config.load import load_config
from clo_lib.method.loss import sequence_logps
from clo_lib.method.pairs import METHOD_STAGES, build_clo_pairs
from clo_lib.modeling.batches import collate_preferences, encode_preference_groups
from clo_lib.modeling.logps import bucketed_response_logps, length_buckets
from clo_lib.modeling.models import BackendError, load_model_and_tokenizer, resolve_backend, select_trainable
from clo_lib.stages.train import build_trainer, run_train

REPO = Path(__file__).resolve().parent.parent


def parallel_records(n=16):
    return [{"id": i, "lang": "sw", "prompt_en": f"What is {i} plus {i}?", "response_en": f"It is {2 * i}.",
             "prompt_tgt": f"Ni nini {i} jumlisha {i}?", "response_tgt": f"Ni {2 * i}."} for i in range(n)]


def config(model_path, **train):
    return load_config({"language": "sw", "model": {"name_or_path": str(model_path), "backend": "hf",
                                                    "max_length": 64, "dtype": "float32"},
                        "train": {"learning_rate": 3e-3, "epochs": 4, "batch_size": 8, "logging_steps": 1,
                                  "warmup_ratio": 0.0, **train}})


def test_attention_only_trains_only_qkvo(tiny_llama, tmp_path):
    cfg = config(tiny_llama, method="clo", epochs=1)
    before = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    log = run_train(cfg, tmp_path / "run", parallel_records(8))
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model").state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "training changed nothing"
    assert all(name.split(".")[-2] in {"q_proj", "k_proj", "v_proj", "o_proj"} for name in changed), changed
    assert len(changed) == 4 * 2  # q/k/v/o in both layers
    stage = log["stages"][0]
    expected = sum(before[n].numel() for n in before if n.split(".")[-2] in {"q_proj", "k_proj", "v_proj", "o_proj"})
    assert stage["trainable_params"] == expected < stage["total_params"]


def test_full_and_lora_trainable_counts(tiny_llama):
    for trainable, check in (("full", lambda c: c["trainable_share"] == 1.0),
                             ("lora", lambda c: 0 < c["trainable_share"] < 0.2)):
        cfg = config(tiny_llama, trainable=trainable, lora_r=2)
        model, _ = load_model_and_tokenizer(cfg)
        model, counts = select_trainable(model, cfg.train)
        assert check(counts), (trainable, counts)
        if trainable == "lora":
            assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_batches_hold_both_pairs_of_each_example(tiny_llama):
    cfg = config(tiny_llama)
    model, tokenizer = load_model_and_tokenizer(cfg)
    groups = encode_preference_groups(build_clo_pairs(parallel_records(6)), tokenizer, cfg)
    assert len(groups) == 6 and all([r["is_target"] for r in g] == [False, True] for g in groups)
    loader = torch.utils.data.DataLoader(groups, batch_size=cfg.train.batch_size // 2, shuffle=True,
                                         collate_fn=lambda b: collate_preferences(b, tokenizer.pad_token_id))
    for batch in loader:
        # Rows come in (English, target) pairs from one source example: [F, T, F, T, ...].
        flags = batch["is_target"].tolist()
        assert flags == [False, True] * (len(flags) // 2)
        assert batch["input_ids"].shape[0] == 2 * len(flags)  # chosen rows, then rejected rows


def test_reference_logps_are_the_starting_model(tiny_llama, tmp_path, monkeypatch):
    import clo_lib.stages.train as train_module

    calls = []
    original = train_module.add_reference_logps

    def spy(model, groups, pad_id, **kwargs):
        calls.append(len(groups))
        original(model, groups, pad_id, **kwargs)
        spy.groups = groups

    monkeypatch.setattr(train_module, "add_reference_logps", spy)
    cfg = config(tiny_llama, method="clo", epochs=2)
    run_train(cfg, tmp_path / "run", parallel_records(8))
    assert calls == [8]  # computed once for all examples, not per step
    start = AutoModelForCausalLM.from_pretrained(tiny_llama)
    batch = collate_preferences(spy.groups, pad_id=3)
    with torch.no_grad():
        logps, _ = sequence_logps(start(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                  batch["labels"])
    chosen, rejected = logps.chunk(2)
    assert torch.allclose(batch["ref_chosen_logps"], chosen, atol=1e-4)
    assert torch.allclose(batch["ref_rejected_logps"], rejected, atol=1e-4)


@pytest.mark.parametrize("method", ["clo", "sft", "sft_eng", "sft_tgt", "sft_dpo"])
def test_every_method_lowers_its_loss(tiny_llama, tmp_path, method):
    log = run_train(config(tiny_llama, method=method), tmp_path / method, parallel_records(16))
    assert len(log["stages"]) == (2 if method == "sft_dpo" else 1)
    for stage in log["stages"]:
        losses = [h["loss"] for h in stage["log_history"] if "loss" in h]
        assert len(losses) >= 4
        assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, (method, stage["stage"], losses)
    assert (tmp_path / method / "model" / "config.json").is_file()
    assert json.loads((tmp_path / method / "train_log.json").read_text())["method"] == method
    assert load_config(tmp_path / method / "config.yaml").train.method == method


def test_clo_logs_per_direction_metrics(tiny_llama, tmp_path):
    log = run_train(config(tiny_llama, method="clo", epochs=1), tmp_path / "run", parallel_records(8))
    first = next(h for h in log["stages"][0]["log_history"] if "dpo" in h)
    for key in ("nll", "dpo", "en/rewards_margin", "tgt/rewards_accuracy", "en/logps_chosen", "tgt/dpo"):
        assert key in first
    # The first step's metrics come from the starting model, which is the reference: every reward is 0, so the
    # DPO loss is log 2 in both directions and no row is counted as won.
    for key in ("dpo", "en/dpo", "tgt/dpo"):
        assert first[key] == pytest.approx(math.log(2), abs=1e-5)
    for key in ("en/rewards_margin", "tgt/rewards_chosen", "en/rewards_accuracy", "tgt/rewards_accuracy"):
        assert first[key] == pytest.approx(0.0, abs=1e-5)
    assert first["clo_loss"] == pytest.approx(0.5 * first["nll"] + 0.5 * math.log(2), abs=1e-5)


def test_backend_choice():
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="needs a CUDA GPU"):
            resolve_backend("unsloth")
    assert resolve_backend("hf") == "hf"
    assert resolve_backend("auto") in ("hf", "unsloth")


def test_cli_refuses_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("language: sw\ntrain:\n  method: dpo\n")
    data = tmp_path / "p.jsonl"
    data.write_text("")
    result = subprocess.run([sys.executable, "-m", "clo_lib", "train", str(bad), "--parallel", str(data), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = (f"error: {bad}: train.method = 'dpo'; "
                "expected one of sft, sft_eng, sft_tgt, sft_dpo, clo (did you mean sft_dpo?).")
    assert result.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch,trainable", [("llama", "attention"), ("qwen2", "full"), ("mistral", "lora")])
def test_response_only_head_equals_full_logits(tiny_model_dir, arch, trainable):
    from clo_lib.modeling.logps import response_logps

    cfg = config(tiny_model_dir(arch), trainable=trainable, lora_r=2, lora_dropout=0.0)  # no dropout: same passes
    model, tokenizer = load_model_and_tokenizer(cfg)
    model, _ = select_trainable(model, cfg.train)
    groups = encode_preference_groups(build_clo_pairs(parallel_records(3)), tokenizer, cfg)
    batch = collate_preferences(groups, tokenizer.pad_token_id)
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    fast, fast_counts = response_logps(model, *args, chunk_tokens=7)  # several chunks, one ragged
    fast.sum().backward()
    fast_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    plain, plain_counts = sequence_logps(model(input_ids=args[0], attention_mask=args[1]).logits, args[2])
    plain.sum().backward()
    plain_grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.equal(fast_counts, plain_counts)
    assert torch.allclose(fast, plain, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fast_grads, plain_grads))


def test_lora_saves_adapter_and_optional_merged_model(tiny_llama, tmp_path):
    from peft import AutoPeftModelForCausalLM

    cfg = config(tiny_llama, method="sft", trainable="lora", lora_r=2, merge_lora=True, epochs=1)
    run_train(cfg, tmp_path / "run", parallel_records(8))
    assert (tmp_path / "run" / "model" / "adapter_config.json").is_file()
    adapted = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "run" / "model").eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged").eval()
    ids = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        assert torch.allclose(adapted(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_sft_dpo_with_lora_trains_one_adapter_through_both_stages(tiny_llama, tmp_path):
    log = run_train(config(tiny_llama, method="sft_dpo", trainable="lora", lora_r=2, epochs=1), tmp_path / "run",
                    parallel_records(8))
    sft, dpo = log["stages"]
    assert sft["trainable_params"] == dpo["trainable_params"] > 0  # not wrapped twice


def _files(folder):
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(Path(folder).rglob("*")) if f.is_file()}


def test_a_finished_run_keeps_no_checkpoints_and_is_not_trained_again(tiny_llama, tmp_path):
    cfg = config(tiny_llama, method="sft_dpo", epochs=1, save_steps=1)  # two stages, a checkpoint every step
    first = run_train(cfg, tmp_path / "run", parallel_records(8))
    assert not list((tmp_path / "run").rglob("checkpoint*")) and not (tmp_path / "run" / "sft").exists()
    assert first["saved"]["bytes"] == sum(f.stat().st_size for f in (tmp_path / "run" / "model").rglob("*")
                                          if f.is_file())
    assert first["examples_used"] == 8 and first["fingerprint"]["data"]
    before = _files(tmp_path / "run")
    again = run_train(cfg, tmp_path / "run", parallel_records(8))
    assert again == first and _files(tmp_path / "run") == before


def test_a_folder_holding_another_run_is_refused_and_left_as_it_was(tiny_llama, tmp_path):
    """Training sft into a finished clo run's folder once exited 0 having trained nothing, and rewrote its config
    and log to say sft. Now: one sentence naming what differs, and not a byte changed."""
    from clo_lib.stages.train import RunFolderError

    run_train(config(tiny_llama, method="clo", epochs=1), tmp_path / "run", parallel_records(8))
    before = _files(tmp_path / "run")
    with pytest.raises(RunFolderError, match=r"holds a run trained under another config \(train.method: 'clo' → 'sft'"):
        run_train(config(tiny_llama, method="sft", epochs=1), tmp_path / "run", parallel_records(8))
    with pytest.raises(RunFolderError, match="training records or starting run differ"):
        run_train(config(tiny_llama, method="clo", epochs=1), tmp_path / "run", parallel_records(9))
    assert _files(tmp_path / "run") == before


def test_a_failed_run_keeps_its_checkpoints_and_resumes_only_under_its_own_config(tiny_llama, tmp_path, monkeypatch):
    import clo_lib.stages.train as train_module
    from clo_lib.stages.train import RunFolderError

    cfg = config(tiny_llama, method="clo", epochs=2, save_steps=1)
    saver = train_module.save_trained
    monkeypatch.setattr(train_module, "save_trained", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        run_train(cfg, tmp_path / "run", parallel_records(8))
    assert list((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))  # kept, so a rerun resumes
    monkeypatch.setattr(train_module, "save_trained", saver)
    before = _files(tmp_path / "run")
    with pytest.raises(RunFolderError, match=r"checkpoints made under another config or data \(train.learning_rate"):
        run_train(config(tiny_llama, method="clo", epochs=2, save_steps=1, learning_rate=1e-3), tmp_path / "run",
                  parallel_records(8))
    assert _files(tmp_path / "run") == before  # nothing written before the refusal
    log = run_train(cfg, tmp_path / "run", parallel_records(8))
    assert log["stages"][0]["resumed"] and not (tmp_path / "run" / "checkpoints").exists()


def test_saving_only_the_trained_tensors(tiny_llama, tmp_path):
    """save: trainable writes q/k/v/o and the base model's id; every loader gives the same model as a full save
    of the same training (CPU training is deterministic), also as sft_dpo's starting point."""
    from clo_lib.stages.generate import load_for_eval

    full = run_train(config(tiny_llama, method="sft", epochs=1), tmp_path / "full", parallel_records(8))
    slim = run_train(config(tiny_llama, method="sft", epochs=1, save="trainable"), tmp_path / "slim",
                     parallel_records(8))
    files = {f.name for f in (tmp_path / "slim" / "model").iterdir()}
    assert "trained.safetensors" in files and "clo_trained.json" in files and "model.safetensors" not in files
    manifest = json.loads((tmp_path / "slim" / "model" / "clo_trained.json").read_text())
    assert manifest["base_model"] == str(tiny_llama) and len(manifest["trained_tensors"]) == 8
    assert slim["saved"]["format"] == "trainable" and slim["saved"]["bytes"] < full["saved"]["bytes"]
    ids = torch.tensor([[5, 17, 42, 7, 9]])
    cfg = config(tiny_llama)
    logits = {}
    for name in ("full", "slim"):
        model, _ = load_for_eval(cfg, tmp_path / name / "model")
        with torch.no_grad():
            logits[name] = model(input_ids=ids).logits
    assert torch.equal(logits["full"], logits["slim"])
    # sft_dpo from the slim SFT run, saved slim too: its manifest still points at the original base model
    dpo = config(tiny_llama, method="sft_dpo", epochs=1, save="trainable", init_from=str(tmp_path / "slim" / "model"))
    log = run_train(dpo, tmp_path / "dpo", parallel_records(8))
    assert [s["stage"] for s in log["stages"]] == ["preference"]
    assert json.loads((tmp_path / "dpo" / "model" / "clo_trained.json").read_text())["base_model"] == str(tiny_llama)
    model, _ = load_for_eval(cfg, tmp_path / "dpo" / "model")
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, logits["slim"])


def test_fused_attention_names_are_refused_not_half_trained(tiny_llama):
    from clo_lib.config.schema import ConfigError

    cfg = config(tiny_llama, attention_modules=["qkv_proj", "o_proj"])  # as for Phi-3; Llama has q/k/v separate
    model, _ = load_model_and_tokenizer(cfg)
    with pytest.raises(ConfigError, match=r"qkv_proj match no weight of this model, whose attention layers hold "
                                          r"k_proj, o_proj, q_proj, v_proj"):
        select_trainable(model, cfg.train)


def test_bad_records_are_refused_before_anything_is_written(tiny_llama, tmp_path):
    records = parallel_records(4)
    del records[1]["response_tgt"]
    with pytest.raises(ValueError, match="parallel record 1 .* 'response_tgt'"):
        run_train(config(tiny_llama), tmp_path / "run", records)
    assert not (tmp_path / "run").exists()


def _all_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _all_partitions(rest):
        yield [[first], *partition]
        for i in range(len(partition)):
            yield [*partition[:i], [first, *partition[i]], *partition[i + 1:]]


@pytest.mark.parametrize("seed", range(6))
def test_length_buckets_are_the_cheapest_split(seed):
    import random

    rng = random.Random(seed)
    lengths = [rng.randint(3, 40) for _ in range(rng.randint(1, 7))]
    for k in (1, 2, 3):
        groups = length_buckets(lengths, k)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every row exactly once
        assert 1 <= len(groups) <= k and all(groups)
        padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
        # Against every way of splitting the rows into at most k groups, not only sorted cuts.
        brute = min(sum(len(g) * max(lengths[i] for i in g) for g in part)
                    for part in _all_partitions(list(range(len(lengths)))) if len(part) <= k)
        assert padded == brute
    assert length_buckets([5, 5, 5], 3) == [[0, 1, 2]]  # no split that saves nothing
    for k in (1, 2, 3):  # a fixed count (several processes): exactly min(k, n) groups, the cheapest such split
        groups = length_buckets(lengths, k, exactly=True)
        assert len(groups) == min(k, len(lengths)) and all(groups)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
        assert padded == min(sum(len(g) * max(lengths[i] for i in g) for g in part)
                             for part in _all_partitions(list(range(len(lengths)))) if len(part) == len(groups))


def test_length_buckets_agree_across_ranks(tiny_llama, tmp_path):
    """Under FSDP or ZeRO-3 every forward pass gathers the sharded weights with a collective: ranks making different
    numbers of passes would wait for each other forever. 2 CPU processes whose batches differ in lengths and rows
    make the same number of passes, with the same result as one padded pass."""
    out = tmp_path / "ranks.json"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         str(REPO / "tests" / "dist_buckets_worker.py"), str(tiny_llama), str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert ranks[0]["alone"] == 1 and ranks[1]["alone"] == 4  # left to themselves, the ranks would disagree
    assert ranks[0]["passes"] == ranks[1]["passes"] == 4
    assert all(rank["equal"] for rank in ranks)
    # the LM head too: ranks with more response tokens need more chunks (ZeRO-3 gathers the head at each call)
    assert ranks[0]["alone_head_calls"] != ranks[1]["alone_head_calls"]
    assert ranks[0]["head_calls"] == ranks[1]["head_calls"]


@pytest.mark.parametrize("buckets", [1, 3, 16])
def test_bucketed_logps_equal_one_padded_pass(tiny_llama, buckets):
    cfg = config(tiny_llama)
    model, tokenizer = load_model_and_tokenizer(cfg)
    model, _ = select_trainable(model, cfg.train)
    records = [{"id": i, "lang": "sw", "prompt_en": f"Question {i}?", "response_en": "yes " * (1 + 3 * i),
                "prompt_tgt": f"Swali {i}?", "response_tgt": "ndiyo " * (2 + i)} for i in range(4)]
    batch = collate_preferences(encode_preference_groups(build_clo_pairs(records), tokenizer, cfg),
                                tokenizer.pad_token_id)
    lengths = batch["attention_mask"].sum(-1)
    assert lengths.min() < lengths.max() / 2  # mixed lengths, so buckets really differ from one padded pass
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    ours, ours_counts = bucketed_response_logps(model, *args, buckets=buckets)
    ours.sum().backward()
    ours_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    plain, plain_counts = sequence_logps(model(input_ids=args[0], attention_mask=args[1]).logits, args[2])
    plain.sum().backward()
    assert torch.equal(ours_counts, plain_counts)
    assert torch.allclose(ours, plain, atol=1e-4)
    assert all(torch.allclose(a, p.grad, atol=1e-4) for a, p in
               zip(ours_grads, [p for p in model.parameters() if p.requires_grad]))


def test_unsloth_path_calls_fastlanguagemodel_as_documented(tiny_llama, monkeypatch):
    """Wiring only (no GPU here): the unsloth backend loads through FastLanguageModel.from_pretrained and adds LoRA
    through FastLanguageModel.get_peft_model, with the run's settings. A stand-in module records the calls."""
    import types

    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    calls = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(model_name, **kwargs):
            calls["from_pretrained"] = {"model_name": model_name, **kwargs}
            return AutoModelForCausalLM.from_pretrained(model_name), AutoTokenizer.from_pretrained(model_name)

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls["get_peft_model"] = kwargs
            lora = {k: kwargs[k] for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias")}
            return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    cfg = config(tiny_llama, trainable="lora", lora_r=4, lora_alpha=8)
    model, tokenizer = load_model_and_tokenizer(cfg, backend="unsloth")
    assert calls["from_pretrained"]["model_name"] == str(tiny_llama)
    assert calls["from_pretrained"]["max_seq_length"] == 64 and calls["from_pretrained"]["full_finetuning"] is False
    assert calls["from_pretrained"]["load_in_4bit"] is False
    model, counts = select_trainable(model, cfg.train, backend="unsloth")
    assert calls["get_peft_model"]["r"] == 4 and calls["get_peft_model"]["lora_alpha"] == 8
    assert sorted(calls["get_peft_model"]["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert calls["get_peft_model"]["use_gradient_checkpointing"] is False
    assert 0 < counts["trainable_share"] < 0.2
    # attention-only full weights ask Unsloth for full fine-tuning, then freeze all but q/k/v/o as on hf
    calls.clear()
    model, _ = load_model_and_tokenizer(config(tiny_llama), backend="unsloth")
    assert calls["from_pretrained"]["full_finetuning"] is True
    _, counts = select_trainable(model, config(tiny_llama).train, backend="unsloth")
    assert "get_peft_model" not in calls and 0 < counts["trainable_share"] < 1


def test_gradient_accumulation_averages_the_clo_loss(tiny_llama, tmp_path):
    """With grad_accum 2, one micro-batch's step returns and back-propagates clo_loss / 2, computed independently
    here from a plain forward (full logits) and clo_loss on the same rows."""
    from clo_lib.method.loss import clo_loss

    cfg = config(tiny_llama, method="clo", grad_accum=2, trainable="attention")
    trainer, _ = build_trainer(cfg, parallel_records(8), tmp_path / "run", METHOD_STAGES["clo"][0])
    assert trainer.args.gradient_accumulation_steps == 2
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 2  # set by the training loop for each optimizer step
    step_loss = trainer.training_step(model, dict(batch), num_items_in_batch=torch.tensor(999))
    step_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    logps, counts = sequence_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                   batch["labels"])
    (chosen, rejected), (chosen_counts, _) = logps.chunk(2), counts.chunk(2)
    expected, _ = clo_loss(chosen, rejected, batch["ref_chosen_logps"], batch["ref_rejected_logps"], chosen_counts,
                           batch["is_target"])
    (expected / 2).backward()
    assert step_loss.item() == pytest.approx(expected.item() / 2, abs=1e-5)
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in
               zip(step_grads, [p for p in model.parameters() if p.requires_grad]))


@pytest.mark.parametrize("method", ["clo", "sft"])
def test_two_processes_under_torchrun(tiny_llama, tmp_path, method):
    """2 CPU processes under torchrun (DDP over gloo; `accelerate launch` starts multi-GPU, FSDP and DeepSpeed runs
    through the same launcher): each process takes its share of every step (DDP's gradient reducer errors on a
    later step if a forward bypassed it), and the main process writes the run."""
    import yaml

    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({
        "language": "sw", "model": {"name_or_path": str(tiny_llama), "backend": "hf", "max_length": 64,
                                    "dtype": "float32"}, "data": {"size": 16},
        "train": {"method": method, "batch_size": 4, "epochs": 1, "learning_rate": 3e-3, "logging_steps": 1,
                  "warmup_ratio": 0.0}}))
    data = tmp_path / "parallel.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in parallel_records(16)))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
         "-m", "clo_lib", "train", str(run), "--parallel", str(data), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((out / "train_log.json").read_text())
    rows_per_step = 4 * 2  # per process, times 2 processes
    examples = 16 * 2  # clo: 2 preference rows per record; sft: an English and a target row per record
    assert log["stages"][-1]["steps"] == examples // rows_per_step
    before = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_sft_loss_is_the_models_own_causal_lm_loss(tiny_llama, tmp_path, grad_accum):
    """The SFT trainer's step (response-only head, length buckets) returns and back-propagates what the model's own
    loss gives on the same batch with the same token count (transformers' causal-LM loss, full logits)."""

    cfg = config(tiny_llama, method="sft", grad_accum=grad_accum, length_buckets=3)
    trainer, _ = build_trainer(cfg, parallel_records(8), tmp_path / "run", METHOD_STAGES["sft"][0])
    batch = next(iter(trainer.get_train_dataloader()))
    tokens = (batch["labels"][:, 1:] != -100).sum() * grad_accum  # as if the other micro-batches had as many
    model = trainer.model
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = grad_accum
    step_loss = trainer.training_step(model, dict(batch), num_items_in_batch=tokens)
    step_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                num_items_in_batch=tokens).loss
    own.backward()
    assert step_loss.item() == pytest.approx(own.item(), abs=1e-5)
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in
               zip(step_grads, [p for p in model.parameters() if p.requires_grad]))


def test_an_unset_logging_interval_logs_every_step_of_a_small_run_and_a_hundred_points_of_a_long_one(tiny_llama):
    from clo_lib.stages.train import logging_steps

    small = load_config({"language": "sw", "train": {"epochs": 17, "batch_size": 16}})
    assert small.train.logging_steps is None
    assert logging_steps(small, items=64, per_device_batch=8) == 1  # 8 steps an epoch, 136 in all
    long = load_config({"language": "sw", "train": {"epochs": 3, "batch_size": 16}})
    assert logging_steps(long, items=6400, per_device_batch=8) == 24  # 2,400 steps: a point every 24
    fixed = load_config({"language": "sw", "train": {"logging_steps": 10}})
    assert logging_steps(fixed, items=64, per_device_batch=8) == 10


def test_train_loss_is_the_trainers_own_mean_over_every_step(tiny_llama, tmp_path):
    log = run_train(config(tiny_llama, method="sft", epochs=2, logging_steps=3), tmp_path / "run", parallel_records(16))
    stage = log["stages"][-1]
    finished = next(entry for entry in stage["log_history"] if "train_loss" in entry)
    assert stage["train_loss"] == pytest.approx(finished["train_loss"])  # not the mean of the logged points


def test_report_to_tensorboard_writes_its_events_beside_the_model(tiny_llama, tmp_path):
    run_train(config(tiny_llama, method="clo", epochs=1, report_to="tensorboard"), tmp_path / "run",
              parallel_records(8))
    assert list((tmp_path / "run" / "runs").glob("events.out.tfevents.*"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_logger_is_refused_before_the_model_loads(tiny_llama, tmp_path, monkeypatch):
    import importlib.util

    from clo_lib.config.schema import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="train.report_to = wandb needs the wandb package"):
        run_train(config(tiny_llama, report_to="wandb"), tmp_path / "run", parallel_records(4))
    assert not (tmp_path / "run").exists()


def test_with_gradient_accumulation_the_nll_is_a_token_mean_over_the_whole_step(tiny_llama, tmp_path):
    """Two micro-batches whose target answers differ in length (1 and 12 words): the step's gradient is that of
    clo_loss over all rows of the step at once (NLL a token mean over the step's target tokens, DPO a mean over its
    rows), as SFT's is a token mean over the step; it once was a mean of per-micro-batch means."""
    from clo_lib.method.loss import clo_loss

    records = [{"id": 0, "lang": "sw", "prompt_en": "Say one word.", "response_en": "Yes.",
                "prompt_tgt": "Sema neno moja.", "response_tgt": "Ndiyo."},
               {"id": 1, "lang": "sw", "prompt_en": "Say a lot.", "response_en": "It is a long answer " * 3,
                "prompt_tgt": "Sema mengi.", "response_tgt": "Ni jibu refu sana la maneno mengi " * 3}]
    cfg = config(tiny_llama, method="clo", grad_accum=2, batch_size=2, trainable="attention", length_buckets=1)
    trainer, _ = build_trainer(cfg, records, tmp_path / "run", METHOD_STAGES["clo"][0])
    loader = trainer.get_train_dataloader()
    batches, _ = trainer.get_batch_samples(iter(loader), 2, torch.device("cpu"))
    assert len(batches) == 2
    model = trainer.model
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 2
    for batch in batches:
        trainer.training_step(model, dict(batch), num_items_in_batch=None)
    step_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    parts = []
    for batch in batches:
        logps, counts = sequence_logps(model(input_ids=batch["input_ids"],
                                             attention_mask=batch["attention_mask"]).logits, batch["labels"])
        parts.append((*logps.chunk(2), counts.chunk(2)[0], batch["ref_chosen_logps"], batch["ref_rejected_logps"],
                      batch["is_target"]))
    chosen, rejected, counts, ref_chosen, ref_rejected, is_target = (torch.cat(x) for x in zip(*parts))
    expected, _ = clo_loss(chosen, rejected, ref_chosen, ref_rejected, counts, is_target)
    expected.backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in
               zip(step_grads, [p for p in model.parameters() if p.requires_grad]))


def test_dropout_is_off_in_preference_stages_so_the_first_step_starts_at_the_reference(tiny_llama, tmp_path):
    """LoRA dropout was on in the policy and off in the reference pass, so the policy's log-probs differed from
    the reference's before any update. As TRL's DPOTrainer does, preference stages turn every dropout off."""
    cfg = config(tiny_llama, method="clo", trainable="lora", lora_r=4, lora_dropout=0.5, batch_size=4)
    trainer, _ = build_trainer(cfg, parallel_records(4), tmp_path / "run", METHOD_STAGES["clo"][0])
    model = trainer.model
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    logps, _ = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     clo_response_labels=batch["labels"])
    chosen, rejected = logps.chunk(2)
    assert torch.allclose(chosen, batch["ref_chosen_logps"], atol=1e-5)
    assert torch.allclose(rejected, batch["ref_rejected_logps"], atol=1e-5)


def test_fsdp_asked_of_accelerate_on_a_cpu_is_data_parallel_and_the_train_log_says_so(tiny_llama, tmp_path):
    """`accelerate launch --config_file params/accelerate/fsdp.yaml` on this CPU machine: accelerate runs the
    training as MULTI_CPU (plain data parallelism over gloo: every process holds the whole model) instead of FSDP,
    without a word; the kit's train log and stdout now carry that warning. (FSDP itself needs GPUs here: README.)"""
    import yaml

    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({
        "language": "sw", "model": {"name_or_path": str(tiny_llama), "backend": "hf", "max_length": 64,
                                    "dtype": "float32"}, "data": {"size": 8},
        "train": {"method": "clo", "batch_size": 4, "epochs": 1, "logging_steps": 1, "warmup_ratio": 0.0,
                  "gradient_checkpointing": False}}))
    data = tmp_path / "parallel.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in parallel_records(8)))
    config = yaml.safe_load((REPO / "params/accelerate/fsdp.yaml").read_text())
    config["mixed_precision"] = "no"  # the CPU's float32 tiny model
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(tmp_path / "fsdp.yaml"), "--main_process_port", "29533", "-m", "clo_lib", "train",
                           str(run), "--parallel", str(data), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = json.loads((tmp_path / "out" / "train_log.json").read_text())["stages"][-1]["warnings"]
    assert any("asked for FSDP, but accelerate ran this training as MULTI_CPU" in w for w in warnings)
    assert "asked for FSDP" in done.stdout


def test_lora_adapters_start_from_the_runs_seed(tiny_llama, tmp_path):
    """LoRA's A matrices are random at creation. They were drawn from whatever state torch's generator was in, so
    two runs of one config trained different adapters, and under FSDP each process drew its own A (FSDP2, unlike
    DDP, does not copy rank 0's weights), so the sharded model mixed them. They now come from the run's seed."""
    def adapters(seed, before):
        cfg = load_config({"language": "sw", "seed": seed, "model": {"name_or_path": str(tiny_llama), "backend": "hf"},
                           "train": {"method": "sft", "trainable": "lora", "lora_r": 4}})
        torch.manual_seed(before)  # whatever ran before in the process must not matter
        trainer, _ = build_trainer(cfg, parallel_records(4), tmp_path / f"run{seed}", METHOD_STAGES["sft"][0])
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_A" in n}

    first, again, other = adapters(0, before=1), adapters(0, before=2), adapters(1, before=1)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


def _train_log_losses(out: Path) -> list[float]:
    return [entry["loss"] for entry in json.loads((out / "train_log.json").read_text())["stages"][-1]["log_history"]
            if "loss" in entry]



# DeepSpeed's CPU build for the ZeRO-3 test: `make deepspeed-cpu` installs it into .deepspeed/ (outside the venv,
# so no other test sees it); `make test` does that first.
DEEPSPEED_DIR = REPO / ".deepspeed"


def _sharded_training_matches_one_process(tmp_path, tiny_llama, trainable, accelerate_config, launched, env):
    """CLO trained by 2 processes of 4 rows under an accelerate config, and by 1 process of 8: the same loss at
    every step, the same saved weights, and the saved models load and answer alike."""
    import yaml

    from clo_lib.stages.generate import load_for_eval

    data = tmp_path / "parallel.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in parallel_records(16)))
    runs = {}
    for name, per_process in (("one", 8), ("sharded", 4)):
        runs[name] = tmp_path / f"{name}.yaml"
        runs[name].write_text(yaml.safe_dump({
            "language": "sw", "model": {"name_or_path": str(tiny_llama), "backend": "hf", "max_length": 64,
                                        "dtype": "float32"}, "data": {"size": 16},
            "train": {"method": "clo", "trainable": trainable, "lora_r": 4, "batch_size": per_process, "epochs": 2,
                      "learning_rate": 3e-3, "logging_steps": 1, "warmup_ratio": 0.0,
                      "gradient_checkpointing": False}}))
    config = yaml.safe_load((REPO / accelerate_config).read_text())
    config["mixed_precision"] = "no"  # the CPU's float32 tiny model
    (tmp_path / "accelerate.yaml").write_text(yaml.safe_dump(config))
    sharded = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                              str(tmp_path / "accelerate.yaml"), "--main_process_port", "29535", *launched, "train",
                              str(runs["sharded"]), "--parallel", str(data), "--out", str(tmp_path / "sharded")],
                             capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, **env})
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    alone = subprocess.run([sys.executable, "-m", "clo_lib", "train", str(runs["one"]), "--parallel", str(data),
                            "--out", str(tmp_path / "one")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    sharded_log = json.loads((tmp_path / "sharded" / "train_log.json").read_text())["stages"][-1]
    assert not sharded_log.get("warnings")  # no "accelerate ran this training as MULTI_CPU": it was sharded
    losses, expected = _train_log_losses(tmp_path / "sharded"), _train_log_losses(tmp_path / "one")
    assert len(losses) == len(expected) == 8  # 2 epochs of 32 rows, 8 a step
    assert losses == pytest.approx(expected, abs=1e-5)
    assert expected[-1] < expected[0] - 0.05  # and it did train

    cfg = load_config(runs["one"])
    models = {name: load_for_eval(cfg, tmp_path / name / "model")[0] for name in ("one", "sharded")}
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        logits = {name: model(input_ids=ids).logits for name, model in models.items()}
        greedy = {name: model.generate(ids, max_new_tokens=8, do_sample=False) for name, model in models.items()}
    assert torch.allclose(logits["one"], logits["sharded"], atol=1e-5)
    assert torch.equal(greedy["one"], greedy["sharded"])


@pytest.mark.slow
@pytest.mark.parametrize("trainable", ["attention", "lora"])
def test_fsdp_on_two_cpu_processes_trains_as_one_process_does(tiny_llama, tmp_path, trainable):
    """accelerate's own FSDP2 path (params/accelerate/fsdp.yaml: fully_shard per decoder layer and at the root,
    the full state dict gathered for saving) on 2 CPU processes over gloo, through tests/fsdp_cpu_launch.py, which
    lifts only accelerate's rule that FSDP needs GPUs."""
    _sharded_training_matches_one_process(tmp_path, tiny_llama, trainable, "params/accelerate/fsdp.yaml",
                                          [str(REPO / "tests/fsdp_cpu_launch.py")], {})


@pytest.mark.slow
@pytest.mark.skipif(not (DEEPSPEED_DIR / "deepspeed").is_dir(),
                    reason="DeepSpeed's CPU build is not in .deepspeed/ (make deepspeed-cpu; make test does it)")
@pytest.mark.skipif(not shutil.which("c++"), reason="DeepSpeed compiles its CPU communication op: no C++ compiler")
@pytest.mark.parametrize("trainable", ["attention", "lora"])
def test_deepspeed_zero3_on_two_cpu_processes_trains_as_one_process_does(tiny_llama, tmp_path, trainable):
    """params/accelerate/deepspeed_zero3.yaml as shipped (ZeRO stage 3: weights, gradients and optimizer states
    partitioned; the 16-bit-consolidated weights saved), on DeepSpeed's CPU accelerator over gloo, the kit's own
    train command unchanged."""
    path = os.pathsep.join(filter(None, [str(DEEPSPEED_DIR), os.environ.get("PYTHONPATH")]))
    _sharded_training_matches_one_process(tmp_path, tiny_llama, trainable, "params/accelerate/deepspeed_zero3.yaml",
                                          ["-m", "clo_lib"], {"DS_ACCELERATOR": "cpu", "PYTHONPATH": path})
