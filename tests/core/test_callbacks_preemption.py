"""``preemption`` under the Driver: a signal during training asks for a save and a stop there."""

from __future__ import annotations

import logging
import os
import signal

import attrs
import pytest

import callbridge
from callbridge.callbacks.preemption import PreemptionCallback
from callbridge.testing import Driver


@attrs.define
class SignalAt(callbridge.Callback):
    """Sends ``signum`` to this process during step ``step`` (as a scheduler would)."""

    step: int
    signum: int = signal.SIGTERM

    def on_step_begin(self, run: callbridge.Run) -> None:
        if run.state.global_step + 1 == self.step:
            os.kill(os.getpid(), self.signum)


@attrs.define
class Saves(callbridge.Callback):
    steps: list[int] = attrs.Factory(list)

    def on_save(self, run: callbridge.Run) -> None:
        self.steps.append(run.state.global_step)


def test_sigterm_saves_and_stops_at_the_end_of_the_step(caplog: pytest.LogCaptureFixture) -> None:
    preemption, saves = PreemptionCallback(), Saves()
    before = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        # A log at every step: the save asked for in on_step_end still comes after it.
        result = Driver([SignalAt(4), preemption, saves], max_steps=20, logging_steps=1).run()
    assert result.run.state.global_step == 4
    assert saves.steps == [4]
    assert (preemption.received, preemption.stopped_at_step) == ("SIGTERM", 4)
    assert (
        "callbridge preemption: SIGTERM received; saving a checkpoint and stopping at step 4 "
        "(rank 0)" in caplog.messages
    )
    assert signal.getsignal(signal.SIGTERM) is before  # the old handler is back


def test_a_configured_signal_and_no_save() -> None:
    preemption, saves = PreemptionCallback(signals=["SIGUSR1"], save=False), Saves()
    result = Driver(
        [SignalAt(3, signal.SIGUSR1), preemption, saves], max_steps=20, logging_steps=None
    ).run()
    assert result.run.state.global_step == 3
    assert saves.steps == []
    assert preemption.received == "SIGUSR1"


def test_no_signal_no_stop() -> None:
    preemption = PreemptionCallback()
    result = Driver([preemption], max_steps=10).run()
    assert result.run.state.global_step == 10
    assert preemption.received is None


def test_the_handler_is_restored_when_training_fails() -> None:
    before = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(RuntimeError):
        Driver([PreemptionCallback(signals=["SIGUSR2"])], max_steps=10, raise_at_step=3).run()
    assert signal.getsignal(signal.SIGUSR2) is before


@pytest.mark.parametrize(
    ("signals", "message"),
    [
        (["SIGTREM"], "signals: unknown signal 'SIGTREM'. Did you mean 'SIGTERM'?"),
        (["SIGKILL"], "signals: SIGKILL cannot be caught; use SIGTERM or SIGUSR1"),
    ],
)
def test_a_signal_that_cannot_be_handled_is_refused(signals: list[str], message: str) -> None:
    config = {"custom_callbacks": [{"name": "preemption", "args": {"signals": signals}}]}
    with pytest.raises(callbridge.ConfigError) as info:
        callbridge.build({**config, "strict": True})
    assert message in str(info.value)
