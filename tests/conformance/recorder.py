"""The conformance suite's spy: what a neutral callback sees, field by field, and a stop."""

from __future__ import annotations

import json
from typing import Any

import attrs

import callbridge
from callbridge import Run

EVAL_KEYS = ("eval_loss", "val_loss")


def log_kind(logs: dict[str, float]) -> str:
    """``summary`` (HF's closing speed metrics), ``eval`` or ``train``."""
    if "train_runtime" in logs:
        return "summary"
    if any(k in logs for k in EVAL_KEYS):
        return "eval"
    return "train"


@attrs.define
class ContractRecorder(callbridge.Callback):
    """Records ``[event, global_step, epoch, num_epochs, should_stop]`` for every hook.

    Args:
        tag: tells instances apart (two of this class in one config).
        stop_hook: request a stop in this hook...
        stop_step: ...once ``global_step`` reaches this step.
        stop_rank: only on this rank (None: every rank).
        path: also append each record as a JSON line (rank first) to this file.
    """

    tag: str = ""
    stop_hook: str | None = None
    stop_step: int = 0
    stop_rank: int | None = None
    path: str | None = None
    events: list[list[Any]] = attrs.field(factory=list, init=False)

    def _record(self, run: Run, hook: str, detail: str = "") -> None:
        st = run.state
        name = f"{hook}:{detail}" if detail else hook
        record = [name, st.global_step, round(st.epoch, 6), st.num_epochs, run.control.should_stop]
        self.events.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps([st.rank, *record]) + "\n")
        if (
            f"on_{hook}" == self.stop_hook
            and st.global_step >= self.stop_step
            and (self.stop_rank is None or st.rank == self.stop_rank)
        ):
            run.control.should_stop = True

    def on_train_begin(self, run: Run) -> None:
        self._record(run, "train_begin")

    def on_train_end(self, run: Run) -> None:
        self._record(run, "train_end")

    def on_epoch_begin(self, run: Run) -> None:
        self._record(run, "epoch_begin")

    def on_epoch_end(self, run: Run) -> None:
        self._record(run, "epoch_end")

    def on_step_begin(self, run: Run) -> None:
        self._record(run, "step_begin")

    def on_step_end(self, run: Run) -> None:
        self._record(run, "step_end")

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        self._record(run, "log", log_kind(logs))

    def on_evaluate_begin(self, run: Run) -> None:
        self._record(run, "evaluate_begin")

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self._record(run, "evaluate")

    def on_save(self, run: Run) -> None:
        self._record(run, "save")

    def on_exception(self, run: Run, exc: BaseException) -> None:
        self._record(run, "exception", type(exc).__name__)

    def state_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "events": json.dumps(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.events = json.loads(state["events"])


@attrs.define
class FailInEvaluate(callbridge.Callback):
    """Raises ``RuntimeError`` in ``on_evaluate``."""

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        raise RuntimeError("FailInEvaluate fails in on_evaluate")
