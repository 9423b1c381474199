"""Native callbacks in a config: HF's and TRL's pass through in order; Lightning's are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import EarlyStoppingCallback
from trl import RichProgressCallback

import callbridge_hf
from support.hf_models import neutral_callbacks, with_config
from support.recorder import Recorder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
MODES = pytest.mark.parametrize("mode", ["callbacks", "attach"])


@MODES
def test_native_callbacks_pass_through_in_configured_order(
    mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """EarlyStoppingCallback (with args) and RichProgressCallback among neutral ones, in order."""
    trainer = with_config(
        mode,
        tmp_path,
        FIXTURES / "native.toml",
        max_steps=12,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
    )
    configured = [
        cb
        for cb in trainer.callback_handler.callbacks
        if isinstance(
            cb, (callbridge_hf.NeutralCallback, EarlyStoppingCallback, RichProgressCallback)
        )
    ]
    first, stopper, second, rich = configured
    assert isinstance(first, callbridge_hf.NeutralCallback)
    assert isinstance(stopper, EarlyStoppingCallback)
    assert isinstance(second, callbridge_hf.NeutralCallback)
    assert isinstance(rich, RichProgressCallback)
    assert (stopper.early_stopping_patience, stopper.early_stopping_threshold) == (1, 10.0)
    recorders = neutral_callbacks(trainer)
    assert [type(r) for r in recorders] == [Recorder, Recorder]
    assert recorders[1].log_keys == ["eval_loss"]

    trainer.train()

    # The native callback really ran: no evaluation improves by 10, so patience 1 stops
    # at the second evaluation, and both neutral callbacks saw that end.
    assert trainer.state.global_step == 4
    for recorder in recorders:
        assert [step for name, step in recorder.events if name == "evaluate:eval_loss"] == [2, 4]
        assert recorder.events[-1] == ("train_end", 4)
    assert "Step 4" in capsys.readouterr().out  # the rich panel's last title
