"""Run by tests/test_train.py under torch.distributed.run with 2 CPU processes (gloo): every rank scores a batch
whose lengths differ from the other rank's, through bucketed_response_logps, and counts its forward passes and its
LM-head calls (chunks of CHUNK response tokens, each recomputed in the backward pass).

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_buckets_worker.py MODEL_DIR OUT.json
"""

import json
import math
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from clo_lib.method.loss import sequence_logps
from clo_lib.modeling import logps as logps_module
from clo_lib.modeling.logps import bucketed_response_logps, length_buckets

CHUNK = 10


def batch_for(rank: int, rows: int):
    """Rank 0: rows of one length (one bucket is cheapest); rank 1: lengths from 4 to 40 (several are)."""
    lengths = [12] * rows if rank == 0 else [4 + 36 * i // (rows - 1) for i in range(rows)]
    width = max(lengths)
    generator = torch.Generator().manual_seed(rank)
    input_ids = torch.randint(5, 60, (rows, width), generator=generator)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a two-token prompt
    return input_ids * mask, mask, labels, lengths


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    logps_module.LOGITS_BUDGET_BYTES = 4 * model.config.vocab_size * CHUNK  # the head runs CHUNK tokens a call
    passes, head_calls = [], []
    model.model.register_forward_pre_hook(lambda module, args: passes.append(1))
    model.lm_head.register_forward_pre_hook(lambda module, args: head_calls.append(1))  # backward recompute too
    input_ids, mask, labels, lengths = batch_for(rank, rows=6 if rank == 0 else 8)  # even the row counts differ
    logps, _ = bucketed_response_logps(model, input_ids, mask, labels, buckets=4)
    logps.sum().backward()
    calls = len(head_calls)
    plain, _ = sequence_logps(model(input_ids=input_ids, attention_mask=mask).logits, labels)
    # what each rank's passes would need on their own: one call per CHUNK response tokens (and its recompute)
    groups = length_buckets(lengths, 4, exactly=True)
    alone_calls = sum(2 * math.ceil(sum(lengths[i] - 2 for i in group) / CHUNK) for group in groups)
    report = {"passes": len(passes) - 1, "alone": len(length_buckets(lengths, 4)), "head_calls": calls,
              "alone_head_calls": alone_calls, "equal": bool(torch.allclose(logps, plain, atol=1e-4))}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, report)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(everyone, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
