"""``guard``: stop training on a NaN/Inf loss or gradient norm, or on a loss spike."""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from typing import Any, ClassVar

import attrs

from .._protocol import Callback, Run

logger = logging.getLogger("callbridge")


@attrs.define
class GuardCallback(Callback):
    """Stop training at the step whose logged loss or gradient norm is not finite, or spikes.

    The guard reads what the trainer logs (``on_log``), so it sees a step when the
    trainer logs it: log every step (HF ``logging_steps=1``, Lightning
    ``log_every_n_steps=1``) to stop at the very step that went wrong. Under HF,
    ``logging_nan_inf_filter`` (on by default) replaces a NaN/Inf loss in the logged
    average with the mean of the others; the gradient norm (``grad_norm``, logged when
    ``max_grad_norm`` clips) still shows it, or set ``logging_nan_inf_filter=False``.

    It runs on every rank; a stop asked on any rank is a stop on all (the adapters
    reduce ``should_stop`` across ranks), so every rank stops at the same step.

    Args:
        watch: logged keys whose value must be finite (absent keys are skipped).
        spike_factor: also stop when ``loss_key`` exceeds this many times the running
            median of its last ``window`` values (None: no spike check).
        loss_key: the loss the spike check watches.
        warmup: logged losses to collect before the spike check starts.
        window: how many recent losses the running median covers.
    """

    mutable_args: ClassVar[frozenset[str]] = frozenset({"spike_factor", "watch"})

    watch: list[str] = attrs.Factory(lambda: ["loss", "train_loss", "grad_norm"])
    spike_factor: float | None = attrs.field(default=None)
    loss_key: str = "loss"
    warmup: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    window: int = attrs.field(default=50, validator=attrs.validators.ge(1))

    history: deque[float] = attrs.field(init=False)
    stopped_at_step: int | None = attrs.field(default=None, init=False)
    reason: str | None = attrs.field(default=None, init=False)

    @spike_factor.validator
    def _check_factor(self, attribute: Any, value: float | None) -> None:
        if value is not None and not value > 1.0:
            raise ValueError(f"spike_factor must be above 1.0 (got {value!r})")

    @history.default
    def _history(self) -> deque[float]:
        return deque(maxlen=self.window)

    def problem(self, logs: dict[str, float]) -> str | None:
        """Policy: why these logs must stop training, or None when they are fine."""
        for key in self.watch:
            value = logs.get(key)
            if value is not None and not math.isfinite(value):
                return f"{key} is {value}"
        if self.spike_factor is not None:
            loss = logs.get(self.loss_key)
            if loss is not None and len(self.history) >= self.warmup:
                median = statistics.median(self.history)
                if median > 0 and loss > self.spike_factor * median:
                    return (
                        f"{self.loss_key} {loss:.6g} is {loss / median:.3g}x the running median "
                        f"{median:.6g} of the last {len(self.history)} (spike_factor "
                        f"{self.spike_factor:g})"
                    )
        return None

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        if self.stopped_at_step is not None:
            return
        reason = self.problem(logs)
        if reason is None:
            loss = logs.get(self.loss_key)
            if loss is not None and "train_runtime" not in logs:  # HF's closing summary
                self.history.append(float(loss))
            return
        run.control.should_stop = True
        self.stopped_at_step = run.state.global_step
        self.reason = reason
        logger.error(
            "callbridge guard: %s at step %d (rank %d); stopping training. The last checkpoint "
            "before step %d is the last good one.",
            reason,
            run.state.global_step,
            run.state.rank,
            run.state.global_step,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque((float(v) for v in state.get("history", [])), maxlen=self.window)
