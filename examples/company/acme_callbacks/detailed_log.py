"""``DetailedLogger``: one line per log and evaluation, with step, metrics and memory."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

import attrs

import callbridge
from callbridge.callbacks.metrics import memory_figures

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace(" ", "_")


@attrs.define
class DetailedLogger(callbridge.Callback):
    """Write a line per ``log`` and ``evaluate`` event to a file and to a logger.

    A line reads ``<time> <event> step=<n> epoch=<e> <metric>=<value> ...
    memory_rss_mb=<rss>``. Main process only.

    Args:
        log_level: the level of the logger lines (``acme.detailed``).
        log_file: the file lines are appended to; a relative path is taken inside the
            run's output directory (None: the logger only).
        include_memory_usage: add the process's resident memory (and CUDA memory where
            torch already uses CUDA).
    """

    rank_zero_only: ClassVar[bool] = True

    log_level: Literal["debug", "info", "warning"] = "info"
    log_file: Path | None = attrs.field(
        default=Path("detailed_training.log"), converter=attrs.converters.optional(Path)
    )
    include_memory_usage: bool = True
    logger_name: str = "acme.detailed"

    lines: int = attrs.field(default=0, init=False)
    _fh: IO[str] | None = attrs.field(default=None, init=False, repr=False)

    def path(self, run: callbridge.Run) -> Path | None:
        """Where this run's lines go."""
        if self.log_file is None:
            return None
        if self.log_file.is_absolute():
            return self.log_file
        base = Path(run.output_dir) if run.output_dir is not None else Path.cwd()
        return base / self.log_file

    def on_train_begin(self, run: callbridge.Run) -> None:
        path = self.path(run)
        if path is not None and self._fh is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8")

    def on_log(self, run: callbridge.Run, logs: dict[str, float]) -> None:
        self._write(run, "log", logs)

    def on_evaluate(self, run: callbridge.Run, metrics: dict[str, float]) -> None:
        self._write(run, "evaluate", metrics)

    def on_train_end(self, run: callbridge.Run) -> None:
        self._close()

    def on_exception(self, run: callbridge.Run, exc: BaseException) -> None:
        self._close()

    def _write(self, run: callbridge.Run, event: str, metrics: dict[str, Any]) -> None:
        fields = {"step": run.state.global_step, "epoch": run.state.epoch, **metrics}
        if self.include_memory_usage:
            fields.update(memory_figures())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        line = f"{stamp} {event} " + " ".join(f"{k}={_value(v)}" for k, v in fields.items())
        logging.getLogger(self.logger_name).log(_LEVELS[self.log_level], line)
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()  # a line survives a crash that follows it
        self.lines += 1

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
