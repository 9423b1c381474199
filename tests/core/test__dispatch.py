"""Hook order, exception isolation, rank filtering and stop requests (callbridge._dispatch), driven
by the pure-Python loop of callbridge.testing.Driver."""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest

import callbridge
from callbridge import Dispatcher, ErrorSummary, Run
from callbridge.testing import Driver

from sample_callbacks import Recorder  # isort: skip  (tests/fixtures/plugins, via conftest)


class Failing(callbridge.Callback):
    """Raises in ``on_step_end`` (every step, or from ``from_step`` on) and counts its calls."""

    def __init__(self, from_step: int = 1) -> None:
        self.from_step = from_step
        self.calls = 0
        self.logs = 0

    def on_step_end(self, run: Run) -> None:
        self.calls += 1
        if run.state.global_step >= self.from_step:
            raise ValueError(f"boom at {run.state.global_step}")

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        self.logs += 1


class StopAt(callbridge.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, run: Run) -> None:
        if run.state.global_step == self.step:
            run.control.should_stop = True


class MainOnly(Recorder):
    rank_zero_only: ClassVar[bool] = True


class SeesException(callbridge.Callback):
    def __init__(self) -> None:
        self.seen: list[BaseException] = []

    def on_exception(self, run: Run, exc: BaseException) -> None:
        self.seen.append(exc)


def hooks_of(tag: str) -> list[tuple[str, int]]:
    return [(hook, step) for t, hook, step in Recorder.journal if t == tag]


def test_hooks_are_called_in_list_order() -> None:
    Driver([Recorder("a"), Recorder("b"), Recorder("c")], max_steps=2).run()
    tags_per_event: dict[tuple[str, int], list[str]] = {}
    for tag, hook, step in Recorder.journal:
        tags_per_event.setdefault((hook, step), []).append(tag)
    assert list(tags_per_event.values()) == [["a", "b", "c"]] * len(tags_per_event)
    assert list(tags_per_event) == [
        ("on_train_begin", 0),
        ("on_step_end", 1),
        ("on_log", 1),
        ("on_step_end", 2),
        ("on_log", 2),
        ("on_train_end", 2),
    ]


def test_a_failing_callback_does_not_stop_the_others_or_training(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = Failing()
    with caplog.at_level(logging.ERROR, logger="callbridge"):
        result = Driver([failing, Recorder("after")], max_steps=6).run()
    assert result.run.state.global_step == 6
    assert hooks_of("after").count(("on_log", 6)) == 1
    assert failing.calls == 6


def test_log_policy_logs_once_per_callback_and_hook_and_counts_every_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        result = Driver([Failing()], max_steps=7, on_error="log").run()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "callbridge: callback Failing (0) raised in on_step_end (later errors of this hook are "
        "counted, "
        "not logged; callback_errors = 'raise' makes them stop training)"
    ]
    assert errors[0].exc_info is not None
    assert str(errors[0].exc_info[1]) == "boom at 1"
    assert result.errors.counts == {("Failing (0)", "on_step_end"): 7}
    assert result.errors.disabled == []
    # The run's summary, logged once at the end:
    assert (
        caplog.records[-1].getMessage()
        == "callbridge: 7 callback errors: Failing (0).on_step_end x7"
    )
    assert str(result.errors) == "callbridge: 7 callback errors: Failing (0).on_step_end x7"


def test_disable_policy_turns_a_callback_off_after_max_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = Failing(from_step=3)
    with caplog.at_level(logging.ERROR, logger="callbridge"):
        result = Driver([failing], max_steps=10, on_error="disable", max_failures=2).run()
    assert failing.calls == 4  # steps 1, 2 fine; 3 and 4 fail; never called again
    assert failing.logs == 3  # its other hooks stop too: no on_log after the failing step 4
    assert result.errors.counts == {("Failing (0)", "on_step_end"): 2}
    assert result.errors.disabled == ["Failing (0)"]
    assert (
        "callbridge: disabled callback Failing (0) after 2 failures; it is not called again this "
        "run" in [r.getMessage() for r in caplog.records]
    )
    assert str(result.errors).endswith("; disabled: Failing (0)")


def test_raise_policy_propagates_out_of_the_run_after_on_exception() -> None:
    witness = SeesException()
    with pytest.raises(ValueError, match="boom at 2") as info:
        Driver([Failing(from_step=2), witness], max_steps=5, on_error="raise").run()
    assert witness.seen == [info.value]


def test_the_config_chooses_the_error_policy() -> None:
    callbridge.register("acme.failing", Failing)
    driver = Driver.from_config(
        {
            "callback_errors": "disable",
            "callback_max_failures": 1,
            "custom_callbacks": ["acme.failing"],
        },
        max_steps=3,
    )
    result = driver.run()
    assert result.errors.disabled == ["acme.failing (custom_callbacks[0])"]


def test_rank_zero_only_callbacks_are_skipped_on_other_ranks() -> None:
    Driver([MainOnly("main"), Recorder("every")], max_steps=2, rank=1, world_size=2).run()
    assert hooks_of("main") == []
    assert hooks_of("every")[0] == ("on_train_begin", 0)


def test_rank_zero_only_callbacks_run_on_rank_zero() -> None:
    Driver([MainOnly("main")], max_steps=2, rank=0, world_size=2).run()
    assert hooks_of("main")[-1] == ("on_train_end", 2)


def test_should_stop_ends_training_at_that_step() -> None:
    result = Driver([StopAt(3), Recorder("r")], max_steps=10, steps_per_epoch=2).run()
    assert result.run.state.global_step == 3
    assert hooks_of("r")[-3:] == [("on_step_end", 3), ("on_log", 3), ("on_train_end", 3)]
    assert len(result.logged) == 3


def test_on_exception_receives_the_training_error() -> None:
    witness = SeesException()
    with pytest.raises(RuntimeError, match="training failed at step 4") as info:
        Driver([witness], max_steps=10, raise_at_step=4).run()
    assert witness.seen == [info.value]


def test_an_error_inside_on_exception_never_hides_the_training_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BadHandler(callbridge.Callback):
        def on_exception(self, run: Run, exc: BaseException) -> None:
            raise KeyError("handler bug")

    with (
        caplog.at_level(logging.ERROR, logger="callbridge"),
        pytest.raises(RuntimeError, match="step 2"),
    ):
        Driver([BadHandler()], max_steps=5, raise_at_step=2, on_error="raise").run()
    assert "raised in on_exception" in caplog.text


def test_only_callbacks_that_override_a_hook_are_called_for_it() -> None:
    dispatcher = Dispatcher([("rec", Recorder()), ("plain", callbridge.Callback())])
    assert dispatcher.has("on_log")
    assert not dispatcher.has("on_save")


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"on_error must be one of \('log', 'disable', 'raise'\) \(got 'ignore'\)"
    ):
        Dispatcher([], on_error="ignore")  # type: ignore[arg-type]


def test_an_empty_summary_says_so() -> None:
    assert str(ErrorSummary()) == "callbridge: no callback errors"


def test_an_adapters_own_fact_is_called_under_the_same_policy() -> None:
    """call_fact: a failure is blamed on that callback and counted; once disabled, not called."""
    failing = Failing()
    calls: list[str] = []

    def fact(hook: str) -> None:
        calls.append(hook)
        raise ValueError("boom in a fact")

    dispatcher = Dispatcher([("Failing (0)", failing)], on_error="disable", max_failures=2)
    for _ in range(3):
        dispatcher.call_fact(0, "on_substep_end", fact, "on_substep_end")
    assert calls == ["on_substep_end"] * 2
    assert dispatcher.errors.counts == {("Failing (0)", "on_substep_end"): 2}
    assert dispatcher.errors.disabled == ["Failing (0)"]

    raising = Dispatcher([("Failing (0)", failing)], on_error="raise")
    with pytest.raises(ValueError, match="boom in a fact"):
        raising.call_fact(0, "on_substep_end", fact, "on_substep_end")


def test_disable_policy_keeps_a_callback_that_meets_the_other_ranks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Off on one rank only, a callback in collectives would hang the others: it stays on."""

    class InCollectives(callbridge.Callback):
        in_collectives = True
        calls = 0

        def on_step_end(self, run: callbridge.Run) -> None:
            InCollectives.calls += 1
            raise RuntimeError("fails on this rank")

    dispatcher = Dispatcher([("gathers", InCollectives())], on_error="disable", max_failures=2)
    run = callbridge.Run("test")
    with caplog.at_level(logging.ERROR, logger="callbridge"):
        for _ in range(4):
            dispatcher.call("on_step_end", run)
    assert InCollectives.calls == 4
    assert dispatcher.errors.disabled == []
    assert dispatcher.errors.counts == {("gathers", "on_step_end"): 4}
    assert sum("is not disabled after 2 failures" in r.getMessage() for r in caplog.records) == 1
