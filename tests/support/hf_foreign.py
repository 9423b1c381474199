"""HF ``TrainerCallback``s under Lightning: the same training under both trainers, and the
company's own HF callback.

:func:`hf_trainer` and :class:`GPT2Module` train the same tiny GPT-2 (dropout off) on the
same batches in the same order with the same SGD at a constant learning rate, logging
``loss`` and ``learning_rate`` at every step and evaluating every ``eval_every`` steps; an
evaluation also reports ``score``, taken from a fixed sequence by the step it runs at, so
that both trainers see the same metric sequence. :class:`ScriptedBoring` is the plain
``nn.Module`` case (Lightning's ``BoringModel``) with the same scores.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from support.hf_models import lm_examples, make_trainer, tiny_gpt2
from support.lightning_models import BoringModel

LR = 0.1
#: The evaluation scores, by evaluation (the n-th evaluation reports SCORES[n - 1]): lower is
#: better; with patience 2 an early stopping stops at the 4th evaluation (0.9, 0.85 after 0.8).
SCORES: tuple[float, ...] = (1.0, 0.8, 0.9, 0.85, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)

#: HF's wall-clock figures: they differ between any two runs, under the same trainer too.
WALL_CLOCK = ("_runtime", "_per_second")


def score_at(step: int, eval_every: int) -> float:
    """The score of the evaluation at ``step``."""
    return SCORES[max(step // eval_every - 1, 0) % len(SCORES)]


def without_wall_clock(logs: dict[str, Any]) -> dict[str, Any]:
    """``logs`` less HF's timing figures (and the end-of-training summary's ``total_flos``)."""
    return {k: v for k, v in logs.items() if not k.endswith(WALL_CLOCK) and k != "total_flos"}


def gpt2(seed: int = 0) -> Any:
    """The tiny GPT-2 with dropout off (the same trajectory under both trainers)."""
    return tiny_gpt2(seed, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def hf_trainer(
    output_dir: Any, callbacks: list[Any], *, max_steps: int, eval_every: int, **args: Any
) -> Any:
    """An HF ``Trainer``: sequential batches of 2, SGD at a constant rate, a log every step."""
    model = gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def compute_metrics(prediction: Any) -> dict[str, float]:
        return {"score": score_at(trainer.state.global_step, eval_every)}

    values: dict[str, Any] = {
        "max_steps": max_steps,
        "train_sampling_strategy": "sequential",
        "max_grad_norm": 0.0,
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": eval_every,
        "metric_for_best_model": "score",
        "greater_is_better": False,
    }
    values.update(args)
    trainer = make_trainer(
        output_dir,
        callbacks=callbacks,
        model=model,
        trainer_kwargs={"optimizers": (optimizer, schedule), "compute_metrics": compute_metrics},
        **values,
    )
    return trainer


class GPT2Module(pl.LightningModule):
    """The HF model inside a LightningModule (as ``self.model``), trained as :func:`hf_trainer`."""

    def __init__(self, eval_every: int) -> None:
        super().__init__()
        self.model = gpt2()
        self.eval_every = eval_every

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # As HF's Trainer computes it: the summed token loss over the batch's label count.
        items = batch["labels"].ne(-100).sum()
        loss = self.model(**batch, num_items_in_batch=items).loss
        self.log("loss", loss)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # HF logs the gradient norm (unclipped under max_grad_norm=0) and the rate, in this order.
        self.log("grad_norm", torch.nn.utils.clip_grad_norm_(self.parameters(), float("inf")))
        self.log("learning_rate", float(optimizer.param_groups[0]["lr"]))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        items = batch["labels"].ne(-100).sum()  # HF's evaluation loss is counted the same way
        self.log("val_loss", self.model(**batch, num_items_in_batch=items).loss)
        self.log("val_score", score_at(self.global_step, self.eval_every))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR)


class ScriptedBoring(BoringModel):
    """Lightning's ``BoringModel`` (a plain ``nn.Linear``) reporting the same scores."""

    def __init__(self, eval_every: int) -> None:
        super().__init__()
        self.eval_every = eval_every

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self.log("val_score", score_at(self.global_step, self.eval_every))
        super().validation_step(batch, batch_idx)


def lm_loaders(n_train: int = 16, n_eval: int = 4) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """The batches :func:`hf_trainer` trains and evaluates on, in its order."""
    return (
        DataLoader(lm_examples(n_train, seed=0), batch_size=2, shuffle=False),  # type: ignore[arg-type]
        DataLoader(lm_examples(n_eval, seed=1), batch_size=4, shuffle=False),  # type: ignore[arg-type]
    )


class UploadMonitor(TrainerCallback):  # type: ignore[misc]
    """The reference document's company callback: an HF ``on_log`` that uploads the logs.

    Unmodified HF code, as a LLaMA-Factory user writes it: one record per log (the keys
    rounded as they are shown), posted to ``upload_url`` with a bearer token.
    """

    def __init__(self, upload_url: str, api_key: str | None = None, project_name: str = "acme"):
        self.upload_url = upload_url
        self.api_key = api_key
        self.project_name = project_name

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {
            "idempotency_key": f"{self.project_name}-{state.global_step}-{len(state.log_history)}",
            "step": state.global_step,
            "epoch": round(float(state.epoch), 4),
            "logs": {k: float(f"{v:.4g}") for k, v in logs.items() if isinstance(v, float)},
            "output_dir": args.output_dir,
        }
        request = urllib.request.Request(
            self.upload_url,
            data=json.dumps({"records": [record]}).encode("utf-8"),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.api_key}",
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


class StopOnRank(TrainerCallback):  # type: ignore[misc]
    """Asks training to stop at ``step`` on rank ``rank`` only (HF's ``should_training_stop``)."""

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step = step
        self.rank = rank

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.process_index == self.rank and state.global_step == self.step:
            control.should_training_stop = True


class NeedsTrainer(TrainerCallback):  # type: ignore[misc]
    """Reaches into the HF Trainer through kwargs HF does not document (and Lightning lacks)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        kwargs["trainer"].accelerator.print("hello")


class ReadsArgs(TrainerCallback):  # type: ignore[misc]
    """Reads a TrainingArguments field that Lightning has no counterpart for."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        print(args.hub_model_id)


class HookOrder(TrainerCallback):  # type: ignore[misc]
    """Records every HF hook with the step and epoch it saw; asks for a save at ``save_at``."""

    def __init__(self, save_at: int = 0) -> None:
        self.save_at = save_at
        self.seen: list[tuple[str, int, float]] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda args, state, control, **kwargs: self._record(name, state, control)
        return super().__getattribute__(name)

    def _record(self, hook: str, state: Any, control: Any) -> None:
        self.seen.append((hook, state.global_step, round(float(state.epoch or 0), 4)))
        if hook == "on_step_end" and state.global_step == self.save_at:
            control.should_save = True


class ReadsMissingMetric(TrainerCallback):  # type: ignore[misc]
    """Reads a metric the evaluation does not report: its own KeyError, as under HF."""

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any, **kwargs: Any) -> None:
        print(metrics["eval_accuracy"])
