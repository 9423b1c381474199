"""``guard`` under the real HF Trainer: a model whose loss turns NaN at step k stops at k."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from transformers import GPT2LMHeadModel

import callbridge_hf
from support.hf_models import make_trainer, neutral_callbacks, tiny_gpt2_config


class NaNAtStep(GPT2LMHeadModel):
    """The tiny GPT-2, whose training loss is NaN from optimizer step ``nan_at`` on."""

    nan_at: int | None = None
    calls = 0

    def forward(  # the named inputs: HF keeps the dataset columns the signature names
        self, input_ids: Any = None, attention_mask: Any = None, labels: Any = None, **kwargs: Any
    ) -> Any:
        out = super().forward(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
        )
        if self.training:
            self.calls += 1  # one forward per optimizer step (no gradient accumulation)
            if self.nan_at is not None and self.calls >= self.nan_at:
                out.loss = out.loss * float("nan")
        return out


def nan_model(nan_at: int | None) -> NaNAtStep:
    import torch

    torch.manual_seed(0)
    model = NaNAtStep(tiny_gpt2_config())
    model.nan_at = nan_at
    return model


def train(tmp_path: Path, nan_at: int | None, **args: Any) -> Any:
    trainer = make_trainer(tmp_path, model=nan_model(nan_at), max_steps=12, logging_steps=1, **args)
    callbridge_hf.attach(
        trainer,
        {"custom_callbacks": [{"name": "guard", "args": {"spike_factor": 10.0}}], "strict": True},
    )
    trainer.train()
    (guard,) = neutral_callbacks(trainer)
    return trainer, guard


def test_a_nan_loss_at_step_k_stops_at_k_with_the_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """HF filters the NaN out of the logged loss (logging_nan_inf_filter): grad_norm shows it."""
    with caplog.at_level(logging.ERROR, logger="callbridge"):
        trainer, guard = train(tmp_path, nan_at=5)
    assert trainer.state.global_step == 5
    assert guard.stopped_at_step == 5
    assert guard.reason == "grad_norm is nan"
    assert any(
        m.startswith("callbridge guard: grad_norm is nan at step 5") for m in caplog.messages
    )


def test_the_loss_itself_when_hf_does_not_filter_it(tmp_path: Path) -> None:
    trainer, guard = train(tmp_path, nan_at=4, logging_nan_inf_filter=False)
    assert trainer.state.global_step == 4
    assert guard.reason == "loss is nan"


def test_a_normal_run_is_not_stopped(tmp_path: Path) -> None:
    trainer, guard = train(tmp_path, nan_at=None)
    assert trainer.state.global_step == 12
    assert guard.stopped_at_step is None
