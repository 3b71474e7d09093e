"""Log-probs of response tokens, the quantity every loss of the kit is made of.

Only positions that predict a response token go through the LM head, and a batch's sequences go through the model
in up to `train.length_buckets` passes of similar length, so short answers are not padded to the longest. Both are
speed only: the result equals `clo_lib.method.loss.sequence_logps` on one padded pass (tested, gradients included).

    response_logps(model, ids, mask, labels)            per-row sums and counts, response-only LM head
    bucketed_response_logps(..., buckets)               the same over length buckets
    enable_response_logps(model, buckets)               lets the model's own forward return them (for the Trainer)
    sft_response_loss                                   the causal-LM loss from them (a Trainer compute_loss_func)
    preference_logps / add_reference_logps              chosen and rejected sums under a model, without gradients
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from clo_lib.config.schema import RunConfig
from clo_lib.method.loss import sequence_logps
from clo_lib.modeling.batches import collate_preferences, collate_sft, encode

# The LM head's logits are kept for the backward pass up to this size; beyond it they are computed in chunks and
# recomputed in the backward pass (a 128k vocabulary makes 0.5 MB of float32 logits per token).
LOGITS_BUDGET_BYTES = 256 * 2**20


def response_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                   chunk_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of response-token log-probs and their count; equal to `sequence_logps(model(...).logits, labels)`.

    Only positions that predict a response token go through the LM head: prompt and padding cost nothing there.
    When their logits would pass LOGITS_BUDGET_BYTES (or `chunk_tokens` is given), they go through in chunks whose
    logits are recomputed in the backward pass rather than kept, so a 128k-vocabulary head never holds logits for
    the whole batch. Models whose head does more than a linear layer (logit soft-capping, scaling) take the plain
    path.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    config = base.config
    special_head = getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None)
    backbone = getattr(base, "model", None)
    if special_head or backbone is None or not isinstance(head, torch.nn.Linear):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return sequence_logps(logits, labels)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != -100
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(targets)[mask]
    picked_hidden, picked_targets = hidden[:, :-1][mask], targets[mask]
    step = chunk_tokens or max(1, LOGITS_BUDGET_BYTES // (4 * head.out_features))
    n_tokens = picked_targets.shape[0]
    agreed = _head_calls_all_ranks_agree_on(math.ceil(n_tokens / step), labels.device)
    if agreed is None and (n_tokens == 0 or (chunk_tokens is None and n_tokens <= step)):
        token_logps = _token_logps(head, picked_hidden, picked_targets)  # small enough: keep the logits
    else:
        pieces = []
        for start in range(0, (agreed or math.ceil(n_tokens / step)) * step, step):  # past the end: empty chunks
            h, t = picked_hidden[start:start + step], picked_targets[start:start + step]
            if torch.is_grad_enabled() and h.requires_grad:
                pieces.append(torch.utils.checkpoint.checkpoint(_token_logps, head, h, t, use_reentrant=False))
            else:
                pieces.append(_token_logps(head, h, t))
        token_logps = torch.cat(pieces)
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=labels.device).index_add(0, rows, token_logps)
    return sums, mask.sum(-1)


def _head_calls_all_ranks_agree_on(chunks: int, device: torch.device) -> int | None:
    """With several processes, how many LM-head chunks every rank runs in this pass (the most any rank needs, at
    least one); None with one process. Under ZeRO-3 each head call can gather the head's sharded weight with a
    collective: ranks whose response-token counts differ would make different numbers of calls (4 against 8)
    and wait for each other. The rank with fewer tokens runs empty chunks."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    if torch.distributed.get_world_size() == 1:
        return None
    count = torch.tensor([max(chunks, 1)], device=device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    return int(count.item())


def _token_logps(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # summing hundreds of 16-bit log-probs loses the precision DPO's margins need
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


# ---------------------------------------------------------------------------------------------------------------
# Length buckets


def length_buckets(lengths: Sequence[int], max_buckets: int, exactly: bool = False) -> list[list[int]]:
    """Indices of `lengths` split into at most `max_buckets` groups (exactly min(max_buckets, n) with `exactly`)
    that minimize the padded token count.

    Sorting by length and cutting the sorted list where padding costs most is optimal for this cost (each group
    pays count × its longest length), so a small dynamic programme over the cut points finds the best cuts.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    n, k = len(order), max(1, min(max_buckets, len(order)))
    # best[b][j]: least padded tokens covering the j shortest sequences with b non-empty groups; cut[b][j]: where
    # the last group begins
    best = [[math.inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for b in range(1, k + 1):
        for j in range(1, n + 1):
            for i in range(b - 1, j):
                cost = best[b - 1][i] + (j - i) * sorted_lengths[j - 1]
                if cost < best[b][j]:
                    best[b][j], cut[b][j] = cost, i
    # the fewest groups among the cheapest, unless the count is fixed
    groups_used = k if exactly else min(range(1, k + 1), key=lambda b: (best[b][n], b))
    groups, end = [], n
    for b in range(groups_used, 0, -1):
        start = cut[b][end]
        groups.append(order[start:end])
        end = start
    return groups[::-1]


def _bucket_count_all_ranks_agree_on(rows: int, max_buckets: int, device: torch.device) -> int | None:
    """With several processes, the number of forward passes every rank makes for this batch; None with one.

    Under FSDP or ZeRO-3 every forward pass gathers the sharded weights with a collective, so ranks that made
    different numbers of passes would wait for each other forever. Every rank takes the smallest row count of any
    rank (one tiny all-reduce), and makes exactly min(max_buckets, that) passes.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    if torch.distributed.get_world_size() == 1:
        return None
    count = torch.tensor([min(rows, max_buckets)], device=device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MIN)
    return int(count.item())


def bucketed_response_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                            buckets: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`response_logps` over a right-padded batch, run as up to `buckets` forward passes of similar-length rows.

    The result is the same per row (a causal model never looks at the padding after a row), but short answers no
    longer pay for the longest one: with answers of mixed lengths, padding can be a third of a batch's tokens.
    With several processes the number of passes is the same on every rank (see _bucket_count_all_ranks_agree_on).
    """
    lengths = attention_mask.sum(-1).tolist()
    agreed = _bucket_count_all_ranks_agree_on(len(lengths), buckets, input_ids.device)
    groups = length_buckets(lengths, buckets) if agreed is None else length_buckets(lengths, agreed, exactly=True)
    pieces = []
    for group in groups:
        index = torch.tensor(group, device=input_ids.device)
        width = max(lengths[i] for i in group)
        pieces.append(response_logps(model, input_ids[index, :width], attention_mask[index, :width],
                                     labels[index, :width]))
    logps, counts = (torch.cat(parts) for parts in zip(*pieces))
    restore = torch.argsort(torch.tensor([i for group in groups for i in group], device=logps.device))
    return logps[restore], counts[restore]


def enable_response_logps(model, length_buckets: int = 1) -> None:
    """Let `model(input_ids=, attention_mask=, clo_response_labels=labels)` return
    `bucketed_response_logps(..., buckets=length_buckets)`; any other call is the model's own forward.

    The trainer calls the model this way rather than reaching into it, so the wrappers that distributed training
    puts around the model (DistributedDataParallel, FSDP, DeepSpeed) see one ordinary forward per step: they sync
    gradients and gather sharded weights around it.
    """
    model.clo_length_buckets = length_buckets  # read at each call, so a later stage can change it
    if getattr(model, "clo_response_logps_enabled", False):
        return
    own_forward = model.forward

    @functools.wraps(own_forward)
    def forward(*args, clo_response_labels=None, **kwargs):
        if clo_response_labels is None:
            return own_forward(*args, **kwargs)
        return bucketed_response_logps(model, kwargs["input_ids"], kwargs["attention_mask"], clo_response_labels,
                                       model.clo_length_buckets)

    model.forward = forward
    model.clo_response_logps_enabled = True


def sft_response_loss(outputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """The causal-LM loss (token-mean NLL of the response tokens) from `response_logps`, as a Trainer
    `compute_loss_func`. The Trainer passes the response-token count of the whole optimizer step (all
    gradient-accumulation micro-batches, all processes), exactly as it does for the model's own loss.
    """
    logps, counts = outputs
    tokens = num_items_in_batch if num_items_in_batch is not None else counts.sum().clamp(min=1)
    return -logps.sum() / tokens


# ---------------------------------------------------------------------------------------------------------------
# Scoring preference rows without gradients: the reference model, and the demo's preference checks


@torch.no_grad()
def preference_logps(model, groups: list[list[dict]], pad_id: int, batch_size: int = 8,
                     buckets: int = 1) -> tuple[torch.Tensor, ...]:
    """Summed response log-probs of every row's chosen and rejected answer under `model`, in row order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for start in range(0, len(groups), batch_size):
        batch = collate_preferences(groups[start:start + batch_size], pad_id)
        logps, _ = bucketed_response_logps(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                           batch["labels"].to(device), buckets)
        c, r = logps.float().cpu().chunk(2)
        chosen.append(c)
        rejected.append(r)
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def add_reference_logps(model, groups: list[list[dict]], pad_id: int, batch_size: int = 8, buckets: int = 1) -> None:
    """Log-probs of the frozen starting model, computed once and stored in each row (not recomputed per step)."""
    chosen, rejected = preference_logps(model, groups, pad_id, batch_size, buckets)
    rows = [row for group in groups for row in group]
    for row, c, r in zip(rows, chosen.tolist(), rejected.tolist()):
        row["ref_chosen_logps"], row["ref_rejected_logps"] = c, r


def reference_nll(model, tokenizer, cfg: RunConfig, pairs: Sequence[dict], batch_size: int = 8) -> tuple[float, int]:
    """Token-weighted NLL of each pair's response ({prompt, response}) given its prompt, tokenized as training does
    (encode: the run's prompt format, the response's tokens plus EOS): MT-bench's reference answers, and a
    held-back validation set's responses (clo_lib.stages.evaluate). Returns (NLL, response tokens counted)."""
    items = [encode(tokenizer, cfg, pair["prompt"], pair["response"]) for pair in pairs]
    items.sort(key=lambda item: len(item["input_ids"]))  # less padding
    total_logp, total_tokens = 0.0, 0
    with torch.inference_mode():
        for begin in range(0, len(items), batch_size):
            batch = collate_sft(items[begin: begin + batch_size], tokenizer.pad_token_id)
            batch = {key: value.to(model.device) for key, value in batch.items()}
            logps, counts = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            total_logp += float(logps.double().sum())
            total_tokens += int(counts.sum())
    return -total_logp / total_tokens, total_tokens
