"""``custom_callbacks_only``: Lightning's progress bar and model summary are off, training on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichModelSummary

import callbridge_lightning
from support.lightning_models import BoringModel, loader, trainer

RECORDER = "support.recorder.Recorder"
PROGRESS_LINE = "Epoch 0"  # in every progress bar Lightning draws


@pytest.fixture
def summaries(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every model summary Lightning produces during the test (one entry per summary).

    Counted at ``ModelSummary.summarize`` rather than read from the output: Lightning
    prints it through its logger, whose handlers depend on what was imported first.
    """
    calls: list[int] = []
    # With rich installed Lightning picks RichModelSummary, which has its own summarize.
    for cls in (ModelSummary, RichModelSummary):
        original = cls.summarize

        def counting(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "summarize", staticmethod(counting))
    return calls


def display_callbacks(tr: Any) -> list[Any]:
    return [cb for cb in tr.callbacks if isinstance(cb, (ProgressBar, ModelSummary))]


def fit_with_display(tmp_path: Path, callbacks: list[Any]) -> Any:
    """A fit with Lightning's display on, as by default (a progress bar and a model summary)."""
    tr = trainer(
        tmp_path, callbacks, max_steps=3, enable_progress_bar=True, enable_model_summary=True
    )
    assert display_callbacks(tr)  # Lightning added them
    tr.fit(BoringModel(), loader(4), loader(2, seed=1))
    return tr


def test_display_is_on_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], summaries: list[int]
) -> None:
    """The control: without custom_callbacks_only, Lightning draws its bar and prints a summary."""
    tr = fit_with_display(
        tmp_path, callbridge_lightning.callbacks({"custom_callbacks": [RECORDER]})
    )

    out = capsys.readouterr().out
    assert summaries == [1]
    assert PROGRESS_LINE in out
    assert tr.progress_bar_callback is not None


@pytest.mark.parametrize(
    "entries",
    [
        [RECORDER],
        # Native callbacks only: nothing neutral is there to do it, the display goes all the same.
        [{"name": "lightning.pytorch.callbacks.Timer", "args": {"duration": "00:00:10:00"}}],
    ],
    ids=["neutral", "native-only"],
)
def test_custom_callbacks_only_turns_off_progress_bar_and_model_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entries: list[Any], summaries: list[int]
) -> None:
    """custom_callbacks_only = true: no progress bar, no model summary, and the fit still runs."""
    callbacks = callbridge_lightning.callbacks(
        {"custom_callbacks_only": True, "custom_callbacks": entries}
    )
    tr = fit_with_display(tmp_path, callbacks)

    assert tr.global_step == 3
    assert tr.progress_bar_callback is None
    assert display_callbacks(tr) == []
    out = capsys.readouterr().out
    assert summaries == []
    assert PROGRESS_LINE not in out


def test_the_explicit_way_is_trainer_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], summaries: list[int]
) -> None:
    """Without callbridge: Trainer(enable_progress_bar=False, enable_model_summary=False)."""
    tr = trainer(tmp_path, max_steps=3, enable_progress_bar=False, enable_model_summary=False)
    tr.fit(BoringModel(), loader(4), loader(2, seed=1))

    assert tr.global_step == 3
    assert tr.progress_bar_callback is None
    assert display_callbacks(tr) == []
    out = capsys.readouterr().out
    assert summaries == []
    assert PROGRESS_LINE not in out
