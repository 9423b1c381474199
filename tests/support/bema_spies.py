"""Neutral spies for the BEMA suites: the trainable weights a run went through.

No framework is imported here: the spies read ``run.model`` only, so one spy
serves HF, Lightning and a hand-driven :class:`callbridge.Run`. Torch is imported
in the hooks, like the built-in callbacks do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

import callbridge
from callbridge import Run


def trainable(model: Any) -> dict[str, Any]:
    """A bit-exact copy of the model's trainable parameters, by name (CPU tensors)."""
    return {
        name: param.detach().to("cpu", copy=True)
        for name, param in model.named_parameters()
        if param.requires_grad
    }


@attrs.define
class WeightSpy(callbridge.Callback):
    """Copies the trainable weights of ``run.model`` when things happen to them.

    Args:
        trajectory: also copy them at train begin (step 0 or the resumed step) and
            after every optimizer step, into ``steps``.
        path: at train end, ``torch.save`` what was recorded to this file
            (``{rank}`` in it is replaced by the process's rank).
    """

    trajectory: bool = False
    path: str | None = None

    #: step -> weights after that step (and at train begin).
    steps: dict[int, dict[str, Any]] = attrs.field(factory=dict, init=False)
    #: (step, weights) at every on_evaluate_begin, in order.
    eval_begin: list[tuple[int, dict[str, Any]]] = attrs.field(factory=list, init=False)
    #: (step, weights, metrics) at every on_evaluate, in order.
    eval_end: list[tuple[int, dict[str, Any], dict[str, float]]] = attrs.field(
        factory=list, init=False
    )

    def weights(self, model: Any) -> dict[str, Any]:
        """Policy: the copy taken at each moment (the trainable parameters, by name)."""
        return trainable(model)

    def saves(self, run: Run) -> bool:
        """Policy: whether this process writes ``path`` at train end (every rank)."""
        return self.path is not None

    def on_train_begin(self, run: Run) -> None:
        if self.trajectory:
            self.steps[run.state.global_step] = self.weights(run.model)

    def on_step_end(self, run: Run) -> None:
        if self.trajectory:
            self.steps[run.state.global_step] = self.weights(run.model)

    def on_evaluate_begin(self, run: Run) -> None:
        self.eval_begin.append((run.state.global_step, self.weights(run.model)))

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self.eval_end.append((run.state.global_step, self.weights(run.model), dict(metrics)))

    def on_train_end(self, run: Run) -> None:
        if self.path is None or not self.saves(run):
            return
        import torch

        record = {
            "rank": run.state.rank,
            "steps": self.steps,
            "eval_begin": self.eval_begin,
            "eval_end": self.eval_end,
        }
        torch.save(record, Path(self.path.replace("{rank}", str(run.state.rank))))


def spied_config(out: Path, bema: dict[str, Any]) -> dict[str, Any]:
    """A strict config with ``bema`` between two :class:`WeightSpy`: one records the live
    trajectory before it (``before-{rank}.pt``), one the weights after it (``after-{rank}.pt``).
    """
    return {
        "strict": True,
        "custom_callbacks": [
            {
                "name": "support.bema_spies.WeightSpy",
                "args": {"trajectory": True, "path": str(out / "before-{rank}.pt")},
            },
            bema,
            {
                "name": "support.bema_spies.WeightSpy",
                "args": {"path": str(out / "after-{rank}.pt")},
            },
        ],
    }
