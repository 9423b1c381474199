"""``reporter``: a JSON summary of the run in its output directory."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs

from .._protocol import Callback, Run
from .._secrets import mask_text
from .._spec import mask
from ._paths import in_output_dir
from .early_stopping import find_metric
from .training_stage import STAGE_FILE

logger = logging.getLogger("callbridge")


@attrs.define
class ReporterCallback(Callback):
    """Write ``output_dir/callbridge_report.json`` when training ends or fails (main process).

    The report holds: ``status`` (``completed``, ``stopped`` when a callback asked to
    stop, ``failed``), ``framework``, ``stage`` and ``tags`` (the run's tags, set by a
    ``training_stage`` callback; else the stage from its ``stage.json``, if any),
    ``global_step``, ``max_steps``, ``epoch``, ``world_size``, ``wall_time_s``,
    ``final_metrics`` (the last value of every number logged or evaluated), ``best``
    (the best value of ``metric`` and its step), ``evaluations``, ``callback_errors``
    (the run's callback errors up to the report: counts per callback and hook, and
    the callbacks disabled), ``config`` (the resolved configuration, secrets masked)
    ``operations`` (the audit trail of ``callbridge ctl`` commands, when the run has
    one) and, after a failure, ``error``. Values under secret-looking keys are masked, and in
    every string (the error's text included) the values of secret-looking environment
    variables and every URL's userinfo and query.

    Args:
        filename: the report's file name; a relative path is taken in the output directory.
        metric: the metric whose best value is reported; ``loss`` also matches
            ``eval_loss`` and ``val_loss``.
        mode: ``min`` if lower is better, ``max`` if higher is better.
    """

    rank_zero_only: ClassVar[bool] = True

    filename: str = "callbridge_report.json"
    metric: str = "eval_loss"
    mode: Literal["min", "max"] = attrs.field(
        default="min", validator=attrs.validators.in_(("min", "max"))
    )

    final: dict[str, float] = attrs.field(factory=dict, init=False, repr=False)
    best: float | None = attrs.field(default=None, init=False)
    best_step: int | None = attrs.field(default=None, init=False)
    evaluations: int = attrs.field(default=0, init=False)
    _started: float = attrs.field(default=0.0, init=False, repr=False)
    _start_step: int = attrs.field(default=0, init=False, repr=False)
    # (status, error, wall time) once written at train end: an evaluation after it
    # (LLaMA-Factory's, a script's trainer.evaluate()) rewrites the report with it.
    _ended: tuple[str, str | None, float] | None = attrs.field(default=None, init=False, repr=False)

    def path(self, run: Run) -> Path | None:
        """Where the report goes for this run (None: no output directory to write in)."""
        return in_output_dir(run, self.filename)

    def on_train_begin(self, run: Run) -> None:
        self.final = {}
        self.evaluations = 0
        self._started = time.perf_counter()
        self._start_step = run.state.global_step
        self._ended = None

    def _take(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.final[key] = float(value)

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        self._take(logs)

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self.evaluations += 1
        self._take(metrics)
        value = self.find_metric(metrics)
        if value is not None and math.isfinite(value) and self.improved(value):
            self.best = value
            self.best_step = run.state.global_step
        if self._ended is not None:
            self._write(run, self._ended[0], self._ended[1])

    def find_metric(self, metrics: dict[str, float]) -> float | None:
        """The watched value among ``metrics`` (with or without an ``eval_``/``val_`` prefix)."""
        return find_metric(metrics, self.metric)

    def improved(self, value: float) -> bool:
        """Policy: whether ``value`` beats the best so far."""
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def report(self, run: Run, status: str, error: str | None = None) -> dict[str, Any]:
        """The report as a dict (what is written)."""
        state = run.state
        out: dict[str, Any] = {
            "status": status,
            "framework": run.framework,
            "stage": run.tags.get("stage") or _stage(run),
            "tags": dict(run.tags),
            "global_step": state.global_step,
            "steps_this_run": state.global_step - self._start_step,
            "max_steps": state.max_steps,
            "epoch": state.epoch,
            "world_size": state.world_size,
            "wall_time_s": self._wall_time(),
            "final_metrics": {k: v for k, v in self.final.items() if math.isfinite(v)},
            "best": {
                "metric": self.metric,
                "mode": self.mode,
                "value": self.best,
                "step": self.best_step,
            },
            "evaluations": self.evaluations,
            "callback_errors": None if run.errors is None else run.errors.as_dict(),
            "config": run.config,
        }
        operations = _operations(run)
        if operations:
            out["operations"] = operations
        if error is not None:
            out["error"] = error
        masked: dict[str, Any] = mask(out)
        return masked

    def _wall_time(self) -> float | None:
        if self._ended is not None:
            return self._ended[2]
        return time.perf_counter() - self._started if self._started else None

    def _write(self, run: Run, status: str, error: str | None = None) -> None:
        path = self.path(run)
        if path is None:
            logger.warning(
                "callbridge reporter: the run has no output directory; set args.filename to "
                "an absolute path to get a report"
            )
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        text = json.dumps(self.report(run, status, error), indent=2, default=str)
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)  # never a half-written report

    def on_train_end(self, run: Run) -> None:
        state = run.state
        # HF raises the stop flag itself when max_steps is reached: that is no early stop.
        early = state.max_steps is None or state.global_step < state.max_steps
        status = "stopped" if run.control.should_stop and early else "completed"
        self._ended = (status, None, self._wall_time() or 0.0)
        self._write(run, status)

    def on_exception(self, run: Run, exc: BaseException) -> None:
        # An exception's text may quote what it failed on: a key from the environment, a URL
        # with its token. Masked by value before it reaches the file.
        error = mask_text(f"{type(exc).__name__}: {exc}")
        self._ended = ("failed", error, self._wall_time() or 0.0)
        self._write(run, "failed", error)


def _operations(run: Run) -> list[Any]:
    """The ``control`` callback's audit trail in the output directory (empty when none)."""
    if run.output_dir is None:
        return []
    from .._control import AUDIT, folder, read_lines

    return read_lines(folder(run.output_dir) / AUDIT)


def _stage(run: Run) -> str | None:
    if run.output_dir is None:
        return None
    try:
        data = json.loads((Path(run.output_dir) / STAGE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stage = data.get("stage") if isinstance(data, dict) else None
    return stage if isinstance(stage, str) else None
