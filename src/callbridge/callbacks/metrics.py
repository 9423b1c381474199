"""``metrics``: speed and memory figures added to what the trainer logs."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import attrs

from .._protocol import Callback, Run

_MB = 1024.0 * 1024.0


def _positive_or_none(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be >= 1 or None (got {value})")


def _non_empty_or_none(instance: Any, attribute: Any, value: str | None) -> None:
    if value is not None and not value.strip():
        raise ValueError(f"{attribute.name} must be a stage name such as 'sft' (got {value!r})")


@attrs.define
class MetricsCallback(Callback):
    """Add measured figures to each ``logs`` dict, for the callbacks and loggers that follow.

    Keys added (never overwriting a key the trainer logged): ``step_time`` (s, mean
    duration of the optimizer steps since the last log), ``steps_per_second`` (optimizer
    steps per wall-clock second since the last log), ``samples_per_second`` and
    ``tokens_per_second`` where the amount per step is known, ``memory_rss_mb`` (this
    process's resident memory) and, where CUDA is in use, ``gpu_memory_allocated_mb`` and
    ``gpu_memory_peak_mb`` (this process's device). Speed figures cover the optimizer
    steps since the previous log, evaluation time excluded, and appear only in logs of
    training (not in the metrics an evaluation logs).

    Place it before the callbacks that should see the figures. Under HF the ``logs``
    dict is the one HF hands on to the callbacks later in its list; ``callbridge_hf.attach``
    puts the configured callbacks ahead of the ``report_to`` integrations (TensorBoard,
    W&B...), so they log the figures too (with ``Trainer(callbacks=...)`` HF keeps the
    integrations first). Under Lightning the neutral ``on_log`` hooks run before the
    trainer's loggers write, and what they add to ``logs`` is written with the rest
    (TensorBoard, CSV, W&B loggers...).

    Args:
        batch_size: samples per optimizer step across all processes. Under HF the
            default is ``per_device_train_batch_size * world_size *
            gradient_accumulation_steps``; elsewhere without it there is no
            ``samples_per_second``.
        tokens_per_step: tokens per optimizer step across all processes. Under HF with
            ``include_num_input_tokens_seen`` the trainer's own count is used instead.
        memory: add the memory figures.
        stage: the training stage the figures belong to (``sft``, ``dpo``, ``pt``...), as
            LLaMA-Factory's configurations give it: it becomes the run's ``stage`` tag at
            train begin unless a ``training_stage`` callback before this one set it, so
            the records of ``log``, ``monitor`` and ``reporter`` carry it.
    """

    batch_size: int | None = attrs.field(default=None, validator=_positive_or_none)
    tokens_per_step: int | None = attrs.field(default=None, validator=_positive_or_none)
    memory: bool = True
    stage: str | None = attrs.field(default=None, validator=_non_empty_or_none)

    _window_start: float = attrs.field(default=0.0, init=False, repr=False)
    _window_step: int = attrs.field(default=0, init=False, repr=False)
    _window_tokens: float | None = attrs.field(default=None, init=False, repr=False)
    _busy: float = attrs.field(default=0.0, init=False, repr=False)
    _steps: int = attrs.field(default=0, init=False, repr=False)
    _step_start: float | None = attrs.field(default=None, init=False, repr=False)
    _eval_start: float | None = attrs.field(default=None, init=False, repr=False)
    _paused: float = attrs.field(default=0.0, init=False, repr=False)

    def _open_window(self, run: Run) -> None:
        self._window_start = time.perf_counter()
        self._window_step = run.state.global_step
        self._window_tokens = _tokens_seen(run)
        self._busy = 0.0
        self._steps = 0
        self._paused = 0.0

    def on_train_begin(self, run: Run) -> None:
        if self.stage is not None:
            run.tags.setdefault("stage", self.stage)
        self._step_start = self._eval_start = None
        self._open_window(run)

    def on_step_begin(self, run: Run) -> None:
        self._step_start = time.perf_counter()

    def on_step_end(self, run: Run) -> None:
        if self._step_start is not None:
            self._busy += time.perf_counter() - self._step_start
            self._steps += 1
            self._step_start = None

    def on_evaluate_begin(self, run: Run) -> None:
        self._eval_start = time.perf_counter()

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        # Evaluation time is no training time: it leaves the speed figures.
        if self._eval_start is not None:
            self._paused += time.perf_counter() - self._eval_start
            self._eval_start = None

    def samples_per_step(self, run: Run) -> int | None:
        """Samples per optimizer step: the argument, else what the trainer's arguments say."""
        if self.batch_size is not None:
            return self.batch_size
        args = run.native.get("args") if run.framework == "hf" else None
        try:
            return int(
                args.per_device_train_batch_size  # type: ignore[union-attr]
                * args.world_size  # type: ignore[union-attr]
                * args.gradient_accumulation_steps  # type: ignore[union-attr]
            )
        except (AttributeError, TypeError):
            return None

    def measure(self, run: Run) -> dict[str, float]:
        """The figures for one log, and a new measuring window."""
        out: dict[str, float] = {}
        now = time.perf_counter()
        steps = run.state.global_step - self._window_step
        elapsed = now - self._window_start - self._paused
        # A log during an evaluation (its metrics) gets no speed figures: they would
        # count evaluation time, and the next training log would lose its steps.
        if steps > 0 and elapsed > 0 and self._eval_start is None:
            if self._steps:
                out["step_time"] = self._busy / self._steps
            out["steps_per_second"] = steps / elapsed
            samples = self.samples_per_step(run)
            if samples is not None:
                out["samples_per_second"] = steps * samples / elapsed
            seen, before = _tokens_seen(run), self._window_tokens
            if seen is not None and before is not None and seen > before:
                out["tokens_per_second"] = (seen - before) / elapsed
            elif self.tokens_per_step is not None:
                out["tokens_per_second"] = steps * self.tokens_per_step / elapsed
            self._open_window(run)
        if self.memory:
            out.update(memory_figures())
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        for key, value in self.measure(run).items():
            logs.setdefault(key, value)


def _tokens_seen(run: Run) -> float | None:
    """HF's own token count, where the trainer keeps one (``include_num_input_tokens_seen``)."""
    state = run.native.get("state") if run.framework == "hf" else None
    seen = getattr(state, "num_input_tokens_seen", None)
    return float(seen) if isinstance(seen, (int, float)) else None


def memory_figures() -> dict[str, float]:
    """Resident memory of this process, and CUDA memory where torch already uses CUDA."""
    out: dict[str, float] = {}
    rss = _rss_bytes()
    if rss is not None:
        out["memory_rss_mb"] = rss / _MB
    # Only where torch is already imported and CUDA initialised: a CPU run must not
    # initialise CUDA (seconds, and memory on the device) just to report zero.
    torch: Any = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_available() and cuda.is_initialized():
        out["gpu_memory_allocated_mb"] = cuda.memory_allocated() / _MB
        out["gpu_memory_peak_mb"] = cuda.max_memory_allocated() / _MB
    return out


def _rss_bytes() -> float | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            resident_pages = int(fh.read().split()[1])
        return float(resident_pages * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource  # Unix only
    except ImportError:
        return None
    # No /proc (macOS): the peak resident size; kilobytes on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)
