"""SIGKILL, then resume, under the real HF ``Trainer``: nothing lost, one run id, re-trains marked.

The first Python trains the tiny GPT-2 with the ``monitor`` (logging every step,
checkpoint every 5) and is killed with SIGKILL right after step 9 is logged; the
second resumes from ``checkpoint-5`` with the same config and outbox. The
monitor's run id travels in the checkpoint (its ``state_dict``); steps 6-9, trained
twice, come back marked ``"retrained": true`` under ``"resume": 1``.
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

from support.hf_models import SCRIPT, run_script
from support.receiver import Server, records_across_a_kill, serving

pytest.importorskip("urllib3")

MAX_STEPS, SAVE_STEPS, KILL_AT = 12, 5, 9


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    yield from serving()


def config(url: str, outbox: Path, kill_at: int) -> str:
    monitor = {
        "name": "monitor",
        "args": {
            "upload_url": url, "outbox": str(outbox), "backoff": 0.02, "max_backoff": 0.1,
            "timeout": 5.0, "flush_timeout": 30.0,
        },
    }  # fmt: skip
    killer = {"name": "support.monitor_kill.KillAt", "args": {"step": kill_at}}
    return json.dumps({"custom_callbacks": [monitor, killer], "strict": True})


def test_a_killed_and_resumed_hf_run_loses_nothing_keeps_one_run_id_and_marks_retrained_steps(
    serve: Any, tmp_path: Path
) -> None:
    server = serve()
    out, box = tmp_path / "run", tmp_path / "monitor.sqlite"
    common = [
        "--output-dir", str(out), "--max-steps", str(MAX_STEPS), "--save-steps", str(SAVE_STEPS),
        "--logging-steps", "1",
    ]  # fmt: skip
    killed = subprocess.run(
        [sys.executable, str(SCRIPT), *common, "--config", config(server.url, box, KILL_AT),
         "--result", str(tmp_path / "first.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / f"checkpoint-{SAVE_STEPS}").is_dir()

    run_script(
        *common, "--config", config(server.url, box, 0), "--result", str(tmp_path / "second.json"),
        "--resume",
        cwd=tmp_path,
    )  # fmt: skip

    records = records_across_a_kill(server)
    logs = [r for r in records if r["event"] == "log" and "loss" in r["metrics"]]
    first = sorted(r["step"] for r in logs if r["resume"] == 0)
    second = sorted(r["step"] for r in logs if r["resume"] == 1)
    assert first == list(range(1, KILL_AT + 1))  # 0 lost, the killed step's log included
    assert second == list(range(SAVE_STEPS + 1, MAX_STEPS + 1))
    retrained = sorted(r["step"] for r in logs if r["retrained"])
    assert retrained == list(range(SAVE_STEPS + 1, KILL_AT + 1))
    assert all(r["resume"] == 1 for r in records if r["retrained"])
    events = [r["event"] for r in records if r["resume"] == 1]
    assert events.count("train_begin") == events.count("train_end") == 1
    waiting = subprocess.run(
        [sys.executable, "-m", "callbridge", "monitor", "show", str(box), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(waiting.stdout)["records"] == []
