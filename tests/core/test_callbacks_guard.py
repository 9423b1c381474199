"""``guard`` under the Driver: a NaN/Inf loss or gradient norm, or a spike, stops training there."""

from __future__ import annotations

import logging
import math

import pytest

import callbridge
from callbridge.callbacks.guard import GuardCallback
from callbridge.testing import Driver


def losses(bad: dict[int, float], base: float = 1.0) -> object:
    """A loss of ``base`` at every step, except ``bad[step]``."""
    return lambda step: bad.get(step, base)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_stops_training_at_its_step(
    value: float, caplog: pytest.LogCaptureFixture
) -> None:
    guard = GuardCallback()
    with caplog.at_level(logging.ERROR, logger="callbridge"):
        result = Driver([guard], max_steps=20, loss=losses({7: value})).run()
    assert result.run.state.global_step == 7
    assert guard.stopped_at_step == 7
    assert guard.reason == f"loss is {value}"
    assert (
        f"callbridge guard: loss is {value} at step 7 (rank 0); stopping training. The last "
        "checkpoint before step 7 is the last good one."
    ) in caplog.messages


def test_a_normal_run_is_never_stopped() -> None:
    guard = GuardCallback(spike_factor=3.0, warmup=5)
    result = Driver([guard], max_steps=50).run()  # 2/sqrt(step): a falling loss
    assert result.run.state.global_step == 50
    assert guard.stopped_at_step is None


def test_a_non_finite_grad_norm_stops_training() -> None:
    guard = GuardCallback()
    driver = Driver([guard], max_steps=10)
    # The Driver logs loss and epoch only: a callback ahead of the guard adds grad_norm (as HF).

    class GradNorm(callbridge.Callback):
        def on_log(self, run: callbridge.Run, logs: dict[str, float]) -> None:
            logs["grad_norm"] = math.nan if run.state.global_step == 4 else 0.5

    driver.callbacks = [GradNorm(), guard]
    result = driver.run()
    assert result.run.state.global_step == 4
    assert guard.reason == "grad_norm is nan"


def test_the_guard_sees_a_step_when_it_is_logged() -> None:
    """With a log every 5 steps, a NaN at step 7 is seen at step 10 (HF averages it in)."""
    guard = GuardCallback()
    result = Driver([guard], max_steps=20, logging_steps=5, loss=losses({10: math.nan})).run()
    assert result.run.state.global_step == 10


def test_a_spike_after_the_warmup_stops_training(caplog: pytest.LogCaptureFixture) -> None:
    guard = GuardCallback(spike_factor=4.0, warmup=5, window=10)
    with caplog.at_level(logging.ERROR, logger="callbridge"):
        result = Driver([guard], max_steps=30, loss=losses({12: 5.0})).run()
    assert result.run.state.global_step == 12
    assert guard.reason == ("loss 5 is 5x the running median 1 of the last 10 (spike_factor 4)")


def test_no_spike_check_during_the_warmup() -> None:
    guard = GuardCallback(spike_factor=4.0, warmup=5)
    result = Driver([guard], max_steps=30, loss=losses({3: 50.0})).run()
    assert result.run.state.global_step == 30


def test_a_value_under_the_factor_is_no_spike() -> None:
    guard = GuardCallback(spike_factor=4.0, warmup=5)
    result = Driver([guard], max_steps=30, loss=losses({12: 3.9})).run()
    assert result.run.state.global_step == 30


def test_the_running_median_survives_a_resume() -> None:
    first = GuardCallback(spike_factor=4.0, warmup=5)
    Driver([first], max_steps=8).run()
    second = GuardCallback(spike_factor=4.0, warmup=5)
    second.load_state_dict(first.state_dict())
    assert list(second.history) == list(first.history)
    # Already warm: a spike at the first step after the resume is caught.
    result = Driver(
        [second], max_steps=20, start_step=8, loss=lambda s: 100.0 if s == 9 else 0.5
    ).run()
    assert result.run.state.global_step == 9


def test_a_stop_on_one_rank_is_seen_as_the_same_decision_on_the_others() -> None:
    """Each rank's guard decides on the same logged values (HF gathers the loss first)."""
    steps = {
        rank: Driver([GuardCallback()], max_steps=20, rank=rank, world_size=2,
                     loss=losses({6: math.nan})).run().run.state.global_step
        for rank in (0, 1)
    }  # fmt: skip
    assert steps == {0: 6, 1: 6}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"spike_factor": 1.0}, "spike_factor must be above 1.0 (got 1.0)"),
        ({"warmup": 0}, "'warmup' must be >= 1: 0"),
        ({"window": 0}, "'window' must be >= 1: 0"),
    ],
)
def test_bad_arguments_are_refused_by_check(args: dict[str, object], message: str) -> None:
    with pytest.raises(callbridge.ConfigError) as info:
        callbridge.build({"custom_callbacks": [{"name": "guard", "args": args}], "strict": True})
    assert message in str(info.value)


def test_guard_is_a_built_in() -> None:
    (guard,) = callbridge.build(
        {"custom_callbacks": [{"name": "guard", "args": {"spike_factor": "3"}}]}
    )
    assert isinstance(guard, GuardCallback)
    assert guard.spike_factor == 3.0
