"""SIGKILL, then resume, under the real Lightning ``Trainer``: the monitor keeps its run id.

As ``tests/hf/test_hf_monitor_resume.py`` for Lightning: the first Python logs every
step and checkpoints every 5 (``ModelCheckpoint``), and is killed with SIGKILL right
after step 9 is logged; the second resumes from ``step5.ckpt`` with the same config
and outbox. The run id travels in the checkpoint (Lightning's callback state).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.lightning_models import SCRIPT, run_script, subprocess_env
from support.receiver import Server, records_across_a_kill, serving

pytest.importorskip("urllib3")

MAX_STEPS, SAVE_STEPS, KILL_AT = 12, 5, 9


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    yield from serving()


def config(path: Path, url: str, outbox: Path, kill_at: int) -> Path:
    monitor = {
        "name": "monitor",
        "args": {
            "upload_url": url, "outbox": str(outbox), "backoff": 0.02, "max_backoff": 0.1,
            "timeout": 5.0, "flush_timeout": 30.0,
        },
    }  # fmt: skip
    killer = {"name": "support.monitor_kill.KillAt", "args": {"step": kill_at}}
    path.write_text(
        json.dumps({"custom_callbacks": [monitor, killer], "strict": True}), encoding="utf-8"
    )
    return path


def test_a_killed_and_resumed_lightning_run_keeps_one_run_id_and_marks_retrained_steps(
    serve: Any, tmp_path: Path
) -> None:
    server = serve()
    root, box = tmp_path / "run", tmp_path / "monitor.sqlite"
    common = [
        "--root", str(root), "--max-steps", str(MAX_STEPS), "--ckpt-every", str(SAVE_STEPS),
        "--log-every", "1", "--train-batches", "50",
    ]  # fmt: skip
    first = config(tmp_path / "first.json", server.url, box, KILL_AT)
    killed = subprocess.run(
        [sys.executable, str(SCRIPT), *common, "--config", str(first),
         "--out", str(tmp_path / "first")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        env=subprocess_env(),
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoint = root / "checkpoints" / f"step{SAVE_STEPS}.ckpt"
    assert checkpoint.is_file()

    second = config(tmp_path / "second.json", server.url, box, 0)
    run_script(
        *common, "--config", str(second), "--out", str(tmp_path / "second"),
        "--ckpt-path", str(checkpoint),
        cwd=tmp_path,
    )  # fmt: skip

    records = records_across_a_kill(server)
    logs = [r for r in records if r["event"] == "log"]
    first_steps = {r["step"] for r in logs if r["resume"] == 0}
    second_steps = {r["step"] for r in logs if r["resume"] == 1}
    assert KILL_AT in first_steps  # the killed step's record was not lost
    assert max(first_steps) == KILL_AT
    assert min(second_steps) > SAVE_STEPS
    assert max(second_steps) == MAX_STEPS
    retrained = {r["step"] for r in logs if r["retrained"]}
    assert retrained == {s for s in second_steps if s <= KILL_AT}
    assert retrained  # some steps were trained twice
