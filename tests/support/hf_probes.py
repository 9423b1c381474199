"""Neutral callbacks that check what the HF suite needs beyond :class:`support.recorder.Recorder`.

No framework is imported here: they read ``run`` only, and take what ``attach``
injects by parameter name.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

import callbridge
from callbridge import Run


@attrs.define
class CheckpointProbe(callbridge.Callback):
    """At every ``on_save``, records the step and the files of ``checkpoint-<step>`` (or None)."""

    saves: list[tuple[int, list[str] | None]] = attrs.field(factory=list, init=False)

    def on_save(self, run: Run) -> None:
        assert run.output_dir is not None
        folder = run.output_dir / f"checkpoint-{run.state.global_step}"
        files = sorted(os.listdir(folder)) if folder.is_dir() else None
        self.saves.append((run.state.global_step, files))


@attrs.define
class ContextProbe(callbridge.Callback):
    """Takes the objects an adapter injects by name; ``trainer`` and ``model`` are required.

    Records ``run.model`` at train begin, to compare with the injected model.
    """

    trainer: Any
    model: Any
    args: Any = None
    processing_class: Any = None
    ref_model: Any = None
    accelerator: Any = None
    run_model: Any = attrs.field(default=None, init=False)

    def on_train_begin(self, run: Run) -> None:
        self.run_model = run.model
