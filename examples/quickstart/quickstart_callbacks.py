"""``LossCurves``: the quickstart's own neutral callback, written once for both trainers.

With ``bema`` set to ``evaluate_with = "bema"``, the trainer's evaluation measures the
BEMA weights. To draw the live curve beside it on the same evaluation data, this
callback measures the live weights first: it is declared *before* ``bema`` in
``pyproject.toml``, and callbacks run in declaration order, so its
``on_evaluate_begin`` runs before ``bema`` swaps the weights in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import attrs

import callbridge
from callbridge.callbacks.early_stopping import find_metric


@attrs.define
class LossCurves(callbridge.Callback):
    """Record the training loss, and the live and the evaluated loss at every evaluation.

    Args:
        measure: ``measure(model) -> float``, the loss of ``model`` on the evaluation
            data; injected by the training script (``inject={"measure": ...}``), since
            only the script knows its data. None: only the evaluated loss is recorded.
        metric: the evaluation metric to record (``eval_loss`` also finds Lightning's
            ``val_loss``).
    """

    rank_zero_only: ClassVar[bool] = True

    measure: Callable[[Any], float] | None = attrs.field(default=None, repr=False)
    metric: str = "eval_loss"

    train: list[tuple[int, float]] = attrs.field(factory=list, init=False)
    live: list[tuple[int, float]] = attrs.field(factory=list, init=False)
    evaluated: list[tuple[int, float]] = attrs.field(factory=list, init=False)

    def on_log(self, run: callbridge.Run, logs: dict[str, float]) -> None:
        if "loss" in logs:
            self.train.append((run.state.global_step, float(logs["loss"])))

    def on_evaluate_begin(self, run: callbridge.Run) -> None:
        if self.measure is not None:
            self.live.append((run.state.global_step, float(self.measure(run.model))))

    def on_evaluate(self, run: callbridge.Run, metrics: dict[str, float]) -> None:
        value = find_metric(metrics, self.metric)
        if value is not None:
            self.evaluated.append((run.state.global_step, value))
