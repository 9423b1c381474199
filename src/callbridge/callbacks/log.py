"""``log``: what the trainer logs and evaluates, to Python logging and optionally JSON lines."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

import attrs

from .._protocol import Callback, Run
from ._paths import in_output_dir

Level = Literal["debug", "info", "warning"]


@attrs.define
class LogCallback(Callback):
    """Log training and evaluation metrics on the main process.

    Each line and JSON object carries the run's tags (``run.tags``, e.g. the stage of
    a ``training_stage`` callback): ``[hf stage=sft] step ...`` and ``"tags": {...}``.

    Args:
        level: the logging level of metric lines.
        jsonl: also append one JSON object per event to this file; a relative
            path is taken inside the run's output directory.
        logger_name: the Python logger to write to.
    """

    rank_zero_only: ClassVar[bool] = True

    level: Level = "info"
    jsonl: Path | None = None
    logger_name: str = "callbridge.log"

    _file: IO[str] | None = attrs.field(default=None, init=False, repr=False)
    # Where the run's lines went: an event after train end (LLaMA-Factory and HF scripts
    # evaluate and predict after train() returned) is appended there too.
    _path: Path | None = attrs.field(default=None, init=False, repr=False)
    _logger: logging.Logger = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._logger = logging.getLogger(self.logger_name)

    def jsonl_path(self, run: Run) -> Path | None:
        """Where the JSON lines go for this run, if anywhere."""
        if self.jsonl is None:
            return None
        return in_output_dir(run, self.jsonl) or self.jsonl

    def _emit(self, run: Run, event: str, values: dict[str, Any]) -> None:
        state = run.state
        numbers = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        where = " ".join([run.framework, *(f"{k}={v}" for k, v in run.tags.items())])
        self._logger.log(
            logging.getLevelName(self.level.upper()),
            "[%s] step %d/%s epoch %.2f %s %s",
            where,
            state.global_step,
            state.max_steps if state.max_steps is not None else "?",
            state.epoch,
            event,
            numbers,
        )
        late = self._path if self._file is None else None
        if late is not None:
            self._file = late.open("a", encoding="utf-8")
        if self._file is not None:
            record = {
                "event": event,
                "step": state.global_step,
                "epoch": state.epoch,
                "time": time.time(),
            }
            if run.tags:
                record["tags"] = dict(run.tags)
            record.update(values)
            self._file.write(json.dumps(record, default=str) + "\n")
            self._file.flush()  # a crash keeps every line written so far
        if late is not None:
            self._close()

    def on_train_begin(self, run: Run) -> None:
        path = self.jsonl_path(run)
        if path is not None and self._file is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        self._path = path
        self._emit(run, "train_begin", {})

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        self._emit(run, "log", dict(logs))

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self._emit(run, "evaluate", dict(metrics))

    def on_train_end(self, run: Run) -> None:
        self._emit(run, "train_end", {})
        self._close()

    def on_exception(self, run: Run, exc: BaseException) -> None:
        self._emit(run, "exception", {"error": f"{type(exc).__name__}: {exc}"})
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
