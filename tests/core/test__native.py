"""callbridge._native: a native callback's overridden hooks are shadowed under the error policy.

The core has no framework installed: a class named and placed like HF's ``TrainerCallback``
stands in for it here; tests/hf/test_hf_native_errors.py and
tests/lightning/test_lightning_native_errors.py run real trainers.
"""

from __future__ import annotations

from typing import Any

import pytest

from callbridge._dispatch import Dispatcher
from callbridge._native import Shadow, isolate, overridden_hooks


class TrainerCallback:
    """Stands in for transformers.TrainerCallback: every hook a no-op."""

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_log(self, *args: Any, **kwargs: Any) -> None:
        pass


TrainerCallback.__module__ = "transformers.trainer_callback"


class Failing(TrainerCallback):
    def __init__(self) -> None:
        self.calls = 0

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        raise ValueError("boom")

    def helper(self) -> str:
        return "not a hook"


def test_only_overridden_hooks_are_shadowed() -> None:
    cb = Failing()
    assert overridden_hooks(cb) == ["on_step_end"]
    assert overridden_hooks(object()) == []  # not a framework callback: left alone
    assert isolate(cb, "failing", Dispatcher([])) == ["on_step_end"]
    assert "on_step_end" in vars(cb)
    assert "on_log" not in vars(cb)
    assert type(cb) is Failing
    assert isinstance(cb.on_step_end, Shadow)
    assert cb.on_step_end.__wrapped__.__func__ is Failing.on_step_end


@pytest.mark.parametrize("policy", ["log", "disable"])
def test_failures_are_counted_in_the_dispatchers_summary(policy: Any) -> None:
    dispatcher = Dispatcher([], on_error=policy, max_failures=2)
    cb = Failing()
    isolate(cb, "failing", dispatcher)
    for _ in range(4):
        assert cb.on_step_end(None, None, None) is None
    expected = 4 if policy == "log" else 2
    assert (cb.calls, dispatcher.errors.counts) == (
        expected,
        {("failing", "on_step_end"): expected},
    )
    assert dispatcher.errors.disabled == ([] if policy == "log" else ["failing"])


def test_raise_policy_re_raises() -> None:
    cb = Failing()
    isolate(cb, "failing", Dispatcher([], on_error="raise"))
    with pytest.raises(ValueError, match=r"^boom$"):
        cb.on_step_end(None, None, None)


def test_isolating_twice_shadows_once() -> None:
    dispatcher = Dispatcher([])
    cb = Failing()
    isolate(cb, "failing", dispatcher)
    shadow = cb.on_step_end
    isolate(cb, "failing", dispatcher)
    assert cb.on_step_end is shadow


class Session:
    """The owner's shape: the dispatcher is read at call time (a new run may replace it)."""

    def __init__(self) -> None:
        self.dispatcher = Dispatcher([])


def test_the_owner_s_current_dispatcher_counts() -> None:
    owner = Session()
    cb = Failing()
    isolate(cb, "failing", owner)
    cb.on_step_end()
    owner.dispatcher = Dispatcher([])  # a new run
    cb.on_step_end()
    assert owner.dispatcher.errors.counts == {("failing", "on_step_end"): 1}


def test_an_isolated_callback_pickles_and_stays_isolated() -> None:
    """Lightning's spawn strategies pickle the trainer with its callbacks."""
    import pickle

    owner = Session()
    cb = Failing()
    isolate(cb, "failing", owner)
    copy = pickle.loads(pickle.dumps((cb, owner)))
    restored, restored_owner = copy
    assert type(restored) is Failing
    restored.on_step_end()
    assert restored.calls == 1
    assert restored_owner.dispatcher.errors.counts == {("failing", "on_step_end"): 1}
    assert restored.on_step_end.__wrapped__.__self__ is restored
