"""A neutral callback that asks to stop on one rank only: the other ranks must follow."""

from __future__ import annotations

import attrs

import callbridge
from callbridge import Run


@attrs.define
class StopOnRank(callbridge.Callback):
    """Sets ``should_stop`` at the end of optimizer step ``at_step``, on rank ``rank`` only.

    Args:
        rank: the one rank that decides to stop.
        at_step: the optimizer step after which it asks.
    """

    rank: int = 1
    at_step: int = 3

    def on_step_end(self, run: Run) -> None:
        if run.state.rank == self.rank and run.state.global_step >= self.at_step:
            run.control.should_stop = True
