"""clo_loss against independent computations: hand-computed numbers, and TRL's own DPO loss on identical inputs."""

import math

import pytest
import torch

from clo_lib.method.loss import clo_loss, sequence_logps

# Four preference rows: two English-input (is_target False), two target-input (True).
POLICY_CHOSEN = [-12.0, -20.5, -8.25, -30.0]
POLICY_REJECTED = [-15.0, -19.0, -11.0, -29.5]
REF_CHOSEN = [-13.0, -21.0, -9.0, -31.5]
REF_REJECTED = [-14.0, -18.0, -10.0, -28.0]
COUNTS = [6, 9, 4, 12]
IS_TARGET = [False, False, True, True]


def _inputs():
    t = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    return (t(POLICY_CHOSEN), t(POLICY_REJECTED), t(REF_CHOSEN), t(REF_REJECTED), torch.tensor(COUNTS),
            torch.tensor(IS_TARGET))


def _dpo_by_hand(i, beta):
    z = beta * ((POLICY_CHOSEN[i] - REF_CHOSEN[i]) - (POLICY_REJECTED[i] - REF_REJECTED[i]))
    return math.log(1.0 + math.exp(-z))  # −log σ(z)


@pytest.mark.parametrize("beta,lam", [(0.1, 0.5), (0.5, 0.0), (0.05, 1.0), (1.0, 0.3)])
def test_loss_matches_hand_computation(beta, lam):
    dpo = sum(_dpo_by_hand(i, beta) for i in range(4)) / 4
    nll = -(POLICY_CHOSEN[2] + POLICY_CHOSEN[3]) / (COUNTS[2] + COUNTS[3])  # target rows only: 38.25 / 16
    loss, metrics = clo_loss(*_inputs(), beta=beta, lam=lam)
    assert loss.item() == pytest.approx(lam * nll + (1 - lam) * dpo, abs=1e-9)
    assert metrics["nll"] == pytest.approx(38.25 / 16, abs=1e-12)
    assert metrics["dpo"] == pytest.approx(dpo, abs=1e-9)


def test_per_direction_metrics_by_hand():
    beta = 0.1
    _, m = clo_loss(*_inputs(), beta=beta)
    # English rows: margins 0.1*((1)-(-1)) = 0.2 and 0.1*((0.5)-(-1)) = 0.15
    assert m["en/rewards_margin"] == pytest.approx((0.2 + 0.15) / 2)
    assert m["en/rewards_chosen"] == pytest.approx((0.1 + 0.05) / 2)
    assert m["en/rewards_accuracy"] == 1.0
    # Target rows: margins 0.1*(0.75-(-1)) = 0.175 and 0.1*(1.5-(-1.5)) = 0.3
    assert m["tgt/rewards_margin"] == pytest.approx((0.175 + 0.3) / 2)
    assert m["tgt/dpo"] == pytest.approx((_dpo_by_hand(2, beta) + _dpo_by_hand(3, beta)) / 2)
    assert m["tgt/logps_rejected"] == pytest.approx((-11.0 - 29.5) / 2)


def test_ablation_switches_by_hand():
    beta, lam = 0.1, 0.5
    all_dpo = [_dpo_by_hand(i, beta) for i in range(4)]
    both_nll = -sum(POLICY_CHOSEN) / sum(COUNTS)
    loss, _ = clo_loss(*_inputs(), beta=beta, lam=lam, nll_sides=("en", "tgt"))
    assert loss.item() == pytest.approx(lam * both_nll + (1 - lam) * sum(all_dpo) / 4)
    loss, m = clo_loss(*_inputs(), beta=beta, lam=lam, nll_sides=())
    assert m["nll"] == 0.0 and loss.item() == pytest.approx((1 - lam) * sum(all_dpo) / 4)
    loss, _ = clo_loss(*_inputs(), beta=beta, lam=lam, dpo_sides=("en",))
    assert loss.item() == pytest.approx(lam * 38.25 / 16 + (1 - lam) * (all_dpo[0] + all_dpo[1]) / 2)
    loss, _ = clo_loss(*_inputs(), beta=beta, lam=lam, dpo_sides=("tgt",))
    assert loss.item() == pytest.approx(lam * 38.25 / 16 + (1 - lam) * (all_dpo[2] + all_dpo[3]) / 2)


def test_no_target_rows_gives_zero_nll_and_keeps_gradients():
    pc = torch.tensor([-3.0, -4.0], requires_grad=True)
    loss, m = clo_loss(pc, torch.tensor([-5.0, -1.0]), torch.tensor([-3.5, -4.0]), torch.tensor([-5.0, -2.0]),
                       torch.tensor([2, 3]), torch.tensor([False, False]))
    assert m["nll"] == 0.0 and "tgt/dpo" not in m
    loss.backward()
    assert pc.grad is not None and torch.all(pc.grad != 0)


def test_gradient_of_nll_term_by_hand():
    # d loss / d policy_chosen_logps[i] = −lam / Σcounts_target for target rows (dpo term switched off by lam=1).
    pc = torch.tensor(POLICY_CHOSEN, dtype=torch.float64, requires_grad=True)
    _, pr, rc, rr, counts, is_target = _inputs()
    loss, _ = clo_loss(pc, pr, rc, rr, counts, is_target, lam=1.0)
    loss.backward()
    assert pc.grad.tolist() == pytest.approx([0.0, 0.0, -1 / 16, -1 / 16])


def test_sequence_logps_by_hand():
    # Vocabulary of 3, sequence of 3 tokens; the first token is prompt (label −100), the last two are response.
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]])
    labels = torch.tensor([[-100, 2, 0]])
    logps, counts = sequence_logps(logits, labels)
    # Position 0 predicts token 2; position 1 predicts token 0.
    expected = (2.0 - math.log(1 + math.e + math.e**2)) + (1.0 - math.log(math.e + 2))
    assert logps.item() == pytest.approx(expected, abs=1e-6) and counts.item() == 2


# ---------------------------------------------------------------------------------------------------------------
# Against TRL: the same tiny model, the same tokenized batch, TRL's DPOTrainer.compute_loss vs ours.
# TRL scores tokens with its own chunked log-prob kernel, which may accumulate in float32 even for a float64
# model, so agreement is to 1e-6 relative (float32's own precision is about 1.2e-7).
TRL_REL = 1e-6


def _trl_setup(tiny_llama, tmp_path, loss_type, loss_weights, beta):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)  # float64: compare to 1e-6
    data = Dataset.from_list([
        {"prompt": "What is the capital of France?", "chosen": " The capital is Paris.",
         "rejected": " Mji mkuu ni Paris."},
        {"prompt": "Mji mkuu wa Ufaransa ni upi?", "chosen": " Mji mkuu ni Paris.",
         "rejected": " The capital is Paris."},
        {"prompt": "Explain why the sky is blue.", "chosen": " The sea is wide and blue.",
         "rejected": " Ni Paris."},
    ])
    args = DPOConfig(output_dir=str(tmp_path), beta=beta, loss_type=loss_type, loss_weights=loss_weights,
                     per_device_train_batch_size=3, bf16=False, gradient_checkpointing=False, report_to="none",
                     use_cpu=True, max_length=64, precompute_ref_log_probs=False, disable_dropout=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference copy TRL made, so rewards are not zero
        for layer in trainer.model.model.layers:
            layer.self_attn.v_proj.weight.add_(2.0 * torch.randn_like(layer.self_attn.v_proj.weight))
            layer.mlp.up_proj.weight.add_(2.0 * torch.randn_like(layer.mlp.up_proj.weight))
        trainer.model.lm_head.weight.add_(2.0 * torch.randn_like(trainer.model.lm_head.weight))
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, batch


def _ours_on_trl_batch(trainer, batch, **kwargs):
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        policy = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref = trainer.ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps, counts = sequence_logps(policy, labels)
    ref_logps, _ = sequence_logps(ref, labels)
    pc, pr = logps.chunk(2)
    rc, rr = ref_logps.chunk(2)
    cc, _ = counts.chunk(2)
    return clo_loss(pc, pr, rc, rr, cc, torch.tensor([False, True, False]), **kwargs)


@pytest.mark.parametrize("beta", [0.1, 0.3])
def test_lambda_zero_equals_trl_dpo_loss(tiny_llama, tmp_path, beta):
    trainer, batch = _trl_setup(tiny_llama, tmp_path, ["sigmoid"], None, beta)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
    ours, metrics = _ours_on_trl_batch(trainer, batch, beta=beta, lam=0.0)
    assert abs(metrics["dpo"] - math.log(2)) > 1e-2  # the policy really differs from the reference
    assert ours.item() == pytest.approx(trl_loss.item(), rel=TRL_REL, abs=1e-6)


def test_english_nll_ablation_equals_trl_dpo_plus_sft(tiny_llama, tmp_path):
    # TRL's "sft" term is the token-mean NLL over every chosen response: our nll_sides=("en", "tgt").
    trainer, batch = _trl_setup(tiny_llama, tmp_path, ["sigmoid", "sft"], [0.5, 0.5], 0.1)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
    ours, _ = _ours_on_trl_batch(trainer, batch, beta=0.1, lam=0.5, nll_sides=("en", "tgt"))
    assert ours.item() == pytest.approx(trl_loss.item(), rel=TRL_REL, abs=1e-6)


def test_one_micro_batch_with_its_own_counts_gives_the_same_bits_as_before():
    """The step-count path of clo_loss_tensors (gradient accumulation) reduces to the plain loss, bit for bit, when
    the step is one batch: a run without accumulation trains exactly as before it existed."""
    from clo_lib.method.loss import clo_loss_tensors

    generator = torch.Generator().manual_seed(3)
    logps = [-torch.rand(6, generator=generator) * 30 for _ in range(4)]
    counts = torch.tensor([3, 7, 2, 9, 4, 5])
    is_target = torch.tensor([0, 1, 0, 1, 0, 1]).bool()
    plain, _ = clo_loss_tensors(*logps, counts, is_target, beta=0.1, lam=0.5)
    stepped, _ = clo_loss_tensors(*logps, counts, is_target, beta=0.1, lam=0.5,
                                  nll_tokens=torch.tensor(float(counts[is_target].sum())), dpo_rows=torch.tensor(6.0))
    assert torch.equal(plain, stepped)
