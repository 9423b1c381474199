"""Session state: filed under stable keys, matched by arguments after a reorder, never swapped."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest

import callbridge


@attrs.define
class Counting(callbridge.Callback):
    """Counts steps; its state is the count and its own tag."""

    tag: str = ""
    count: int = attrs.field(default=0, init=False)

    def on_step_end(self, run: callbridge.Run) -> None:
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert state["tag"] == self.tag or not self.tag, "a state reached another entry"
        self.count = state["count"]


NAME = f"{__name__}.Counting"


def session(*entries: dict[str, Any]) -> callbridge.Session:
    return callbridge.bind({"custom_callbacks": list(entries)}, framework="hf").session


def entry(tag: str, **extra: Any) -> dict[str, Any]:
    return {"name": NAME, "args": {"tag": tag}, **extra}


def saved(*entries: dict[str, Any]) -> dict[str, Any]:
    first = session(*entries)
    for i, built in enumerate(first.entries):
        built.callback.count = 10 * (i + 1)
    return first.state_dict()


def counts(s: callbridge.Session) -> dict[str, int]:
    return {b.callback.tag: b.callback.count for b in s.entries}


def test_state_is_filed_by_name_and_repeat_not_by_position() -> None:
    state = saved(entry("a"), entry("b"))
    assert sorted(state["entries"]) == [NAME, f"{NAME}#2"]


def test_a_reorder_is_matched_by_arguments_and_named(caplog: pytest.LogCaptureFixture) -> None:
    state = saved(entry("a"), entry("b"))
    later = session(entry("b"), entry("a"))
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        later.load_state_dict(state, where="ckpt")
    assert counts(later) == {"a": 10, "b": 20}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert all("were reordered" in m and "in ckpt" in m for m in messages)


def test_ids_file_state_whatever_the_order_and_arguments(caplog: pytest.LogCaptureFixture) -> None:
    state = saved(entry("a", id="first"), entry("b", id="second"))
    later = session(entry("", id="second"), entry("", id="first"))
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        later.load_state_dict(state)
    assert [b.callback.count for b in later.entries] == [20, 10]
    # Arguments changed under the same id: loaded, and said.
    assert sum("other arguments" in r.getMessage() for r in caplog.records) == 2


def test_a_state_no_entry_takes_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    state = saved(entry("a"), entry("b"))
    later = session(entry("a"))
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        later.load_state_dict(state, where="ckpt")
    assert counts(later) == {"a": 10}
    assert [r.getMessage() for r in caplog.records] == [
        f"callbridge: ckpt holds state for '{NAME}#2', which no entry of this configuration "
        "takes; it is ignored."
    ]


def test_a_repeated_id_is_a_config_error_naming_both_entries() -> None:
    with pytest.raises(callbridge.ConfigError) as exc:
        session(entry("a", id="x"), entry("b", id="x"))
    assert "custom_callbacks[1].id: id 'x' is already used by custom_callbacks[0]" in str(exc.value)


class ForeignCallback:
    """Stands in for a native callback of another framework (HF's, judged by its module)."""

    def __init__(self, patience: int = 1) -> None:
        self.patience = patience


ForeignCallback.__module__ = "transformers.trainer_callback"


@attrs.define
class Adopted(callbridge.Callback):
    """What an adapter's ``adopt`` makes of a foreign callback: a neutral one that drives it."""

    inner: Any = None
    steps: int = 0

    def on_step_end(self, run: callbridge.Run) -> None:
        self.steps += 1
        if self.steps == 2:
            raise RuntimeError("the foreign callback failed")


def foreign_registry() -> callbridge.Registry:
    registry = callbridge.Registry()
    registry.register("foreign", ForeignCallback)
    registry.register("counting", Counting)
    return registry


def test_adopt_runs_a_foreign_callback_as_a_neutral_one_in_its_place() -> None:
    """bind(adopt=...): the adapter's neutral stand-in takes the entry's place, key and policy."""
    config = {"custom_callbacks": ["counting", {"name": "foreign", "args": {"patience": 3}}]}
    seen: list[str] = []

    def adopt(built: callbridge.Built) -> callbridge.Callback | None:
        seen.append(built.label)
        return Adopted(built.callback)

    binding = callbridge.bind(
        config, framework="lightning", registry=foreign_registry(), adopt=adopt
    )

    assert seen == ["foreign (custom_callbacks[1])"]
    assert binding.layout() == [range(0, 2)]  # one segment: no native callback left
    adopted = binding.session.entries[1]
    assert (adopted.label, adopted.key) == ("foreign (custom_callbacks[1])", "foreign")
    assert isinstance(adopted.callback, Adopted)
    assert adopted.callback.inner.patience == 3
    session = binding.session
    for _ in range(3):
        session.contract.step_end(1, 0.5)
        session.deliver(session.take())
    assert session.dispatcher.errors.counts == {("foreign (custom_callbacks[1])", "on_step_end"): 1}


def test_adopt_returning_none_keeps_the_error_naming_both_frameworks() -> None:
    config = {"custom_callbacks": ["foreign"]}
    with pytest.raises(callbridge.ConfigError, match="is a Hugging Face Trainer"):
        callbridge.bind(
            config, framework="lightning", registry=foreign_registry(), adopt=lambda built: None
        )
