"""A neutral callback that SIGKILLs its own process at a step (the monitor's resume tests).

Declared after the ``monitor`` in a config, so that the monitor has recorded the
step's log before the process dies, as a real crash after a log line would leave it.
"""

from __future__ import annotations

import os
import signal

from callbridge import Callback, Run


class KillAt(Callback):
    """``os.kill(getpid(), SIGKILL)`` in ``on_log`` at ``step`` (0: never)."""

    def __init__(self, step: int = 0) -> None:
        self.step = step

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        if self.step and run.state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
