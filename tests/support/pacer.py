"""A neutral callback that slows each step and says where training is (subprocess tests)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import attrs

import callbridge


@attrs.define
class Pacer(callbridge.Callback):
    """Sleeps ``sleep`` seconds after each step and writes the step to ``path``.

    A test that signals a running training waits for the file to show a step, so the
    signal lands mid-training whatever the machine's speed; ``<path>.pid`` holds the main
    process's id (under torchrun, rank 0's, not the launcher's).
    """

    path: str
    sleep: float = 0.05

    def on_step_end(self, run: callbridge.Run) -> None:
        if run.state.is_main_process:
            if run.state.global_step == 1 or not os.path.exists(f"{self.path}.pid"):
                Path(f"{self.path}.pid").write_text(str(os.getpid()), encoding="utf-8")
            tmp = Path(f"{self.path}.tmp")
            tmp.write_text(str(run.state.global_step), encoding="utf-8")
            os.replace(tmp, self.path)
        time.sleep(self.sleep)
