"""``early_stopping``: stop when an evaluation metric stops improving."""

from __future__ import annotations

import logging
import operator
from typing import Any, ClassVar, Literal

import attrs

from .._protocol import Callback, Run

logger = logging.getLogger("callbridge")


def find_metric(metrics: dict[str, float], name: str) -> float | None:
    """``name`` among ``metrics``, with or without an ``eval_``/``val_`` prefix.

    HF prefixes evaluation metrics with ``eval_``; a LightningModule names its own
    (``val_loss`` by convention): ``loss``, ``eval_loss`` and ``val_loss`` all find either.
    """
    bare = name.removeprefix("eval_").removeprefix("val_")
    for key in (name, f"eval_{bare}", f"val_{bare}", bare):
        if key in metrics:
            return float(metrics[key])
    return None


@attrs.define
class EarlyStoppingCallback(Callback):
    """Stop training after ``early_stopping_patience`` evaluations without improvement.

    The argument names are those of HF's ``EarlyStoppingCallback`` and the
    LLaMA-Factory reference; unlike HF's, it needs no ``load_best_model_at_end``
    and works under every adapter. An evaluation improves on the best so far when
    it is better by more than ``early_stopping_threshold``.

    Args:
        early_stopping_patience: evaluations without improvement before stopping.
        early_stopping_threshold: the least change that counts as an improvement.
        metric: the metric to watch; ``loss`` also matches ``eval_loss`` and ``val_loss``.
        mode: ``min`` if lower is better, ``max`` if higher is better.
    """

    mutable_args: ClassVar[frozenset[str]] = frozenset(
        {"early_stopping_patience", "early_stopping_threshold"}
    )

    early_stopping_patience: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    early_stopping_threshold: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    metric: str = "eval_loss"
    mode: Literal["min", "max"] = attrs.field(
        default="min", validator=attrs.validators.in_(("min", "max"))
    )

    best: float | None = attrs.field(default=None, init=False)
    wait: int = attrs.field(default=0, init=False)
    stopped_at_step: int | None = attrs.field(default=None, init=False)
    _warned: bool = attrs.field(default=False, init=False, repr=False)

    def find_metric(self, metrics: dict[str, float]) -> float | None:
        """The watched value among ``metrics`` (with or without an ``eval_``/``val_`` prefix)."""
        return find_metric(metrics, self.metric)

    def improved(self, value: float) -> bool:
        """Policy: whether ``value`` beats the best by more than the threshold."""
        if self.best is None:
            return True
        better = operator.lt if self.mode == "min" else operator.gt
        return better(value, self.best) and abs(value - self.best) > self.early_stopping_threshold

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        value = self.find_metric(metrics)
        if value is None:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "callbridge early_stopping: metric %r not among the evaluation metrics (%s); "
                    "set args.metric to one of them",
                    self.metric,
                    ", ".join(sorted(metrics)),
                )
            return
        if self.improved(value):
            self.best = value
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.early_stopping_patience:
            run.control.should_stop = True
            self.stopped_at_step = run.state.global_step
            logger.info(
                "callbridge early_stopping: %s did not improve on %.6g for %d evaluations; "
                "stopping at step %d",
                self.metric,
                self.best,
                self.wait,
                run.state.global_step,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "stopped_at_step": self.stopped_at_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.wait = int(state.get("wait", 0))
        self.stopped_at_step = state.get("stopped_at_step")
