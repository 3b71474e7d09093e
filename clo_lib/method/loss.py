"""The CLO objective (PAPER.md, "The loss"):

    L_CLO = λ · L_NLL + (1 − λ) · L_CL

L_CL is DPO over the cross-lingual preference rows of both directions, against a frozen reference:
    −log σ( β [ (log πθ(y_w|x) − log π_ref(y_w|x)) − (log πθ(y_l|x) − log π_ref(y_l|x)) ] ), mean over rows.
L_NLL is the negative log-likelihood of the target-language responses only (rows whose prompt is in the target
language, where the chosen response is the target one), as a token mean over those responses.

Log-probs are sums over response tokens (assumed). Inputs are 1-D tensors over the B preference rows of a batch.
A row's side is the language of its prompt, "en" or "tgt" (clo_lib.method.pairs.SIDES); the ablations choose which sides
get NLL (`nll_sides`) and DPO (`dpo_sides`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from clo_lib.common.errors import InputError


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
    nll_sides: Sequence[str] = ("tgt",),
    dpo_sides: Sequence[str] = ("en", "tgt"),
) -> tuple[torch.Tensor, dict[str, float]]:
    """CLO loss over B preference rows; returns `(loss, metrics)`.

    loss = lam * nll + (1 - lam) * dpo, with
      dpo: mean DPO loss over the rows of `dpo_sides` (("en", "tgt"): both directions, as in the paper; the
           ablations ("en",) = English-input rows only, ("tgt",) = target-input rows only);
      nll: −Σ policy_chosen_logps[rows] / Σ chosen_token_counts[rows], where rows are those of `nll_sides`
           (("tgt",): target-input rows, the paper; ("en", "tgt"): every row, the English-NLL ablation; (): none).
           nll is 0 when no row qualifies.
    metrics: loss, nll, dpo, and per side ("en/…" English-input rows, "tgt/…" target-input rows) the DPO
    loss, rewards of chosen and rejected answers, their margin, reward accuracy and the policy's log-probs.
    """
    loss, metrics = clo_loss_tensors(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                     chosen_token_counts, is_target, beta, lam, nll_sides, dpo_sides)
    values = dict(zip(metrics, torch.stack(list(metrics.values())).tolist()))  # one device sync, not one per metric
    # A side with no rows in this batch has no metrics (rather than zeros that would pull averages down).
    for name in ("en", "tgt"):
        if values.pop(f"{name}/rows") == 0:
            values = {k: v for k, v in values.items() if not k.startswith(f"{name}/")}
    return loss, values


def _masked_mean(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `rows`, 0 when there are none; no host-side branch, so no GPU sync."""
    return torch.where(rows, values, 0).sum() / rows.sum().clamp(min=1)


def _rows_of(side_rows: dict[str, torch.Tensor], sides: Sequence[str], name: str) -> torch.Tensor:
    """The rows whose side is in `sides` (no row for an empty list)."""
    if isinstance(sides, str) or any(side not in side_rows for side in sides):
        raise InputError(f"{name} = {sides!r}; expected a list of sides out of en, tgt")
    rows = torch.zeros_like(side_rows["en"])
    for side in sides:
        rows = rows | side_rows[side]
    return rows


def side_rows(is_target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each side's rows of a batch, from its is_target flags (a row's side is the language of its prompt)."""
    is_target = is_target.bool()
    return {"en": ~is_target, "tgt": is_target}


def step_counts(chosen_token_counts: torch.Tensor, is_target: torch.Tensor, nll_sides: Sequence[str],
                dpo_sides: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The denominators of one batch's share of clo_loss: its chosen response tokens on `nll_sides` and its rows
    on `dpo_sides` (summed over a step's micro-batches and processes, they are clo_loss_tensors' nll_tokens and
    dpo_rows)."""
    rows = side_rows(is_target)
    nll_rows, dpo_rows = _rows_of(rows, nll_sides, "nll_sides"), _rows_of(rows, dpo_sides, "dpo_sides")
    return chosen_token_counts[nll_rows].sum(), dpo_rows.sum()


def clo_loss_tensors(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_token_counts: torch.Tensor,
    is_target: torch.Tensor,
    beta: float = 0.1,
    lam: float = 0.5,
    nll_sides: Sequence[str] = ("tgt",),
    dpo_sides: Sequence[str] = ("en", "tgt"),
    nll_tokens: torch.Tensor | None = None,
    dpo_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`clo_loss` with its metrics left as detached 0-d tensors (the loss's dtype, on its device), plus `en/rows`
    and `tgt/rows`: how many rows of each side the batch had (that side's metrics are 0 when none).

    nll_tokens, dpo_rows: the NLL's token count and the DPO's row count of the whole optimizer step, when this batch
    is one of several micro-batches (gradient accumulation, several processes). The returned loss is then this
    batch's share of the step's loss, its NLL and DPO sums divided by the step's counts, so the shares add up to
    clo_loss over every row of the step; the metrics stay this batch's own means.

    The trainer sums these across steps and reads them only when it logs: reading a GPU value (`.item()`, or an
    `if` on a tensor) makes the host wait for the GPU, and doing that every step stalls the pipeline.
    """
    rows_by_side = side_rows(is_target)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    per_row_dpo = -F.logsigmoid(chosen_rewards - rejected_rewards)

    dpo_mask = _rows_of(rows_by_side, dpo_sides, "dpo_sides")
    dpo = _masked_mean(per_row_dpo, dpo_mask)  # 0, graph kept, when no row

    nll_rows = _rows_of(rows_by_side, nll_sides, "nll_sides")
    nll_sum = -torch.where(nll_rows, policy_chosen_logps, 0).sum()
    nll = nll_sum / torch.where(nll_rows, chosen_token_counts, 0).sum().clamp(min=1)

    loss = lam * nll + (1.0 - lam) * dpo
    metrics = {"loss": loss, "nll": nll, "dpo": dpo}
    if nll_tokens is not None and dpo_rows is not None:  # this micro-batch's share of the step's loss
        # the same operations as above with the step's counts, so one micro-batch alone gives the same bits
        loss = lam * (nll_sum / nll_tokens.clamp(min=1)) + \
            (1.0 - lam) * (torch.where(dpo_mask, per_row_dpo, 0).sum() / dpo_rows.clamp(min=1))
    margin = chosen_rewards - rejected_rewards
    for name, rows in rows_by_side.items():
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
