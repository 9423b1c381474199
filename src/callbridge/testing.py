"""Helpers for testing neutral callbacks without a framework.

:class:`Driver` plays a training run's events in the order the adapters
deliver them, so a callback can be unit-tested in milliseconds, then run
unchanged under HF or Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._build import Built, build_entries, config_view
from ._dispatch import Dispatcher
from ._protocol import Control, ErrorSummary, Run, TrainState
from ._registry import use_registry
from ._spec import OnError

__all__ = ["Driver", "DriverResult", "use_registry"]


def _default_loss(step: int) -> float:
    return 2.0 / math.sqrt(step)


@attrs.define
class DriverResult:
    """What a driven run ended with."""

    run: Run
    errors: ErrorSummary
    logged: list[dict[str, float]]
    evaluated: list[dict[str, float]]


@attrs.define
class Driver:
    """A pure-Python training loop that fires every neutral hook.

    Order per optimizer step (as under HF): ``step_begin``, ``step_end`` (with
    ``global_step`` already counting the step), then ``log`` every
    ``logging_steps``, ``evaluate_begin``/``evaluate`` every ``eval_steps``,
    ``save`` every ``save_steps``; a ``should_stop`` request ends training after
    that step. ``raise_at_step`` makes the loop fail there, firing ``on_exception``
    before the error propagates.

    Args:
        callbacks: neutral callbacks, or ``Built`` entries from :func:`build_entries`.
        max_steps: optimizer steps to run.
        steps_per_epoch: optimizer steps per epoch.
        logging_steps: log cadence.
        eval_steps: evaluation cadence (None: never).
        save_steps: checkpoint cadence (None: never).
        loss: the training loss at a step (1-based).
        eval_metrics: the evaluation metrics at a step.
        world_size: processes to simulate; ``rank`` is this one.
        on_error: the dispatcher's error policy.
        config: what ``run.config`` holds (:meth:`from_config` sets the resolved view).
    """

    callbacks: Sequence[Any]
    max_steps: int = 10
    steps_per_epoch: int = 5
    logging_steps: int = 1
    eval_steps: int | None = None
    save_steps: int | None = None
    loss: Callable[[int], float] = _default_loss
    eval_metrics: Callable[[int], dict[str, float]] = lambda step: {
        "eval_loss": _default_loss(step)
    }
    rank: int = 0
    world_size: int = 1
    output_dir: Path | None = None
    on_error: OnError = "log"
    max_failures: int = 3
    raise_at_step: int | None = None
    start_step: int = 0
    config: dict[str, Any] | None = None

    @classmethod
    def from_config(
        cls, source: Any, *, inject: dict[str, Any] | None = None, **kwargs: Any
    ) -> Driver:
        """A driver over the callbacks a config builds, with the config's error policy."""
        from ._sources import load

        config = load(source)
        entries = build_entries(config, inject=inject)
        kwargs.setdefault("on_error", config.callback_errors)
        kwargs.setdefault("max_failures", config.callback_max_failures)
        kwargs.setdefault("config", config_view(config, entries))
        return cls(entries, **kwargs)

    def _pairs(self) -> list[tuple[str, Any]]:
        pairs = []
        for i, item in enumerate(self.callbacks):
            if isinstance(item, Built):
                pairs.append((item.label, item.callback))
            else:
                pairs.append((f"{type(item).__name__} ({i})", item))
        return pairs

    def run(self) -> DriverResult:
        """Play the run; exceptions from ``raise_at_step`` or the ``raise`` policy propagate."""
        dispatch = Dispatcher(self._pairs(), on_error=self.on_error, max_failures=self.max_failures)
        num_epochs = math.ceil(self.max_steps / self.steps_per_epoch)
        state = TrainState(
            global_step=self.start_step,
            max_steps=self.max_steps,
            epoch=self.start_step / self.steps_per_epoch,
            num_epochs=num_epochs,
            is_main_process=self.rank == 0,
            rank=self.rank,
            world_size=self.world_size,
        )
        run = Run(
            "driver",
            state,
            Control(),
            model=None,
            output_dir=self.output_dir,
            config=self.config,
            errors=dispatch.errors,
        )
        logged: list[dict[str, float]] = []
        evaluated: list[dict[str, float]] = []
        try:
            dispatch.call("on_train_begin", run)
            stop = False
            first_epoch = self.start_step // self.steps_per_epoch
            for epoch in range(first_epoch, num_epochs):
                dispatch.call("on_epoch_begin", run)
                last = min((epoch + 1) * self.steps_per_epoch, self.max_steps)
                while state.global_step < last:
                    dispatch.call("on_step_begin", run)
                    step = state.global_step + 1
                    if step == self.raise_at_step:
                        raise RuntimeError(f"training failed at step {step}")
                    state.global_step = step
                    state.epoch = step / self.steps_per_epoch
                    dispatch.call("on_step_end", run)
                    control = run.control
                    if control.should_log or step % self.logging_steps == 0:
                        logs = {"loss": self.loss(step), "epoch": state.epoch}
                        logged.append(logs)
                        dispatch.call("on_log", run, logs)
                    if control.should_evaluate or (self.eval_steps and step % self.eval_steps == 0):
                        dispatch.call("on_evaluate_begin", run)
                        metrics = self.eval_metrics(step)
                        evaluated.append(metrics)
                        dispatch.call("on_evaluate", run, metrics)
                    if control.should_save or (self.save_steps and step % self.save_steps == 0):
                        dispatch.call("on_save", run)
                    stop = control.should_stop
                    run.control = Control(should_stop=stop)
                    if stop:
                        break
                dispatch.call("on_epoch_end", run)
                if stop:
                    break
            dispatch.call("on_train_end", run)
        except Exception as exc:
            dispatch.call("on_exception", run, exc)
            raise
        return DriverResult(run, dispatch.end(), logged, evaluated)
