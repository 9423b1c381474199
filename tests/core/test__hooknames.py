"""A neutral callback's method named like a hook but none: one warning at build, with the fix."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import callbridge
from callbridge._hooknames import misnamed_hooks


class Misspelled(callbridge.Callback):
    def on_evaluation(self, run: callbridge.Run, metrics: dict[str, float]) -> None:
        pass

    def on_step_ended(self, run: callbridge.Run) -> None:
        pass

    def on_log(self, run: callbridge.Run, logs: dict[str, float]) -> None:
        pass


class NativeNames(callbridge.Callback):
    def on_train_batch_end(self, *args: Any) -> None:
        pass

    def on_substep_end(self, *args: Any) -> None:
        pass


class Inherited(Misspelled):
    """A subclass inherits its parent's misnamed methods: they are still never called."""


class Fine(callbridge.Callback):
    rank_zero_only = True

    def on_step_end(self, run: callbridge.Run) -> None:
        pass

    def upload(self) -> None:
        pass


def built(name: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    registry = callbridge.Registry()
    registry.register("cb", globals()[name])
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        callbridge.build({"custom_callbacks": ["cb"]}, registry=registry, strict=True)
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_misspelled_hook_gets_a_warning_with_the_close_match(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert built("Misspelled", caplog) == [
        "callbridge: <mapping>: custom_callbacks[0]: Misspelled.on_evaluation is never called: "
        "no hook has that name. Did you mean on_evaluate? (to keep a helper method, name it "
        "without the on_ prefix)",
        "callbridge: <mapping>: custom_callbacks[0]: Misspelled.on_step_ended is never called: "
        "no hook has that name. Did you mean on_step_end? (to keep a helper method, name it "
        "without the on_ prefix)",
    ]


def test_a_native_hook_name_says_which_neutral_hook_to_use(
    caplog: pytest.LogCaptureFixture,
) -> None:
    messages = built("NativeNames", caplog)
    assert len(messages) == 2
    assert (
        "NativeNames.on_substep_end is never called: it is a trainer's own hook name, not a "
        "neutral one. Use on_step_end (neutral steps are optimizer steps, not micro-batches)"
    ) in messages[0]
    assert (
        "NativeNames.on_train_batch_end is never called: it is a trainer's own hook name, not "
        "a neutral one. Use on_step_end (after each optimizer step)"
    ) in messages[1]


def test_inherited_misnamed_methods_are_found_and_correct_classes_are_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert len(misnamed_hooks(Inherited())) == 2
    assert built("Fine", caplog) == []


def test_native_callbacks_and_plain_objects_are_not_judged() -> None:
    class NotNeutral:
        def on_evaluation(self) -> None:
            pass

    assert misnamed_hooks(NotNeutral()) == []
