"""A user's first run, under both trainers: callbridge's output is visible without any logging
set up, printed once when the script configures logging, and a misnamed hook is said at build.

The project is ``tests/fixtures/first_project`` (a callback module beside the training
script, declared by import path), copied to a temporary folder and run from there as a
user would: ``python train.py --trainer hf``.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from support.hf_models import subprocess_env
from support.processes import run_child

PROJECT = Path(__file__).resolve().parents[1] / "fixtures" / "first_project"
MISSPELLED = (
    "EventTally.on_evaluation is never called: no hook has that name. Did you mean "
    "on_evaluate? (to keep a helper method, name it without the on_ prefix)"
)
NATIVE = (
    "EventTally.on_train_batch_end is never called: it is a trainer's own hook name, not a "
    "neutral one. Use on_step_end (after each optimizer step) (to keep a helper method, name "
    "it without the on_ prefix)"
)


def first_run(tmp_path: Path, trainer: str, logging: str) -> tuple[list[str], dict[str, int]]:
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    env = subprocess_env()
    env["PYTHONPATH"] = ""  # the project's module is found as `python train.py` finds it
    proc = run_child(
        [sys.executable, "train.py", "--trainer", trainer, "--logging", logging],
        cwd=project,
        env=env,
        timeout=300,
    )
    tally = json.loads((project / "runs" / "first" / "tally.json").read_text(encoding="utf-8"))
    return proc.stderr.splitlines(), tally


@pytest.mark.parametrize("trainer", ["hf", "lightning"])
def test_without_logging_set_up_callbridge_and_log_print_and_a_misnamed_hook_is_said(
    tmp_path: Path, trainer: str
) -> None:
    lines, tally = first_run(tmp_path, trainer, "none")
    config = tmp_path / "project" / "pyproject.toml"
    ours = [line for line in lines if line.startswith(("callbridge:", f"[{trainer}] "))]
    assert ours[:3] == [
        f"callbridge: {config}: tool.callbacks.custom_callbacks[1]: {MISSPELLED}",
        f"callbridge: {config}: tool.callbacks.custom_callbacks[1]: {NATIVE}",
        f"callbridge: 2 callbacks loaded, 0 disabled, 0 failed ({config})",
    ]
    assert ours[3] == f"[{trainer}] step 0/4 epoch 0.00 train_begin "  # the log callback
    assert ours[-1] == f"[{trainer}] step 4/4 epoch 1.00 train_end "
    assert all(count == 1 for count in Counter(ours).values())
    # The misnamed methods were never called; the right ones were.
    assert tally == {
        "label": "first",
        "train_begin": 1,
        "step_end": 4,
        "evaluate": 2,
        "train_end": 1,
    }


@pytest.mark.parametrize("trainer", ["hf", "lightning"])
def test_logging_set_up_by_the_script_prints_each_line_once_in_its_format(
    tmp_path: Path, trainer: str
) -> None:
    lines, _ = first_run(tmp_path, trainer, "basic")
    ours = [line for line in lines if "callbridge" in line]
    assert ours[2].startswith("APP callbridge callbridge: 2 callbacks loaded")
    assert ours[-1] == f"APP callbridge.log [{trainer}] step 4/4 epoch 1.00 train_end "
    assert not [line for line in lines if line.startswith(("callbridge:", f"[{trainer}]"))]
    assert all(count == 1 for count in Counter(ours).values())
