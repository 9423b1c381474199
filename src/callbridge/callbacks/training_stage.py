"""``training_stage``: name the stage of a multi-stage pipeline (sft, dpo, pretrain...)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import attrs

from .._protocol import Callback, Run

logger = logging.getLogger("callbridge")

#: The file, in the run's output directory, that says which stage wrote there.
STAGE_FILE = "stage.json"


def _non_empty(instance: Any, attribute: Any, value: str) -> None:
    if not value.strip():
        raise ValueError(f"{attribute.name} must be a non-empty name such as 'sft' (got {value!r})")


@attrs.define
class TrainingStageCallback(Callback):
    """Tag the run with a stage of a pipeline, and mark where the stage begins and ends.

    At train begin the stage becomes the run's tag ``run.tags["stage"]``, which
    callbridge's recording callbacks add to every record they write: ``log`` (its log
    lines and JSON lines), ``monitor`` (each record's ``tags``) and ``reporter``.
    Declare it before them so that their first record is tagged too. The stage is
    said in ``stage <name> begins`` / ``ends`` / ``failed`` lines on the ``callbridge``
    logger, and written to ``output_dir/stage.json`` (``stage``, ``status``,
    ``framework``, ``global_step``, ``max_steps``, start and end times) for other tools.

    The stage is not put into the trainer's metrics: the ``logs`` dict is shared
    with the trainer's reporting integrations (TensorBoard, W&B...), which expect
    numbers, and a string there would be dropped by them with a warning.

    Args:
        stage: the stage's name (``sft``, ``dpo``, ``pretrain``, ``rm``, ``ppo``...).
        write_file: write ``stage.json`` into the run's output directory.
    """

    rank_zero_only: ClassVar[bool] = True

    stage: str = attrs.field(validator=_non_empty)
    write_file: bool = True

    record: dict[str, Any] = attrs.field(factory=dict, init=False, repr=False)

    def path(self, run: Run) -> Path | None:
        """Where ``stage.json`` goes for this run, if anywhere."""
        if not self.write_file or run.output_dir is None:
            return None
        return Path(run.output_dir) / STAGE_FILE

    def _write(self, run: Run) -> None:
        path = self.path(run)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # never a half-written file

    def _update(self, run: Run, status: str, **extra: Any) -> None:
        self.record.update(
            stage=self.stage,
            status=status,
            framework=run.framework,
            global_step=run.state.global_step,
            max_steps=run.state.max_steps,
            **extra,
        )
        self._write(run)

    def on_train_begin(self, run: Run) -> None:
        self.record = {}
        run.tags["stage"] = self.stage
        logger.info(
            "callbridge: stage %s begins (%s, step %d/%s)",
            self.stage,
            run.framework,
            run.state.global_step,
            run.state.max_steps if run.state.max_steps is not None else "?",
        )
        self._update(run, "running", started_at=time.time())

    def on_train_end(self, run: Run) -> None:
        logger.info("callbridge: stage %s ends at step %d", self.stage, run.state.global_step)
        self._update(run, "finished", ended_at=time.time())

    def on_exception(self, run: Run, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        logger.info(
            "callbridge: stage %s failed at step %d: %s", self.stage, run.state.global_step, error
        )
        self._update(run, "failed", ended_at=time.time(), error=error)
