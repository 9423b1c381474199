"""Operations under DDP (2 CPU processes with gloo): every rank at the same step.

Lightning starts the second rank itself by running ``support/preemption_script.py``
again; HF's ranks are started by ``torchrun``. Each rank writes its own result.
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

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "preemption_script.py"


FRAMEWORKS = pytest.mark.parametrize("framework", ["hf", "lightning"])


def launch(root: Path, config: dict[str, Any], *extra: str, framework: str = "lightning") -> Any:
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    launcher = [sys.executable]
    if framework == "hf":
        from support.hf_models import free_port

        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                     str(free_port())]  # fmt: skip
    with (root / "log").open("w", encoding="utf-8") as log:
        return subprocess.Popen(
            [*launcher, str(SCRIPT), framework, "--ddp", "--root", str(root / "run"),
             "--config", str(root / "config.json"), *extra],
            cwd=root, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip


def results(proc: Any, root: Path) -> list[dict[str, Any]]:
    try:
        code = proc.wait(timeout=300)  # a guard against a hang, no check of speed
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert code == 0, (root / "log").read_text(encoding="utf-8")
    return [
        json.loads((root / "run" / f"result-0.rank{rank}.json").read_text(encoding="utf-8"))
        for rank in (0, 1)
    ]


@FRAMEWORKS
def test_guard_a_nan_on_one_rank_stops_both_at_that_step(framework: str, tmp_path: Path) -> None:
    config = {"custom_callbacks": ["guard", "support.recorder.Recorder"], "strict": True}
    proc = launch(
        tmp_path, config, "--max-steps", "20", "--nan-at", "6", "--nan-rank", "1",
        framework=framework,
    )  # fmt: skip
    rank0, rank1 = results(proc, tmp_path)
    assert (rank0["global_step"], rank1["global_step"]) == (6, 6)
    if framework == "lightning":
        # Each rank logs its own loss: rank 0's was fine, the reduced stop stopped it.
        assert rank0["callbacks"]["GuardCallback"]["stopped_at_step"] is None
    else:
        # HF logs the loss gathered over ranks, and the gradients are all-reduced: both see it.
        assert rank0["callbacks"]["GuardCallback"]["stopped_at_step"] == 6
    assert rank1["callbacks"]["GuardCallback"]["stopped_at_step"] == 6


@FRAMEWORKS
def test_every_rank_applies_a_command_at_the_same_step(framework: str, tmp_path: Path) -> None:
    config = {
        "custom_callbacks": [
            "control",
            "early_stopping",
            {"name": "support.pacer.Pacer", "args": {"path": str(tmp_path / "progress")}},
        ],
        "strict": True,
    }
    proc = launch(tmp_path, config, "--max-steps", "400", framework=framework)
    catalog = tmp_path / "run" / "callbridge-control" / "callbacks.json"
    deadline = time.monotonic() + 300
    while not catalog.exists():
        assert proc.poll() is None, (tmp_path / "log").read_text(encoding="utf-8")
        assert time.monotonic() < deadline
        time.sleep(0.05)

    def ctl(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "callbridge", "ctl", str(tmp_path / "run"), *args,
             "--wait", "120"],
            env=subprocess_env(), capture_output=True, text=True, timeout=150,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.splitlines()[-1]

    patience = ctl("set", "early_stopping.early_stopping_patience=3")
    stop = ctl("stop")
    rank0, rank1 = results(proc, tmp_path)
    step = int(stop.split()[1].rstrip(":"))
    assert (rank0["global_step"], rank1["global_step"]) == (step, step)
    assert (
        rank0["callbacks"]["ControlCallback"]["applied"]
        == (rank1["callbacks"]["ControlCallback"]["applied"])
    )
    assert [status for _, _, status in rank0["callbacks"]["ControlCallback"]["applied"]] == [
        "applied",
        "applied",
    ]
    assert patience.startswith(f"step {rank1['callbacks']['ControlCallback']['applied'][0][1]}:")
    expected = f"checkpoint-{step}" if framework == "hf" else f"step={step}.ckpt"
    assert rank0["checkpoints"] == rank1["checkpoints"] == [expected]
    for rank in (rank0, rank1):
        assert rank["callbacks"]["EarlyStoppingCallback"]["early_stopping_patience"] == 3


@FRAMEWORKS
def test_sigterm_to_rank_0_saves_and_stops_both_ranks_at_the_same_step(
    framework: str, tmp_path: Path
) -> None:
    """A signal that reaches rank 0 only: the flag reaches rank 1 too, and both exit cleanly.

    Under Lightning rank 0 is the process the test started; under HF it is torchrun's
    first worker (a SIGTERM to torchrun itself makes torchrun fail, whatever its ranks do).
    """
    config = {
        "custom_callbacks": [
            "preemption",
            {"name": "support.pacer.Pacer", "args": {"path": str(tmp_path / "progress")}},
        ],
        "strict": True,
    }
    proc = launch(tmp_path, config, "--max-steps", "400", framework=framework)
    progress = tmp_path / "progress"
    deadline = time.monotonic() + 300
    while not (progress.exists() and int(progress.read_text() or 0) >= 3):
        assert proc.poll() is None, (tmp_path / "log").read_text(encoding="utf-8")
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rank0_pid = int((tmp_path / "progress.pid").read_text(encoding="utf-8"))
    os.kill(rank0_pid, signal.SIGTERM)  # rank 0 only, not its process group
    rank0, rank1 = results(proc, tmp_path)
    step = rank0["global_step"]
    assert 3 <= step < 400
    assert rank1["global_step"] == step
    assert rank0["callbacks"]["PreemptionCallback"]["received"] == "SIGTERM"
    assert rank1["callbacks"]["PreemptionCallback"]["received"] == "SIGTERM"  # shared
    expected = f"checkpoint-{step}" if framework == "hf" else f"step={step}.ckpt"
    assert rank0["checkpoints"] == [expected]
