"""A failing neutral callback under a real ``Trainer``: the three ``callback_errors`` policies."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from support.hf_models import neutral_callbacks, with_config

MODES = pytest.mark.parametrize("mode", ["callbacks", "attach"])

FAILING = "support.recorder.Recorder (custom_callbacks[0])"  # how logs name the failing callback


def config(policy: str | None = None, **options: object) -> dict[str, object]:
    """A failing Recorder first, a healthy one after it."""
    data: dict[str, object] = {
        "custom_callbacks": [
            {"name": "support.recorder.Recorder", "args": {"fail": True}},
            "support.recorder.Recorder",
        ],
        **options,
    }
    if policy is not None:
        data["callback_errors"] = policy
    return data


def raised(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(callback, hook) of every "raised in" error record."""
    return [
        (str(r.args[0]), str(r.args[1]))  # type: ignore[index]
        for r in caplog.records
        if r.name == "callbridge" and r.levelno == logging.ERROR and "raised in" in r.msg
    ]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "callbridge" and r.levelno == logging.WARNING
    ]


@MODES
def test_log_policy_keeps_training_and_logs_each_hook_once(
    mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Default policy: training completes, one error per callback and hook, counts at the end."""
    caplog.set_level(logging.INFO, logger="callbridge")
    trainer = with_config(mode, tmp_path, config(), max_steps=4, logging_steps=2)
    failing, healthy = neutral_callbacks(trainer)

    trainer.train()

    assert trainer.state.global_step == 4
    # The failing Recorder counts an event before raising, so its counters are the failures.
    hooks = [f"on_{event}" for event in failing.counters]
    assert raised(caplog) == [(FAILING, hook) for hook in hooks]
    summaries = warnings_of(caplog)
    total = sum(failing.counters.values())
    listing = ", ".join(f"{FAILING}.on_{event} x{n}" for event, n in failing.counters.items())
    assert summaries == [f"callbridge: {total} callback errors: {listing}"]
    # Every hook failed repeatedly (steps), and the healthy callback after it saw everything.
    assert failing.counters["step_end"] == 4
    assert healthy.events == failing.events


@MODES
def test_raise_policy_stops_training_with_the_callback_error(mode: str, tmp_path: Path) -> None:
    """callback_errors = "raise": the first failure propagates out of trainer.train()."""
    trainer = with_config(mode, tmp_path, config("raise"), max_steps=4)
    _, healthy = neutral_callbacks(trainer)

    with pytest.raises(RuntimeError, match=r"^recorder fails in train_begin$"):
        trainer.train()

    assert trainer.state.global_step == 0
    # The run fails at train begin: later callbacks were not called for it, but all learn why.
    assert healthy.events == [("exception:RuntimeError", 0)]


@MODES
def test_disable_policy_stops_calling_after_max_failures(
    mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """callback_errors = "disable": after callback_max_failures failures, no more calls."""
    caplog.set_level(logging.INFO, logger="callbridge")
    trainer = with_config(
        mode, tmp_path, config("disable", callback_max_failures=2), max_steps=4, logging_steps=2
    )
    failing, healthy = neutral_callbacks(trainer)

    trainer.train()

    assert trainer.state.global_step == 4
    assert failing.counters == {"train_begin": 1, "epoch_begin": 1}
    assert healthy.counters["step_end"] == 4
    assert raised(caplog) == [(FAILING, "on_train_begin"), (FAILING, "on_epoch_begin")]
    disabled = [r.getMessage() for r in caplog.records if "disabled callback" in r.msg]
    assert disabled == [
        f"callbridge: disabled callback {FAILING} after 2 failures; it is not called again this run"
    ]
    summaries = warnings_of(caplog)
    assert summaries == [
        f"callbridge: 2 callback errors: {FAILING}.on_train_begin x1, {FAILING}.on_epoch_begin x1; "
        f"disabled: {FAILING}"
    ]
