"""``guard`` under the real Lightning Trainer: a loss that turns NaN at step k stops at k."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

import callbridge_lightning
from support.lightning_models import BoringModel, loader, trainer


class NaNAtStep(BoringModel):
    """A BoringModel whose training loss is NaN from optimizer step ``nan_at`` on."""

    def __init__(self, nan_at: int | None) -> None:
        super().__init__()
        self.nan_at = nan_at

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        # global_step counts finished optimizer steps: this batch belongs to step global_step + 1.
        if self.nan_at is not None and self.global_step + 1 >= self.nan_at:
            loss = loss * float("nan")
        self.log("loss", loss)
        return loss


def fit(tmp_path: Path, nan_at: int | None) -> tuple[Any, Any]:
    callbacks = callbridge_lightning.callbacks(
        {"custom_callbacks": [{"name": "guard", "args": {"spike_factor": 10.0}}], "strict": True}
    )
    tr = trainer(tmp_path, callbacks, max_steps=12, log_every_n_steps=1)
    torch.manual_seed(0)
    tr.fit(NaNAtStep(nan_at), loader(16), loader(2, seed=1))
    (guard,) = callbridge_lightning.unwrap(callbacks)
    return tr, guard


def test_a_nan_loss_at_step_k_stops_at_k(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="callbridge"):
        tr, guard = fit(tmp_path, nan_at=5)
    assert tr.global_step == 5
    assert guard.stopped_at_step == 5
    assert guard.reason == "loss is nan"
    assert any(m.startswith("callbridge guard: loss is nan at step 5") for m in caplog.messages)


def test_a_normal_run_is_not_stopped(tmp_path: Path) -> None:
    tr, guard = fit(tmp_path, nan_at=None)
    assert tr.global_step == 12
    assert guard.stopped_at_step is None
