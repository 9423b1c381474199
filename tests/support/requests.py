"""A neutral callback that makes Control requests at chosen steps (tests of Control mapping)."""

from __future__ import annotations

import attrs

import callbridge
from callbridge import Run


@attrs.define
class Requester(callbridge.Callback):
    """At the end of the given optimizer steps, request a save, an evaluation or a log.

    Args:
        save_at: steps at which to set ``should_save``.
        evaluate_at: steps at which to set ``should_evaluate``.
        log_at: steps at which to set ``should_log``.
    """

    save_at: list[int] = attrs.Factory(list)
    evaluate_at: list[int] = attrs.Factory(list)
    log_at: list[int] = attrs.Factory(list)

    def on_step_end(self, run: Run) -> None:
        step = run.state.global_step
        run.control.should_save = step in self.save_at
        run.control.should_evaluate = step in self.evaluate_at
        run.control.should_log = step in self.log_at
