"""A raising native ``TrainerCallback`` is isolated like a neutral callback, keeping its type.

The reference document teaches users to write ``TrainerCallback`` subclasses and promises
"callback exceptions are isolated and logged": declared in a callbridge configuration, such
a callback falls under ``callback_errors`` (log, disable, raise), is counted in the run's
error summary, and is still found by class (``trainer.pop_callback``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from transformers import EarlyStoppingCallback

from support.hf_models import with_config
from support.native_raisers import HFRaiser

MODES = pytest.mark.parametrize("mode", ["callbacks", "attach"])
LABEL = "support.native_raisers.HFRaiser (custom_callbacks[0])"


def config(policy: str | None = None, **args: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "custom_callbacks": [
            {"name": "support.native_raisers.HFRaiser", "args": args},
            {"name": "reporter", "args": {"filename": "report.json"}},
        ]
    }
    if policy is not None:
        data["callback_errors"] = policy
    return data


def raiser(trainer: Any) -> Any:
    [found] = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HFRaiser)]
    return found


def report(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    return data


@MODES
def test_a_raising_trainer_callback_does_not_stop_training(
    mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callbridge")
    trainer = with_config(mode, tmp_path, config(), max_steps=4)
    native = raiser(trainer)

    trainer.train()

    assert trainer.state.global_step == 4
    assert native.calls == {"train_begin": 1, "step": 4, "train_end": 1}
    errors = [
        r.getMessage() for r in caplog.records if r.name == "callbridge" and "raised in" in r.msg
    ]
    assert errors == [
        f"callbridge: callback {LABEL} raised in on_step_end (later errors of this hook are "
        "counted, not logged; callback_errors = 'raise' makes them stop training)"
    ]
    assert report(tmp_path)["callback_errors"] == {
        "total": 4,
        "counts": [{"callback": LABEL, "hook": "on_step_end", "count": 4}],
        "disabled": [],
    }


@MODES
def test_the_native_callback_keeps_its_class(mode: str, tmp_path: Path) -> None:
    """Found by class: isinstance, type() and trainer.pop_callback(cls) all see the user's class."""
    trainer = with_config(mode, tmp_path, config(), max_steps=2)
    native = raiser(trainer)
    assert type(native) is HFRaiser
    assert trainer.pop_callback(HFRaiser) is native
    assert not any(isinstance(cb, HFRaiser) for cb in trainer.callback_handler.callbacks)
    trainer.train()  # removed by class: it is never called
    assert native.calls == {}


def test_a_framework_callback_is_still_popped_by_class(tmp_path: Path) -> None:
    data = {
        "custom_callbacks": [
            {"name": "transformers.EarlyStoppingCallback", "args": {"early_stopping_patience": 2}}
        ]
    }
    trainer = with_config("attach", tmp_path, data, max_steps=2)
    popped = trainer.pop_callback(EarlyStoppingCallback)
    assert type(popped) is EarlyStoppingCallback
    assert popped.early_stopping_patience == 2


@MODES
def test_raise_policy_re_raises_the_native_error(mode: str, tmp_path: Path) -> None:
    trainer = with_config(mode, tmp_path, config("raise"), max_steps=4)
    with pytest.raises(RuntimeError, match=r"^native callback fails in step$"):
        trainer.train()
    assert trainer.state.global_step == 1


def test_disable_policy_turns_the_native_callback_off(tmp_path: Path) -> None:
    data = config("disable")
    data["callback_max_failures"] = 2
    trainer = with_config("attach", tmp_path, data, max_steps=5)
    native = raiser(trainer)
    trainer.train()
    assert trainer.state.global_step == 5
    # Disabled after its second failure: no later hook of it runs, train_end included.
    assert native.calls == {"train_begin": 1, "step": 2}
    errors = report(tmp_path)["callback_errors"]
    assert errors["disabled"] == [LABEL]
    assert errors["counts"] == [{"callback": LABEL, "hook": "on_step_end", "count": 2}]
