"""Control requests under HF: save, evaluate and log happen at the step that asked for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.hf_models import neutral_callbacks, with_config
from support.recorder import Recorder

MODES = pytest.mark.parametrize("mode", ["callbacks", "attach"])


def config(**requests: list[int]) -> dict[str, object]:
    return {
        "custom_callbacks": [
            {"name": "support.requests.Requester", "args": requests},
            "support.recorder.Recorder",
        ],
        "strict": True,
    }


@MODES
def test_requests_are_honoured_at_their_step_with_nothing_scheduled(
    mode: str, tmp_path: Path
) -> None:
    """With no save, evaluation or log scheduled, each request makes exactly one happen."""
    trainer = with_config(
        mode,
        tmp_path,
        config(save_at=[3], evaluate_at=[2], log_at=[1]),
        max_steps=5,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1_000_000,
    )
    trainer.train()
    (recorder,) = [cb for cb in neutral_callbacks(trainer) if isinstance(cb, Recorder)]
    events = [(name, step) for name, step in recorder.events if step <= 5]
    assert [e for e in events if e[0] == "save"] == [("save", 3)]
    assert [e for e in events if e[0].startswith("evaluate")] == [
        ("evaluate_begin", 2),
        ("evaluate:eval_loss", 2),
    ]
    # One requested training log at step 1, the evaluation's log at 2, HF's closing summary.
    assert [e for e in events if e[0].startswith("log")] == [
        ("log:loss", 1),
        ("log:eval_loss", 2),
        ("log", 5),
    ]
    checkpoints = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3"]


@MODES
def test_a_request_cannot_cancel_the_trainers_own_schedule(mode: str, tmp_path: Path) -> None:
    """Requests only add: a callback leaving should_save False keeps HF's scheduled saves."""
    trainer = with_config(
        mode, tmp_path, config(), max_steps=4, save_strategy="steps", save_steps=2
    )
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
