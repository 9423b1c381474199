"""Small neutral callbacks for the adapter suites (no framework imported here).

:class:`support.recorder.Recorder` records which events happened; these add what
some tests need beyond that: the values a callback was given, and requests or
failures on one rank only.
"""

from __future__ import annotations

import attrs

import callbridge
from callbridge import Run


@attrs.define
class PayloadSpy(callbridge.Callback):
    """Keeps what ``on_log``, ``on_evaluate`` and ``on_exception`` were given, with the step."""

    logs: list[tuple[int, dict[str, float]]] = attrs.field(factory=list, init=False)
    evaluations: list[tuple[int, dict[str, float]]] = attrs.field(factory=list, init=False)
    exceptions: list[tuple[int, BaseException]] = attrs.field(factory=list, init=False)

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        self.logs.append((run.state.global_step, dict(logs)))

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self.evaluations.append((run.state.global_step, dict(metrics)))

    def on_exception(self, run: Run, exc: BaseException) -> None:
        self.exceptions.append((run.state.global_step, exc))


@attrs.define
class StopOnRank(callbridge.Callback):
    """Requests a stop at the end of step ``at_step``, on process ``rank`` only."""

    rank: int
    at_step: int

    def on_step_end(self, run: Run) -> None:
        if run.state.rank == self.rank and run.state.global_step >= self.at_step:
            run.control.should_stop = True


@attrs.define
class FailOnRank(callbridge.Callback):
    """Raises in ``on_step_end`` on process ``rank`` only (the others never fail)."""

    rank: int

    def on_step_end(self, run: Run) -> None:
        if run.state.rank == self.rank:
            raise RuntimeError(f"fails on rank {self.rank} at step {run.state.global_step}")


@attrs.define
class NativeSeen(callbridge.Callback):
    """Reads ``run.native["trainer"]`` and ``run.model`` in every hook, keeping their ids only.

    Ids, not the objects: keeping the trainer would hold it in a reference cycle, which
    is what the lifetime tests check that callbridge itself never does.
    """

    seen: list[tuple[str, int | None, int | None]] = attrs.field(factory=list, init=False)

    def _see(self, hook: str, run: Run) -> None:
        trainer = run.native.get("trainer")
        self.seen.append((hook, None if trainer is None else id(trainer),
                          None if run.model is None else id(run.model)))  # fmt: skip

    def on_train_begin(self, run: Run) -> None:
        self._see("train_begin", run)

    def on_step_end(self, run: Run) -> None:
        self._see("step_end", run)

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self._see("evaluate", run)

    def on_train_end(self, run: Run) -> None:
        self._see("train_end", run)
