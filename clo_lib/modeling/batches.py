"""Tokenized training items and the batches they make: one item per SFT row, or per source example for CLO.

Every method shares one tokenization (clo_lib.method.pairs.encode_response), so the loss sees exactly the response
tokens.
A CLO item holds both preference rows of one source example, so a batch of items never splits a pair (PAPER.md:
"batch-based"). A preference batch stacks all chosen sequences, then all rejected ones, for one forward pass.
"""

from __future__ import annotations

from typing import Sequence

import torch

from clo_lib.config.schema import RunConfig
from clo_lib.method.pairs import encode_response, format_prompt, group_by_pair


def encode(tokenizer, cfg: RunConfig, prompt: str, response: str) -> dict[str, list[int]]:
    """Format `prompt` as this run's model expects, then tokenize it with `response` (labels on the response)."""
    text = format_prompt(prompt, tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    return encode_response(tokenizer, text, response, cfg.model.max_length, chat=cfg.model.prompt_format == "chat")


def encode_sft_rows(rows: Sequence[dict], tokenizer, cfg: RunConfig) -> list[dict]:
    return [encode(tokenizer, cfg, row["prompt"], row["response"]) for row in rows]


def encode_preference_groups(rows: Sequence[dict], tokenizer, cfg: RunConfig) -> list[list[dict]]:
    """One item per source example holding its rows, so a batch of items never splits a pair (batch-based loss)."""
    return [
        [{"chosen": encode(tokenizer, cfg, row["prompt"], row["chosen"]),
          "rejected": encode(tokenizer, cfg, row["prompt"], row["rejected"]),
          "is_target": bool(row["is_target"])} for row in group]
        for group in group_by_pair(rows)
    ]


def pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences])


def collate_sft(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    input_ids = pad([i["input_ids"] for i in items], pad_id)
    return {"input_ids": input_ids, "labels": pad([i["labels"] for i in items], -100),
            "attention_mask": pad([[1] * len(i["input_ids"]) for i in items], 0)}


def with_response_labels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Trainer takes `labels` out of the batch to count response tokens and hand them to the loss; the same
    tensor under `clo_response_labels` sends the forward down the response-only path (clo_lib.modeling.logps)."""
    return {**batch, "clo_response_labels": batch["labels"]}


def collate_preferences(groups: list[list[dict]], pad_id: int) -> dict[str, torch.Tensor]:
    """Flatten groups into rows; one forward pass covers [all chosen; all rejected] sequences."""
    rows = [row for group in groups for row in group]
    sequences = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    batch = collate_sft(sequences, pad_id)
    batch["is_target"] = torch.tensor([r["is_target"] for r in rows])
    if "ref_chosen_logps" in rows[0]:
        batch["ref_chosen_logps"] = torch.tensor([r["ref_chosen_logps"] for r in rows], dtype=torch.float32)
        batch["ref_rejected_logps"] = torch.tensor([r["ref_rejected_logps"] for r in rows], dtype=torch.float32)
    return batch
