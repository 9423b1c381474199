"""Commands to a running run: ``callbridge ctl`` validates and appends, ``control`` applies.

The run here is a real :class:`callbridge.Session` fed step by step through its
contract, as an adapter feeds it (no trainer: the trainers' runs are in
``tests/cross/test_cross_control.py``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import attrs
import pytest

import callbridge
from callbridge._cli import main
from callbridge._control import AUDIT, COMMANDS, folder


@attrs.define
class Counter(callbridge.Callback):
    steps: int = 0

    def on_step_end(self, run: callbridge.Run) -> None:
        self.steps += 1


class Run:
    """A session of ``control``, ``early_stopping`` and a step counter, driven by hand."""

    def __init__(self, run_dir: Path, state: dict[str, Any] | None = None) -> None:
        callbridge.register("tests.counter", Counter, replace=True)
        config = {
            "custom_callbacks": ["control", "early_stopping", "tests.counter"],
            "strict": True,
        }
        self.session = callbridge.bind(config, framework="hf").session
        self.session.run.output_dir = run_dir
        if state:
            self.session.load_state_dict(state)
        self.control, self.early_stopping, self.counter = (b.callback for b in self.session.entries)
        self.step = 0
        self.session.begin()
        self.session.contract.train_begin(
            global_step=0, epoch=0.0, max_steps=100, num_epochs=1, rank=0, world_size=1,
            is_main_process=True,
        )  # fmt: skip
        self.session.deliver(self.session.take())

    def advance(self) -> callbridge.Control:
        self.step += 1
        self.session.contract.step_begin()
        self.session.deliver(self.session.take())
        self.session.contract.step_end(self.step, self.step / 100)
        return self.session.deliver(self.session.take())


def ctl(run_dir: Path, *args: str) -> tuple[int, str, str]:
    out = io.StringIO()
    err = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["ctl", str(run_dir), *args])
    return code, out.getvalue(), err.getvalue()


def audit(run_dir: Path) -> list[dict[str, Any]]:
    text = (folder(run_dir) / AUDIT).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_without_a_running_control_callback_ctl_says_how_to_get_one(tmp_path: Path) -> None:
    code, _, err = ctl(tmp_path, "stop")
    assert code == 1
    assert "No training with the 'control' callback has started in" in err
    assert 'add "control" to custom_callbacks' in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set", "early_stopping.early_stoping_patience=1"),
         "early_stopping: unknown argument 'early_stoping_patience'. Did you mean "
         "'early_stopping_patience'? Arguments: early_stopping_patience, "
         "early_stopping_threshold, metric, mode."),
        (("set", "early_stopping.metric=loss"),
         "early_stopping.metric cannot change while the run is going (it can: "
         "early_stopping_patience, early_stopping_threshold); change it in the configuration "
         "and restart"),
        (("set", "early_stopping.early_stopping_patience=two"),
         "early_stopping.early_stopping_patience: expected int (got 'two' that is a str)"),
        (("disable", "early_stoping"),
         "unknown callback 'early_stoping'. Did you mean 'early_stopping'? Available: control, "
         "early_stopping, tests.counter."),
        (("set", "bema.update_freq=3"), "unknown callback 'bema'."),
        (("disable", "control"), "disable: 'control' is the control callback itself"),
        (("set", "early_stopping"), "set: expected NAME.argument=VALUE (got 'early_stopping')"),
        (("stop", "now"), "stop takes no argument (got 'now')"),
    ],
)  # fmt: skip
def test_a_bad_command_is_refused_and_never_written(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    Run(tmp_path)
    code, out, err = ctl(tmp_path, *args)
    assert (code, out) == (1, "")
    assert err.startswith(f"callbridge ctl: {message}")
    assert not (folder(tmp_path) / COMMANDS).exists()


def test_commands_apply_at_the_next_step_boundary_and_are_acknowledged(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.advance()
    assert ctl(tmp_path, "set", "early_stopping.early_stopping_patience=4")[0] == 0
    assert ctl(tmp_path, "disable", "tests.counter")[0] == 0
    run.advance()  # step 2: both apply, from the event after this step_end on
    assert run.early_stopping.early_stopping_patience == 4
    assert run.counter.steps == 2
    run.advance()
    assert run.counter.steps == 2  # off
    ctl(tmp_path, "enable", "tests.counter")
    run.advance()  # step 4: on again after this step_end
    assert run.counter.steps == 2
    run.advance()
    assert run.counter.steps == 3
    assert [(r["command"], r["status"], r["step"]) for r in audit(tmp_path)] == [
        ("set", "applied", 2),
        ("disable", "applied", 2),
        ("enable", "applied", 4),
    ]
    code, out, _ = ctl(tmp_path, "status")
    assert code == 0
    assert "  step 2: applied set early_stopping.early_stopping_patience=4" in out
    assert "  early_stopping (enabled; can change: early_stopping_patience: int, " in out


def test_stop_asks_for_a_checkpoint_and_a_stop(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.advance()
    ctl(tmp_path, "stop")
    requests = run.advance()
    assert (requests.should_stop, requests.should_save) == (True, True)


def test_a_malformed_line_is_refused_and_later_commands_still_apply(tmp_path: Path) -> None:
    run = Run(tmp_path)
    path = folder(tmp_path) / COMMANDS
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"command": "set", "name": \n')  # a broken line, written by hand
        fh.write(json.dumps({"id": "x1", "command": "set", "name": "early_stopping",
                             "arg": "early_stopping_patience", "value": "0"}) + "\n")  # fmt: skip
        fh.write(json.dumps({"id": "x2", "command": "sotp"}) + "\n")
    ctl(tmp_path, "set", "early_stopping.early_stopping_patience=3")
    run.advance()
    records = audit(tmp_path)
    assert [r["status"] for r in records] == ["refused", "refused", "refused", "applied"]
    assert records[0]["reason"].startswith("malformed line: ")
    assert records[1]["reason"] == "'early_stopping_patience' must be >= 1: 0"
    assert records[2]["reason"] == (
        "unknown command 'sotp'. Did you mean 'stop'? Available: stop, save, evaluate, enable, "
        "disable, set, status."
    )
    assert run.early_stopping.early_stopping_patience == 3


def test_a_line_still_being_written_waits_for_its_end(tmp_path: Path) -> None:
    run = Run(tmp_path)
    path = folder(tmp_path) / COMMANDS
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"id": "y", "command": "save"')
    run.advance()
    assert not (folder(tmp_path) / AUDIT).exists()
    with path.open("a", encoding="utf-8") as fh:
        fh.write("}\n")
    assert run.advance().should_save


def test_a_resumed_run_keeps_the_effects_and_applies_nothing_twice(tmp_path: Path) -> None:
    run = Run(tmp_path)
    ctl(tmp_path, "set", "early_stopping.early_stopping_patience=5")
    ctl(tmp_path, "disable", "tests.counter")
    ctl(tmp_path, "save")
    run.advance()
    state = run.session.state_dict()
    again = Run(tmp_path, state)
    assert again.early_stopping.early_stopping_patience == 5
    requests = again.advance()
    assert not requests.should_save  # the save was applied before the checkpoint
    assert again.counter.steps == 0  # still disabled
    assert len(audit(tmp_path)) == 3


def test_a_resumed_run_without_the_state_skips_what_the_audit_acknowledged(tmp_path: Path) -> None:
    run = Run(tmp_path)
    ctl(tmp_path, "save")
    run.advance()
    again = Run(tmp_path)  # e.g. resumed from a checkpoint older than the command
    assert not again.advance().should_save


def test_set_patience_changes_early_stopping_from_the_acknowledged_step_on(tmp_path: Path) -> None:
    """Patience 5 would wait; set to 1 at step 3, the next evaluation without progress stops."""
    run = Run(tmp_path)
    run.early_stopping.early_stopping_patience = 5  # as configured
    session = run.session

    def evaluate(loss: float) -> callbridge.Control:
        session.contract.evaluate_begin()
        session.deliver(session.take())
        session.contract.evaluate({"eval_loss": loss})
        return session.deliver(session.take())

    run.advance()
    assert not evaluate(1.0).should_stop  # the best so far
    run.advance()
    assert not evaluate(1.5).should_stop  # 1 of 5
    ctl(tmp_path, "set", "early_stopping.early_stopping_patience=1")
    run.advance()  # step 3 applies it
    assert audit(tmp_path)[0]["step"] == 3
    assert evaluate(1.5).should_stop  # wait 2 >= 1
    assert run.early_stopping.stopped_at_step == 3


def test_the_reporter_shows_the_audit_trail(tmp_path: Path) -> None:
    config = {"custom_callbacks": ["control", "reporter"], "strict": True}
    session = callbridge.bind(config, framework="hf").session
    session.run.output_dir = tmp_path
    session.begin()
    session.contract.train_begin(
        global_step=0, epoch=0.0, max_steps=5, num_epochs=1, rank=0, world_size=1,
        is_main_process=True,
    )  # fmt: skip
    session.deliver(session.take())
    ctl(tmp_path, "save")
    session.contract.step_begin()
    session.contract.step_end(1, 0.2)
    session.contract.train_end()
    session.deliver(session.take())
    report = json.loads((tmp_path / "callbridge_report.json").read_text(encoding="utf-8"))
    [record] = report["operations"]
    assert (record["command"], record["status"], record["step"]) == ("save", "applied", 1)


def test_evaluate_is_refused_under_lightning_which_has_no_such_request(tmp_path: Path) -> None:
    config = {"custom_callbacks": ["control"], "strict": True}
    session = callbridge.bind(config, framework="lightning").session
    session.run.output_dir = tmp_path
    session.begin()
    session.contract.train_begin(
        global_step=0, epoch=0.0, max_steps=5, num_epochs=1, rank=0, world_size=1,
        is_main_process=True,
    )  # fmt: skip
    session.deliver(session.take())
    ctl(tmp_path, "evaluate")
    session.contract.step_begin()
    session.contract.step_end(1, 0.2)
    assert not session.deliver(session.take()).should_evaluate
    [record] = audit(tmp_path)
    assert record["reason"] == "evaluate: Lightning has no evaluation request"
