"""The CLO objective (PAPER.md, "The loss"):

    L_CLO = λ · L_NLL + (1 − λ) · L_CL

L_CL is DPO over the cross-lingual preference rows of both directions, against a frozen reference:
    −log σ( β [ (log πθ(y_w|x) − log π_ref(y_w|x)) − (log πθ(y_l|x) − log π_ref(y_l|x)) ] ), mean over rows.
L_NLL is the negative log-likelihood of the target-language responses only (rows whose prompt is in the target
language, where the chosen response is the target one), as a token mean over those responses.

Log-probs are sums over response tokens (assumed). Inputs are 1-D tensors over the B preference rows of a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> tuple[torch.Tensor, ...]:
    """Sum of per-token log-probs of `labels` under `logits`, and the number of counted tokens, per row.

    `logits` is (B, T, V) from a causal LM over the whole sequence; `labels` is (B, T) with the prompt and padding
    set to `ignore_index`. Position t predicts token t+1, so logits and labels are shifted by one.
    """
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels != ignore_index
    safe_labels = labels.masked_fill(~mask, 0)
    # log_softmax in at least float32: summing hundreds of bf16 log-probs loses the precision DPO's margins need.
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    token_logps = torch.gather(logits.log_softmax(-1), 2, safe_labels.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def clo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_token_counts: torch.Tensor,
    is_target: torch.Tensor,
    beta: float = 0.1,
    lam: float = 0.5,
    nll_on: str = "target",
    directions: str = "both",
) -> tuple[torch.Tensor, dict[str, float]]:
    """CLO loss over B preference rows; returns `(loss, metrics)`.

    loss = lam * nll + (1 - lam) * dpo, with
      dpo: mean DPO loss over the rows of the used `directions` ("both" as in the paper, or the ablations
           "english" = English-input rows only, "target" = target-input rows only);
      nll: −Σ policy_chosen_logps[rows] / Σ chosen_token_counts[rows], where rows are the target-input rows
           (`nll_on="target"`, the paper), every row ("both", the English-NLL ablation) or none ("none": nll = 0).
           nll is 0 when no row qualifies.
    """
    if nll_on not in ("target", "both", "none"):
        raise ValueError(f"nll_on = {nll_on!r}; expected target, both or none")
    if directions not in ("both", "english", "target"):
        raise ValueError(f"directions = {directions!r}; expected both, english or target")
    is_target = is_target.bool()
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    per_row_dpo = -F.logsigmoid(chosen_rewards - rejected_rewards)

    dpo_rows = {"both": torch.ones_like(is_target), "english": ~is_target, "target": is_target}[directions]
    zero = per_row_dpo.sum() * 0.0  # keeps the graph (and device, dtype) when a term is empty
    dpo = per_row_dpo[dpo_rows].mean() if dpo_rows.any() else zero

    nll_rows = {"target": is_target, "both": torch.ones_like(is_target), "none": torch.zeros_like(is_target)}[nll_on]
    if nll_rows.any():
        nll = -policy_chosen_logps[nll_rows].sum() / chosen_token_counts[nll_rows].sum().clamp(min=1)
    else:
        nll = zero

    loss = lam * nll + (1.0 - lam) * dpo
    metrics = {"loss": loss.item(), "nll": nll.item(), "dpo": dpo.item()}
    for name, rows in (("en", ~is_target), ("tgt", is_target)):
        if not rows.any():
            continue
        margin = (chosen_rewards - rejected_rewards)[rows]
        metrics.update({
            f"{name}/dpo": per_row_dpo[rows].mean().item(),
            f"{name}/rewards_chosen": chosen_rewards[rows].mean().item(),
            f"{name}/rewards_rejected": rejected_rewards[rows].mean().item(),
            f"{name}/rewards_margin": margin.mean().item(),
            f"{name}/rewards_accuracy": (margin > 0).float().mean().item(),
            f"{name}/logps_chosen": policy_chosen_logps[rows].mean().item(),
            f"{name}/logps_rejected": policy_rejected_logps[rows].mean().item(),
        })
    return loss, metrics
