"""Failures under Lightning: in callbacks (``callback_errors``), in training (``on_exception``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import callbridge_lightning
from support.lightning_models import BoringModel, TrainingFailed, loader, trainer
from support.neutral_spies import PayloadSpy
from support.recorder import Recorder

RECORDER = "support.recorder.Recorder"
FAILING = {"name": RECORDER, "args": {"fail": True}}
FAILING_LABEL = "support.recorder.Recorder (custom_callbacks[0])"


def neutrals(callbacks: list[Any]) -> list[Any]:
    return callbridge_lightning.unwrap(callbacks)


def fit(
    tmp_path: Path, config: dict[str, Any], model: BoringModel | None = None
) -> tuple[Any, list[Any]]:
    """Four optimizer steps in one epoch, a log every 2 steps, validation at the end."""
    callbacks = callbridge_lightning.callbacks(config)
    tr = trainer(tmp_path, callbacks, max_epochs=1, log_every_n_steps=2)
    tr.fit(model or BoringModel(), loader(4), loader(2, seed=1))
    return tr, neutrals(callbacks)


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "callbridge" and r.levelno == level]


def test_default_policy_logs_each_failing_hook_once_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """callback_errors = "log": one error per callback and hook, the counts in the end summary."""
    tr, (failing, healthy) = fit(tmp_path, {"custom_callbacks": [FAILING, RECORDER]})

    assert tr.global_step == 4
    assert healthy.events[-1] == ("train_end", 4)
    # Recorder counts a call before it raises: its counters are the failures.
    hooks = [f"on_{event}" for event in failing.counters]
    assert hooks == [
        "on_train_begin", "on_epoch_begin", "on_step_begin", "on_step_end", "on_log",
        "on_epoch_end", "on_evaluate_begin", "on_evaluate", "on_train_end",
    ]  # fmt: skip
    assert failing.counters["step_begin"] == 4
    assert records(caplog, logging.ERROR) == [
        f"callbridge: callback {FAILING_LABEL} raised in {hook} (later errors of this hook are "
        "counted, not logged; callback_errors = 'raise' makes them stop training)"
        for hook in hooks
    ]
    total = sum(failing.counters.values())
    summary = ", ".join(f"{FAILING_LABEL}.on_{event} x{n}" for event, n in failing.counters.items())
    assert records(caplog, logging.WARNING)[-1] == f"callbridge: {total} callback errors: {summary}"


def test_raise_policy_stops_fit_with_the_callbacks_error(tmp_path: Path) -> None:
    """callback_errors = "raise": the first failure leaves fit; on_exception reaches the rest."""
    config = {
        "callback_errors": "raise",
        "custom_callbacks": [FAILING, "support.neutral_spies.PayloadSpy"],
    }
    callbacks = callbridge_lightning.callbacks(config)
    spy: PayloadSpy = neutrals(callbacks)[1]
    tr = trainer(tmp_path, callbacks, max_epochs=1)

    with pytest.raises(RuntimeError, match=r"^recorder fails in train_begin$") as info:
        tr.fit(BoringModel(), loader(4), loader(2, seed=1))

    assert tr.global_step == 0
    assert spy.exceptions == [(0, info.value)]


def test_disable_policy_stops_calling_a_callback_after_max_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """callback_errors = "disable": after callback_max_failures failures, never called again."""
    config = {
        "callback_errors": "disable",
        "callback_max_failures": 3,
        "custom_callbacks": [FAILING, RECORDER],
    }
    tr, (failing, healthy) = fit(tmp_path, config)

    assert tr.global_step == 4
    assert failing.events == [("train_begin", 0), ("epoch_begin", 0), ("step_begin", 0)]
    assert healthy.events[-1] == ("train_end", 4)
    assert (
        f"callbridge: disabled callback {FAILING_LABEL} after 3 failures; "
        "it is not called again this run" in (records(caplog, logging.ERROR))
    )
    assert records(caplog, logging.WARNING)[-1] == (
        f"callbridge: 3 callback errors: {FAILING_LABEL}.on_train_begin x1, "
        f"{FAILING_LABEL}.on_epoch_begin x1, {FAILING_LABEL}.on_step_begin x1; "
        f"disabled: {FAILING_LABEL}"
    )


def test_training_exception_reaches_on_exception_then_fit_reraises(tmp_path: Path) -> None:
    """training_step fails in step 3: on_exception gets that very exception, then fit raises it."""
    callbacks = callbridge_lightning.callbacks(
        {"custom_callbacks": [RECORDER, "support.neutral_spies.PayloadSpy"]}
    )
    recorder: Recorder
    spy: PayloadSpy
    recorder, spy = neutrals(callbacks)
    tr = trainer(tmp_path, callbacks, max_steps=10, log_every_n_steps=50)

    with pytest.raises(TrainingFailed, match="failed at step 3") as info:
        tr.fit(BoringModel(fail_at_step=3), loader(8), loader(2, seed=1))

    assert tr.global_step == 2
    assert spy.exceptions == [(2, info.value)]
    assert recorder.events[-3:] == [
        ("step_end", 2),
        ("step_begin", 2),
        ("exception:TrainingFailed", 2),
    ]
    assert "train_end" not in recorder.counters
