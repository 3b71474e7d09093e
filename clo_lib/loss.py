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
    metrics: loss, nll, dpo, and per direction ("en/…" English-input rows, "tgt/…" target-input rows) the DPO
    loss, rewards of chosen and rejected answers, their margin, reward accuracy and the policy's log-probs.
    """
    loss, metrics = clo_loss_tensors(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                     chosen_token_counts, is_target, beta, lam, nll_on, directions)
    values = dict(zip(metrics, torch.stack(list(metrics.values())).tolist()))  # one device sync, not one per metric
    # A direction with no rows in this batch has no metrics (rather than zeros that would pull averages down).
    for name in ("en", "tgt"):
        if values.pop(f"{name}/rows") == 0:
            values = {k: v for k, v in values.items() if not k.startswith(f"{name}/")}
    return loss, values


def _masked_mean(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `rows`, 0 when there are none; no host-side branch, so no GPU sync."""
    return torch.where(rows, values, 0).sum() / rows.sum().clamp(min=1)


def clo_loss_tensors(
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`clo_loss` with its metrics left as detached 0-d tensors (the loss's dtype, on its device), plus `en/rows`
    and `tgt/rows`: how many rows of each direction the batch had (that direction's metrics are 0 when none).

    The trainer sums these across steps and reads them only when it logs: reading a GPU value (`.item()`, or an
    `if` on a tensor) makes the host wait for the GPU, and doing that every step stalls the pipeline.
    """
    if nll_on not in ("target", "both", "none"):
        raise ValueError(f"nll_on = {nll_on!r}; expected target, both or none")
    if directions not in ("both", "english", "target"):
        raise ValueError(f"directions = {directions!r}; expected both, english or target")
    is_target = is_target.bool()
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    per_row_dpo = -F.logsigmoid(chosen_rewards - rejected_rewards)

    everything, nothing = torch.ones_like(is_target), torch.zeros_like(is_target)
    dpo_rows = {"both": everything, "english": ~is_target, "target": is_target}[directions]
    dpo = _masked_mean(per_row_dpo, dpo_rows)  # 0 (with the graph kept) when no row qualifies

    nll_rows = {"target": is_target, "both": everything, "none": nothing}[nll_on]
    nll_tokens = torch.where(nll_rows, chosen_token_counts, 0).sum().clamp(min=1)
    nll = -torch.where(nll_rows, policy_chosen_logps, 0).sum() / nll_tokens

    loss = lam * nll + (1.0 - lam) * dpo
    metrics = {"loss": loss, "nll": nll, "dpo": dpo}
    margin = chosen_rewards - rejected_rewards
    for name, rows in (("en", ~is_target), ("tgt", is_target)):
        metrics.update({
            f"{name}/rows": rows.sum(),
            f"{name}/dpo": _masked_mean(per_row_dpo, rows),
            f"{name}/rewards_chosen": _masked_mean(chosen_rewards, rows),
            f"{name}/rewards_rejected": _masked_mean(rejected_rewards, rows),
            f"{name}/rewards_margin": _masked_mean(margin, rows),
            f"{name}/rewards_accuracy": _masked_mean((margin > 0).to(margin.dtype), rows),
            f"{name}/logps_chosen": _masked_mean(policy_chosen_logps, rows),
            f"{name}/logps_rejected": _masked_mean(policy_rejected_logps, rows),
        })
    return loss, {key: value.detach().to(loss.dtype) for key, value in metrics.items()}
