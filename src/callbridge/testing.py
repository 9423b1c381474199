"""Helpers for testing neutral callbacks without a framework.

:class:`Driver` plays a training run through the core's contract, the same one
the adapters feed, so a callback can be unit-tested in milliseconds, then run
unchanged under HF or Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._build import Built, build_entries, config_view
from ._contract import Contract
from ._dispatch import Dispatcher
from ._protocol import Control, ErrorSummary, Run, TrainState
from ._registry import use_registry
from ._session import deliver
from ._spec import OnError

__all__ = ["Driver", "DriverResult", "use_registry"]


def _default_loss(step: int) -> float:
    return 2.0 / math.sqrt(max(step, 1))


@attrs.define
class DriverResult:
    """What a driven run ended with."""

    run: Run
    errors: ErrorSummary
    logged: list[dict[str, float]]
    evaluated: list[dict[str, float]]


@attrs.define
class Driver:
    """A pure-Python training loop that reports to the core's contract, as adapters do.

    Its events are the contract's (``docs/events.md``), so a unit test written
    against it holds under every trainer. Per optimizer step: ``step_begin``,
    ``step_end`` (``global_step`` counts the step), ``log`` every
    ``logging_steps``, an evaluation (``evaluate_begin``, ``log`` of the metrics,
    ``evaluate``) every ``eval_steps``, ``save`` every ``save_steps``. At an
    epoch's end, ``epoch_end``, then the per-epoch evaluation and save. A
    ``should_stop`` request ends training after the current step's events;
    ``raise_at_step`` makes the loop fail there, firing ``on_exception`` before the
    error propagates.

    Args:
        callbacks: neutral callbacks, or ``Built`` entries from :func:`build_entries`.
        max_steps: optimizer steps to run (None: ``num_epochs`` whole epochs).
        steps_per_epoch: optimizer steps per epoch (when ``batches_per_epoch`` is not given).
        accumulation: micro-batches per optimizer step.
        batches_per_epoch: micro-batches per epoch (the last step of an epoch may be shorter).
        num_epochs: epochs to run when ``max_steps`` is None.
        logging_steps: log cadence (None: never).
        eval_steps: evaluation cadence (None: never).
        save_steps: checkpoint cadence (None: never).
        eval_per_epoch: evaluate at the end of every epoch.
        save_per_epoch: save at the end of every epoch.
        loss: the training loss at a step (1-based).
        eval_metrics: the evaluation metrics at a step.
        world_size: processes to simulate; ``rank`` is this one.
        on_error: the dispatcher's error policy.
        start_step: resume from this optimizer step.
        config: what ``run.config`` holds (:meth:`from_config` sets the resolved view).
    """

    callbacks: Sequence[Any]
    max_steps: int | None = 10
    steps_per_epoch: int = 5
    logging_steps: int | None = 1
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
    accumulation: int = 1
    batches_per_epoch: int | None = None
    num_epochs: int | None = None
    eval_per_epoch: bool = False
    save_per_epoch: bool = False

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

    def _batches(self) -> int:
        return self.batches_per_epoch or self.steps_per_epoch * self.accumulation

    def _epoch_after(self, epoch: int, step_in_epoch: int) -> float:
        """HF's formula: ``epoch + batches_done / batches_per_epoch`` after a step."""
        batches = self._batches()
        return epoch + min(step_in_epoch * self.accumulation, batches) / batches

    def _session(self) -> tuple[Dispatcher, Contract, Callable[[], Control]]:
        dispatch = Dispatcher(self._pairs(), on_error=self.on_error, max_failures=self.max_failures)
        run = Run(
            "driver",
            TrainState(rank=self.rank, world_size=self.world_size, is_main_process=self.rank == 0),
            Control(),
            model=None,
            output_dir=self.output_dir,
            config=self.config,
            errors=dispatch.errors,
        )
        contract = Contract(run)
        requests = Control()

        def flush() -> Control:
            events, contract.events = contract.events, []
            # A copy: the next flush reuses the object, and a step_end request must outlive
            # the log that follows it (HF honours a save asked for in on_step_end).
            return attrs.evolve(deliver(contract, dispatch, events, requests))

        return dispatch, contract, flush

    def evaluate(self) -> DriverResult:
        """A standalone evaluation (``trainer.evaluate()``, Lightning's ``validate()``)."""
        dispatch, contract, flush = self._session()
        run = contract.run
        run.state.global_step = self.start_step
        metrics = self.eval_metrics(self.start_step)
        try:
            contract.evaluate_begin()
            flush()
            contract.log(dict(metrics))
            flush()
            contract.evaluate(dict(metrics))
            flush()
        except Exception as exc:
            contract.exception(exc)
            flush()
            raise
        return DriverResult(run, dispatch.end(), [], [metrics])

    def run(self) -> DriverResult:
        """Play the run; exceptions from ``raise_at_step`` or the ``raise`` policy propagate."""
        dispatch, contract, flush = self._session()
        run = contract.run
        steps_per_epoch = math.ceil(self._batches() / self.accumulation)
        if self.max_steps is None:
            max_steps = (self.num_epochs or 1) * steps_per_epoch
            num_epochs = self.num_epochs or 1
        else:
            max_steps = self.max_steps
            num_epochs = math.ceil(max_steps / steps_per_epoch)
        start = self.start_step
        first_epoch, done_in_epoch = divmod(start, steps_per_epoch)
        logged: list[dict[str, float]] = []
        evaluated: list[dict[str, float]] = []

        def evaluation(step: int, *, epoch_evaluation: bool = False) -> None:
            metrics = self.eval_metrics(step)
            evaluated.append(metrics)
            contract.evaluate_begin(epoch_evaluation=epoch_evaluation)
            flush()
            contract.log(dict(metrics))
            flush()
            contract.evaluate(dict(metrics))
            flush()

        try:
            contract.train_begin(
                global_step=start,
                epoch=self._epoch_after(first_epoch, done_in_epoch)
                if done_in_epoch
                else first_epoch,
                max_steps=max_steps,
                num_epochs=num_epochs,
                rank=self.rank,
                world_size=self.world_size,
                is_main_process=self.rank == 0,
            )
            flush()
            stop = contract.stop_requested
            for epoch in range(first_epoch, num_epochs):
                if stop or start >= max_steps:
                    break
                if epoch != first_epoch or not done_in_epoch:
                    # A mid-epoch resume gets its epoch_begin from the contract.
                    contract.epoch_begin()
                    flush()
                last = min((epoch + 1) * steps_per_epoch, max_steps)
                while run.state.global_step < last:
                    step = run.state.global_step + 1
                    contract.step_begin()
                    flush()
                    if step == self.raise_at_step:
                        raise RuntimeError(f"training failed at step {step}")
                    contract.step_end(
                        step, self._epoch_after(epoch, step - epoch * steps_per_epoch)
                    )
                    if step - epoch * steps_per_epoch == steps_per_epoch:
                        contract.epoch_last_step()
                    asked = flush()
                    if asked.should_log or (self.logging_steps and step % self.logging_steps == 0):
                        logs = {"loss": self.loss(step), "epoch": run.state.epoch}
                        logged.append(logs)
                        contract.log(logs)
                        flush()
                    if asked.should_evaluate or (self.eval_steps and step % self.eval_steps == 0):
                        evaluation(step)
                    if asked.should_save or (self.save_steps and step % self.save_steps == 0):
                        contract.save()
                        flush()
                    stop = contract.stop_requested
                    if stop:
                        break
                contract.epoch_end()
                flush()
                if self.eval_per_epoch:
                    evaluation(run.state.global_step, epoch_evaluation=True)
                if self.save_per_epoch:
                    contract.save()
                    flush()
                stop = contract.stop_requested
            contract.train_end()
            flush()
        except Exception as exc:
            contract.exception(exc)
            flush()
            raise
        return DriverResult(run, dispatch.end(), logged, evaluated)
