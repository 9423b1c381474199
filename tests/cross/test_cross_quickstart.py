"""The quickstart (``examples/quickstart``), run end to end as ``nox -s demo`` runs it.

One ``pyproject.toml`` drives the HF ``Trainer`` and Lightning on a tiny GPT-2; the
script starts its own receiver on 127.0.0.1, prints a summary line per trainer,
writes ``summary.json`` and a PNG of the live and BEMA evaluation losses. Here with
fewer steps than the demo's default, in a fresh Python.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from support.processes import run_child

pytest.importorskip("matplotlib")  # the demo's plot; `nox -s demo` installs it
pytest.importorskip("urllib3")  # the monitor's HTTP client (the core's `monitor` extra)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPT = EXAMPLES / "quickstart" / "quickstart.py"
STEPS, EVAL_EVERY = 30, 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The table's first figures after the trainer's name, as summary.json names them.
COUNTS = ("steps", "evaluations", "monitor_events", "records_delivered", "slack_messages")


def run_quickstart(out: Path) -> str:
    """Run the script with ``examples/company`` importable; its stdout, or fail with its output."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # Absolute: the child runs in another directory, where `PYTHONPATH=src` points nowhere.
    entries = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLES / "company"), *entries])
    command = [sys.executable, str(SCRIPT), "--out", str(out)]
    command += ["--steps", str(STEPS), "--eval-every", str(EVAL_EVERY)]
    # The timeout guards against a hang, not a time check: a loaded CPU may take long.
    return run_child(command, cwd=out.parent, env=env, timeout=900).stdout


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One run for every test here (it trains twice): its stdout and its output folder."""
    out = tmp_path_factory.mktemp("quickstart") / "out"
    return run_quickstart(out), out


def summary(out: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {row["trainer"]: row for row in rows}


def test_the_summary_table_has_a_line_per_trainer(quickstart: tuple[str, Path]) -> None:
    stdout, out = quickstart
    lines = stdout.splitlines()
    header = next(n for n, line in enumerate(lines) if line.startswith("trainer "))
    for offset, (name, row) in enumerate(summary(out).items(), start=2):
        cells = lines[header + offset].split()
        assert " ".join(cells[: len(name.split())]) == name
        figures = cells[len(name.split()) :]
        assert figures[: len(COUNTS)] == [str(row[key]) for key in COUNTS]


def test_both_trainers_ran_the_same_config_to_the_end(quickstart: tuple[str, Path]) -> None:
    _, out = quickstart
    rows = summary(out)
    assert list(rows) == ["HF Trainer", "Lightning"]
    for row in rows.values():
        assert row["steps"] == STEPS
        assert row["evaluations"] == STEPS // EVAL_EVERY


def test_every_monitor_record_reached_the_receiver(quickstart: tuple[str, Path]) -> None:
    _, out = quickstart
    for row in summary(out).values():
        assert row["records_delivered"] > 0
        assert row["records_delivered"] == row["monitor_events"]
        # Start, progress every 25 steps, completion: the company notifier reached it too.
        assert row["slack_messages"] == row["slack_sent"] == 3


def test_live_and_bema_losses_at_the_same_evaluations(quickstart: tuple[str, Path]) -> None:
    _, out = quickstart
    for row in summary(out).values():
        live, bema = row["curves"]["live"], row["curves"]["bema"]
        steps = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
        assert [s for s, _ in live] == [s for s, _ in bema] == steps
        # BEMA is first updated at step 4, so every evaluation here ran on other weights.
        assert all(a != b for (_, a), (_, b) in zip(live, bema, strict=True))
        assert row["live_eval_loss"] == live[-1][1]
        assert row["bema_eval_loss"] == bema[-1][1]


def test_the_plot_is_a_png(quickstart: tuple[str, Path]) -> None:
    stdout, out = quickstart
    png = out / "quickstart_losses.png"
    assert f"plot:    {png}" in stdout.splitlines()
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    # The first chunk is IHDR: width and height, big-endian, after its length and type.
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 600
    assert height > 300
