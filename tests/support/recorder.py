"""A neutral callback that records what it sees: the spy of the contract suites."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

import callbridge
from callbridge import Run


@attrs.define
class Recorder(callbridge.Callback):
    """Records ``(event, global_step)`` for every hook; optionally stops or fails.

    Args:
        stop_at: request a stop at the end of this optimizer step.
        fail: raise RuntimeError in every hook.
        log_keys: metric keys to keep in the recorded log and evaluate events.
        path: also append each event as a line to this file (for subprocess runs).
    """

    stop_at: int | None = None
    fail: bool = False
    log_keys: list[str] = attrs.Factory(lambda: ["loss", "eval_loss", "val_loss"])
    path: str | None = None

    events: list[tuple[str, int]] = attrs.field(factory=list, init=False)
    counters: dict[str, int] = attrs.field(factory=dict, init=False)
    seen: dict[str, Any] = attrs.field(factory=dict, init=False)

    def _record(self, event: str, run: Run, detail: str = "") -> None:
        self.counters[event] = self.counters.get(event, 0) + 1
        name = f"{event}:{detail}" if detail else event
        self.events.append((name, run.state.global_step))
        self.seen.update(
            framework=run.framework,
            rank=run.state.rank,
            world_size=run.state.world_size,
            is_main_process=run.state.is_main_process,
            max_steps=run.state.max_steps,
        )
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(f"{run.state.rank} {name} {run.state.global_step}\n")
        if self.fail:
            raise RuntimeError(f"recorder fails in {event}")

    def _keys(self, metrics: dict[str, float]) -> str:
        return ",".join(sorted(k for k in metrics if k in self.log_keys))

    def on_train_begin(self, run: Run) -> None:
        self._record("train_begin", run)

    def on_train_end(self, run: Run) -> None:
        self._record("train_end", run)

    def on_epoch_begin(self, run: Run) -> None:
        self._record("epoch_begin", run)

    def on_epoch_end(self, run: Run) -> None:
        self._record("epoch_end", run)

    def on_step_begin(self, run: Run) -> None:
        self._record("step_begin", run)

    def on_step_end(self, run: Run) -> None:
        self._record("step_end", run)
        if self.stop_at is not None and run.state.global_step >= self.stop_at:
            run.control.should_stop = True

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        self._record("log", run, self._keys(logs))

    def on_evaluate_begin(self, run: Run) -> None:
        self._record("evaluate_begin", run)

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self._record("evaluate", run, self._keys(metrics))

    def on_save(self, run: Run) -> None:
        self._record("save", run)

    def on_exception(self, run: Run, exc: BaseException) -> None:
        self._record("exception", run, type(exc).__name__)

    def state_dict(self) -> dict[str, Any]:
        return {"counters": dict(self.counters)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counters = dict(state["counters"])


@attrs.define
class RankZeroRecorder(Recorder):
    """A Recorder that runs on the main process only."""

    rank_zero_only: ClassVar[bool] = True
