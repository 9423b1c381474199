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
