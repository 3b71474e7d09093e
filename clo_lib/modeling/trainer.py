"""The trainer every method shares: TRL's SFTTrainer, subclassed so a preference stage's loss is the CLO loss
(clo_lib.method.loss) on response-only log-probs with reference log-probs stored in the batch, logged per side.
Built on first use, so importing the kit does not import TRL.
"""

from __future__ import annotations

import torch

from clo_lib.method.loss import clo_loss_tensors, step_counts

# ---------------------------------------------------------------------------------------------------------------
# Trainers


def make_trainer_class():
    from transformers import Trainer

    class CLOTrainer(Trainer):
        """transformers.Trainer whose loss is clo_loss over the preference rows of each batch."""

        def __init__(self, *args, beta: float, lam: float, nll_sides: list[str], dpo_sides: list[str], **kwargs):
            super().__init__(*args, **kwargs)
            # clo_loss is a mean over the batch's rows, not a sum to be divided by the Trainer's token count: let the
            # Trainer average it over gradient-accumulation steps (it skips that for models taking loss kwargs).
            self.model_accepts_loss_kwargs = False
            self.clo_args = {"beta": beta, "lam": lam, "nll_sides": nll_sides, "dpo_sides": dpo_sides}
            # Running sums of the CLO metrics since the last log line, kept on the device and read only when logging.
            self._metric_sums: dict[str, torch.Tensor] = {}
            self._metric_weights: dict[str, torch.Tensor] = {}

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            """The optimizer step's micro-batches, as the Trainer collects them, and the step's totals over all of
            them and every process: the NLL's target tokens and the DPO's rows. compute_loss divides by these, so
            a step's loss is clo_loss over all its rows (NLL a token mean over the step, as SFT's), not a mean of
            per-micro-batch means."""
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            self._step_totals = step_totals(batches, self.clo_args["nll_sides"], self.clo_args["dpo_sides"], device)
            return batches, num_items

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logps, counts = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                  clo_response_labels=inputs["labels"])
            chosen_logps, rejected_logps = logps.chunk(2)
            chosen_counts, _ = counts.chunk(2)
            step = {}
            totals = getattr(self, "_step_totals", None) if model.training else None
            if totals is not None:
                # the Trainer divides a micro-batch's loss by the step's micro-batch count: undo it, the counts of
                # the whole step are in the denominators already
                micro = self.current_gradient_accumulation_steps
                step = {"nll_tokens": torch.tensor(totals[0] / micro, device=logps.device),
                        "dpo_rows": torch.tensor(totals[1] / micro, device=logps.device)}
            loss, metrics = clo_loss_tensors(chosen_logps, rejected_logps, inputs["ref_chosen_logps"],
                                             inputs["ref_rejected_logps"], chosen_counts, inputs["is_target"],
                                             **self.clo_args, **step)
            if model.training:
                self._add_metrics(metrics)
            return (loss, {"logps": logps}) if return_outputs else loss

        def _add_metrics(self, metrics: dict[str, torch.Tensor]) -> None:
            # Whole-batch metrics average over steps; per-side ones over that side's rows.
            weights = {"en": metrics.pop("en/rows"), "tgt": metrics.pop("tgt/rows")}
            for key, value in metrics.items():
                weight = weights[key.split("/")[0]] if "/" in key else torch.ones_like(value)
                self._metric_sums[key] = self._metric_sums.get(key, 0) + value * weight
                self._metric_weights[key] = self._metric_weights.get(key, 0) + weight

        def log(self, logs: dict[str, float], *args, **kwargs) -> None:
            # Averages of the CLO metrics since the last log line, next to the Trainer's own: one device read.
            if self._metric_sums:
                keys = list(self._metric_sums)
                sums = torch.stack([self._metric_sums[k] for k in keys]).tolist()
                weights = torch.stack([self._metric_weights[k] for k in keys]).tolist()
                for key, total, weight in zip(keys, sums, weights):
                    if weight > 0:  # a side with no rows since the last log line has nothing to report
                        logs[key if key != "loss" else "clo_loss"] = round(total / weight, 6)
            self._metric_sums.clear()
            self._metric_weights.clear()
            super().log(logs, *args, **kwargs)

    return CLOTrainer


def step_totals(batches: list[dict], nll_sides: list[str], dpo_sides: list[str], device) -> tuple[float, float]:
    """A step's NLL target tokens and DPO rows over its micro-batches and every process, each process's share
    scaled by the number of processes (DDP, FSDP and DeepSpeed average gradients over them)."""
    totals = torch.zeros(2, dtype=torch.float64)
    for batch in batches:
        chosen_tokens = (batch["labels"][:, 1:] != -100).sum(-1).chunk(2)[0]
        tokens, rows = step_counts(chosen_tokens, batch["is_target"], nll_sides, dpo_sides)
        totals += torch.tensor([float(tokens), float(rows)], dtype=torch.float64)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            totals = totals.to(device)
            torch.distributed.all_reduce(totals)
    return totals[0].item() / world, totals[1].item() / world


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]
