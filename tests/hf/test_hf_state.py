"""Callback state survives a checkpoint and a resume in a fresh process, per callback instance.

Two fresh Pythons (``tests/support/hf_train.py``): the first trains 6 of 12 steps
(a Recorder asks to stop there) and saves ``checkpoint-6``; the second resumes
from it with ``train(resume_from_checkpoint=True)``. The Recorder's counters come
back from ``checkpoint-6/callbridge/`` and continue as in an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from support.hf_models import neutral_callbacks, run_script, with_config

MAX_STEPS, SAVE_STEPS, EVAL_STEPS, LOGGING_STEPS = 12, 6, 4, 5
RESUMED = ("step_begin", "step_end", "log", "evaluate_begin", "evaluate", "save")
SCHEDULE = [
    "--max-steps", str(MAX_STEPS),
    "--save-steps", str(SAVE_STEPS),
    "--eval-steps", str(EVAL_STEPS),
    "--logging-steps", str(LOGGING_STEPS),
]  # fmt: skip


def config(stop_at: int | None) -> str:
    """Two instances of one class: HF's own state mechanism keys by class name, mixing them."""
    first: dict[str, Any] = {"name": "support.recorder.Recorder"}
    if stop_at is not None:
        first["args"] = {"stop_at": stop_at}
    return json.dumps({"custom_callbacks": [first, "support.recorder.Recorder"], "strict": True})


def uninterrupted(tmp_path: Path) -> dict[str, int]:
    """The counters of one Recorder over the same 12 steps, in one go (in this process)."""
    trainer = with_config(
        "attach",
        tmp_path / "uninterrupted",
        {"custom_callbacks": ["support.recorder.Recorder"]},
        max_steps=MAX_STEPS,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        eval_strategy="steps",
        eval_steps=EVAL_STEPS,
        logging_steps=LOGGING_STEPS,
    )
    trainer.train()
    (recorder,) = neutral_callbacks(trainer)
    return dict(recorder.counters)


@pytest.mark.parametrize("mode", ["attach", "callbacks"])
def test_counters_resume_in_a_fresh_process_as_if_never_interrupted(
    mode: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    common = ["--output-dir", str(out), "--mode", mode, *SCHEDULE]
    # Two instances of one class see the same events: a distinct mark tells their files apart.
    run_script(
        *common, "--config", config(stop_at=SAVE_STEPS), "--result", str(tmp_path / "first.json"),
        "--mark", "0=1", "--mark", "1=2",
        cwd=tmp_path,
    )  # fmt: skip
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["global_step"] == SAVE_STEPS

    state_files = sorted(
        p.name for p in (out / f"checkpoint-{SAVE_STEPS}" / "callbridge").rglob("*") if p.is_file()
    )
    assert len(state_files) == 1, state_files  # one file per rank: both instances, by key

    run_script(
        *common, "--config", config(stop_at=None), "--result", str(tmp_path / "second.json"),
        "--resume",
        cwd=tmp_path,
    )  # fmt: skip
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["global_step"] == MAX_STEPS

    expected = uninterrupted(tmp_path)
    assert expected["step_end"] == MAX_STEPS  # the reference itself ran the whole schedule
    for index, callback in enumerate(second["callbacks"]):
        counters = callback["counters"]
        assert counters["mark"] == index + 1, "an instance got another instance's state"
        assert {k: counters[k] for k in RESUMED} == {k: expected[k] for k in RESUMED}
        # The resumed process itself saw only steps 7..12.
        assert [step for name, step in callback["events"] if name == "step_end"] == list(
            range(7, 13)
        )


def checkpoint_with_mark(tmp_path: Path) -> Path:
    """A 2-step run whose Recorder carried counters['mark'] = 7 into checkpoint-2."""
    trainer = with_config(
        "attach",
        tmp_path / "first",
        {"custom_callbacks": ["support.recorder.Recorder"]},
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
    )
    (recorder,) = neutral_callbacks(trainer)
    recorder.counters["mark"] = 7
    trainer.train()
    return tmp_path / "first" / "checkpoint-2"


@pytest.mark.parametrize("mode", ["attach", "callbacks"])
def test_resume_from_a_checkpoint_path_restores_state(mode: str, tmp_path: Path) -> None:
    checkpoint = checkpoint_with_mark(tmp_path)
    trainer = with_config(
        mode, tmp_path / "second", {"custom_callbacks": ["support.recorder.Recorder"]}, max_steps=4
    )
    (recorder,) = neutral_callbacks(trainer)

    trainer.train(resume_from_checkpoint=str(checkpoint))

    assert recorder.counters["mark"] == 7
    assert recorder.counters["step_end"] == 4
    assert [step for name, step in recorder.events if name == "step_end"] == [3, 4]


@pytest.mark.parametrize("mode", ["attach", "callbacks"])
def test_args_resume_from_checkpoint_alone_is_no_resume(mode: str, tmp_path: Path) -> None:
    """HF ignores TrainingArguments.resume_from_checkpoint (it is for scripts): so do callbacks."""
    checkpoint = checkpoint_with_mark(tmp_path)
    trainer = with_config(
        mode,
        tmp_path / "second",
        {"custom_callbacks": ["support.recorder.Recorder"]},
        max_steps=4,
        resume_from_checkpoint=str(checkpoint),
    )
    (recorder,) = neutral_callbacks(trainer)

    trainer.train()

    assert [step for name, step in recorder.events if name == "step_end"] == [1, 2, 3, 4]
    assert "mark" not in recorder.counters
    assert recorder.counters["step_end"] == 4
