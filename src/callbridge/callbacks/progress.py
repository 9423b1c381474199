"""``progress``: training progress on the terminal (rich) or as plain lines (logs, CI)."""

from __future__ import annotations

import importlib
import math
import sys
import time
from typing import Any, ClassVar, Literal

import attrs

from .._protocol import Callback, Run

Mode = Literal["auto", "rich", "plain"]


def _not_negative(instance: Any, attribute: Any, value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0 (got {value})")


@attrs.define
class ProgressCallback(Callback):
    """Show steps, ETA and the latest metrics, on the main process only.

    With ``mode="auto"``, a rich progress bar when stdout is a terminal and ``rich``
    is installed, plain lines otherwise (``[progress] step 4/8 (50%) epoch 0.50
    elapsed 0:00:01 eta 0:00:01 loss=1.23``), at each log, every ``every_steps``
    steps if set, and a last line when training ends. Pair it with
    ``custom_callbacks_only = true`` to replace the trainer's own progress display.

    Args:
        mode: ``auto``, ``rich`` (falls back to plain lines without ``rich``) or ``plain``.
        every_steps: also print a plain line every this many steps (0: at logs only).
        max_metrics: the most metrics shown per line.
    """

    rank_zero_only: ClassVar[bool] = True

    mode: Mode = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "rich", "plain"))
    )
    every_steps: int = attrs.field(default=0, validator=_not_negative)
    max_metrics: int = attrs.field(default=6, validator=_not_negative)

    latest: dict[str, float] = attrs.field(factory=dict, init=False, repr=False)
    _started: float = attrs.field(default=0.0, init=False, repr=False)
    _start_step: int = attrs.field(default=0, init=False, repr=False)
    _bar: Any = attrs.field(default=None, init=False, repr=False)
    _task: Any = attrs.field(default=None, init=False, repr=False)

    def use_rich(self) -> bool:
        """Policy: whether to draw a rich bar (else plain lines)."""
        if self.mode == "plain" or (self.mode == "auto" and not sys.stdout.isatty()):
            return False
        return _rich_progress() is not None

    def on_train_begin(self, run: Run) -> None:
        self.latest = {}
        self._started = time.perf_counter()
        self._start_step = run.state.global_step
        if self.use_rich():
            rp = _rich_progress()
            self._bar = rp.Progress(
                rp.TextColumn("[bold]{task.description}"),
                rp.BarColumn(),
                rp.MofNCompleteColumn(),
                rp.TimeElapsedColumn(),
                rp.TimeRemainingColumn(),
                rp.TextColumn("{task.fields[metrics]}"),
            )
            self._bar.start()
            self._task = self._bar.add_task(
                "train", total=run.state.max_steps, completed=run.state.global_step, metrics=""
            )
        else:
            self._print(run, "begin")

    def on_step_end(self, run: Run) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=run.state.global_step)
        elif self.every_steps and run.state.global_step % self.every_steps == 0:
            self._print(run, "step")

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        self.latest.update(
            (k, float(v))
            for k, v in logs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"
        )
        if self._bar is not None:
            self._bar.update(self._task, metrics=self.metrics_text())
        else:
            self._print(run, "step")

    def on_train_end(self, run: Run) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=run.state.global_step)
            self._close()
        self._print(run, "done")

    def on_exception(self, run: Run, exc: BaseException) -> None:
        self._close()
        self._print(run, "failed")

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None

    def metrics_text(self) -> str:
        """The latest metrics, ``key=value`` separated by spaces."""
        items = list(self.latest.items())[-self.max_metrics :] if self.max_metrics else []
        return " ".join(f"{k}={v:.4g}" for k, v in items)

    def line(self, run: Run, event: str) -> str:
        """One plain progress line."""
        state = run.state
        # An exception before train begin (setup) finds no start time.
        elapsed = time.perf_counter() - self._started if self._started else 0.0
        done = state.global_step - self._start_step
        if event == "done":
            head = f"[progress] done: step {state.global_step} in {_clock(elapsed)}"
        elif event == "failed":
            head = f"[progress] failed at step {state.global_step} after {_clock(elapsed)}"
        else:
            total = state.max_steps
            if total:
                head = f"[progress] step {state.global_step}/{total} "
                head += f"({100.0 * state.global_step / total:.0f}%)"
            else:
                head = f"[progress] step {state.global_step}"
            head += f" epoch {state.epoch:.2f} elapsed {_clock(elapsed)}"
            if total and done > 0:
                head += f" eta {_clock(elapsed / done * max(total - state.global_step, 0))}"
        text = self.metrics_text()
        return f"{head} {text}" if text else head

    def _print(self, run: Run, event: str) -> None:
        print(self.line(run, event), flush=True)


def _rich_progress() -> Any:
    """``rich.progress``, or None where rich is not installed (it is optional)."""
    try:
        return importlib.import_module("rich.progress")
    except ImportError:
        return None


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
