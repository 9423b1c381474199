"""A second process operates a real running training, under HF and Lightning (``callbridge ctl``).

The training is a fresh Python (``support/preemption_script.py``), slowed by a pacer so
that it is still going when the commands arrive; each command is issued by another
fresh Python running ``python -m callbridge ctl``, as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from support.lightning_models import subprocess_env
from support.processes import finish_attempt

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "preemption_script.py"
RECORDER = "support.recorder.Recorder"


def write_config(root: Path) -> Path:
    config = {
        "custom_callbacks": [
            "control",
            {"name": "early_stopping", "args": {"early_stopping_patience": 5}},
            RECORDER,
            {"name": "support.pacer.Pacer", "args": {"path": str(root / "progress"), "sleep": 0.1}},
        ],
        "strict": True,
    }
    path = root / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def launch(framework: str, root: Path, attempt: str, max_steps: int, *extra: str) -> Any:
    with (root / f"{attempt}.log").open("w", encoding="utf-8") as log:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), framework, "--root", str(root / "run"), "--config",
             str(root / "config.json"), "--max-steps", str(max_steps), "--attempt", attempt,
             *extra],
            cwd=root, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip


def ctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callbridge", "ctl", str(root / "run"), *args],
        cwd=root, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def acknowledged(proc: subprocess.CompletedProcess[str]) -> int:
    """The step of ``step N: applied ...`` in a ``ctl --wait`` answer."""
    line = proc.stdout.splitlines()[-1]
    assert line.startswith("step "), proc.stdout + proc.stderr
    assert ": applied " in line, proc.stdout + proc.stderr
    return int(line.split()[1].rstrip(":"))


def wait_for(path: Path, proc: Any) -> None:
    deadline = time.monotonic() + 300
    while not path.exists():
        assert proc.poll() is None, "the training ended before it published its callbacks"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("framework", ["hf", "lightning"])
def test_commands_from_another_process_reach_a_running_training(
    framework: str, tmp_path: Path
) -> None:
    write_config(tmp_path)
    proc = launch(framework, tmp_path, "0", 400)
    try:
        wait_for(tmp_path / "run" / "callbridge-control" / "callbacks.json", proc)

        patience = ctl(tmp_path, "set", "early_stopping.early_stopping_patience=1", "--wait", "120")
        assert patience.returncode == 0, patience.stderr
        assert patience.stdout.startswith("accepted set early_stopping.early_stopping_patience=1")

        # Refused before they reach the run: nothing is written.
        typo = ctl(tmp_path, "disable", "early_stoping")
        assert typo.returncode == 1
        assert "unknown callback 'early_stoping'. Did you mean 'early_stopping'?" in typo.stderr
        bad = ctl(tmp_path, "set", "early_stopping.early_stopping_patience=soon")
        assert "expected int (got 'soon' that is a str)" in bad.stderr
        # Refused by the run: written by hand, past the CLI; later commands still apply.
        commands = tmp_path / "run" / "callbridge-control" / "commands.jsonl"
        with commands.open("a", encoding="utf-8") as fh:
            fh.write("{not json\n")
            fh.write(json.dumps({"id": "h1", "command": "disable", "name": "bema"}) + "\n")
            fh.write(json.dumps({"id": "h2", "command": "set", "name": "early_stopping",
                                 "arg": "mode", "value": "max"}) + "\n")  # fmt: skip

        off = acknowledged(ctl(tmp_path, "disable", RECORDER, "--wait", "120"))
        on = acknowledged(ctl(tmp_path, "enable", RECORDER, "--wait", "120"))
        stop = acknowledged(ctl(tmp_path, "stop", "--wait", "120"))
        first = finish_attempt(proc, tmp_path, "0")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    assert first["global_step"] == stop
    expected = f"checkpoint-{stop}" if framework == "hf" else f"step={stop}.ckpt"
    assert first["checkpoints"] == [expected]
    assert first["callbacks"]["EarlyStoppingCallback"]["early_stopping_patience"] == 1
    steps = [step for name, step in first["callbacks"]["Recorder"]["events"] if name == "step_end"]
    # Off after the step_end of `off`, on again after the step_end of `on`.
    assert off < on
    assert [s for s in steps if off < s <= on] == []
    assert steps[-1] == stop

    status = ctl(tmp_path, "status")
    assert status.returncode == 0
    lines = status.stdout.splitlines()
    audit = lines[lines.index("audit:") + 1 :]
    assert audit[0].startswith("  step ")
    assert "applied set early_stopping" in audit[0]
    assert "refused '{not json': malformed line: " in audit[1]
    assert "refused disable bema: unknown callback 'bema'." in audit[2]
    assert audit[3].endswith(
        "refused set early_stopping.mode=max: early_stopping.mode cannot change while the run "
        "is going (it can: early_stopping_patience, early_stopping_threshold); change it in the "
        "configuration and restart"
    )
    assert audit[4:] == [
        f"  step {off}: applied disable {RECORDER}",
        f"  step {on}: applied enable {RECORDER}",
        f"  step {stop}: applied stop",
    ]

    # The resumed run continues from the stop, keeps the new patience, re-applies nothing.
    second = finish_attempt(launch(framework, tmp_path, "1", stop + 3, "--resume"), tmp_path, "1")
    assert second["global_step"] == stop + 3
    assert second["callbacks"]["EarlyStoppingCallback"]["early_stopping_patience"] == 1
    assert len(ctl(tmp_path, "status").stdout.splitlines()) == len(lines)
