"""SIGTERM to a real running training, under HF and Lightning: checkpoint, clean exit, exact resume.

Each training is a fresh Python (``support/preemption_script.py``): nothing survives
between the preempted run and its resumption but the checkpoint.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support.lightning_models import subprocess_env
from support.processes import finish_attempt

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "preemption_script.py"
MAX_STEPS = 40
# The events whose counts must not notice the interruption.
CONTINUED = ("step_begin", "step_end", "log")


def write_config(root: Path) -> Path:
    config = {
        "custom_callbacks": [
            "support.recorder.Recorder",
            "preemption",
            {"name": "bema", "args": {"update_freq": 3, "update_after": 2}},
            {"name": "support.pacer.Pacer", "args": {"path": str(root / "progress")}},
        ],
        "strict": True,
    }
    path = root / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def launch(
    framework: str, root: Path, config: Path, attempt: str, *extra: str
) -> subprocess.Popen[str]:
    with (root / f"{attempt}.log").open("w", encoding="utf-8") as log:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), framework, "--root", str(root / "run"), "--config",
             str(config), "--max-steps", str(MAX_STEPS), "--attempt", attempt, *extra],
            cwd=root, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip


def wait_for_step(path: Path, step: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and int(path.read_text() or 0) >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"training never reached step {step} (exit {proc.poll()})")


@pytest.mark.parametrize("framework", ["hf", "lightning"])
def test_sigterm_saves_stops_cleanly_and_resumes_as_if_uninterrupted(
    framework: str, tmp_path: Path
) -> None:
    full_root, cut_root = tmp_path / "full", tmp_path / "cut"
    full_root.mkdir()
    cut_root.mkdir()
    # The uninterrupted run and the one to preempt side by side (each imports its trainer).
    uninterrupted_proc = launch(framework, full_root, write_config(full_root), "0")
    config = write_config(cut_root)
    proc = launch(framework, cut_root, config, "0")
    wait_for_step(cut_root / "progress", 5, proc)
    proc.send_signal(signal.SIGTERM)
    first = finish_attempt(proc, cut_root, "0")
    full = finish_attempt(uninterrupted_proc, full_root, "0")
    assert full["global_step"] == MAX_STEPS
    stopped = first["callbacks"]["PreemptionCallback"]["stopped_at_step"]
    assert first["callbacks"]["PreemptionCallback"]["received"] == "SIGTERM"
    assert 5 <= stopped < MAX_STEPS
    assert first["global_step"] == stopped
    expected = f"checkpoint-{stopped}" if framework == "hf" else f"step={stopped}.ckpt"
    assert first["checkpoints"] == [expected]
    assert (
        f"SIGTERM received; saving a checkpoint and stopping at step {stopped}" in first["output"]
    )

    second = finish_attempt(launch(framework, cut_root, config, "1", "--resume"), cut_root, "1")
    assert second["global_step"] == MAX_STEPS
    resumed = second["callbacks"]["Recorder"]["counters"]
    uninterrupted = full["callbacks"]["Recorder"]["counters"]
    assert {k: resumed[k] for k in CONTINUED} == {k: uninterrupted[k] for k in CONTINUED}
    # BEMA's averages, saved at train end: the resumed run's equal the uninterrupted run's.
    got = load_file(cut_root / "run" / "bema" / "model.safetensors")
    expected = load_file(full_root / "run" / "bema" / "model.safetensors")
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in got)
