"""``callbridge-lf train`` under torchrun, as ``llamafactory-cli train`` launches it.

``FORCE_TORCHRUN=1 NPROC_PER_NODE=2``: the command checks the file once, then starts two
processes (gloo on CPU), each training through LLaMA-Factory with the YAML's callbacks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import child_env


@pytest.mark.ddp
def test_two_processes_train_with_the_yaml_callbacks(training_yaml: Any, tmp_path: Path) -> None:
    path = training_yaml(
        "strict: true\n"
        "custom_callbacks:\n"
        "  - name: log\n"
        "    args: {jsonl: events.jsonl}\n"
        "  - my_company.callbacks.FlakyCallback\n"
        "  - reporter\n"
    )
    done = subprocess.run(
        [str(Path(sys.executable).with_name("callbridge-lf")), "train", str(path)],
        env=child_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2"),
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world size: 2" in done.stdout + done.stderr  # LLaMA-Factory's own line, per rank

    out = tmp_path / "out"
    report = json.loads((out / "callbridge_report.json").read_text())
    assert (report["world_size"], report["global_step"], report["status"]) == (2, 6, "completed")
    # The raising native callback was isolated on rank 0 (the report's rank) as elsewhere.
    [count] = report["callback_errors"]["counts"]
    assert count["hook"] == "on_log"
    # log runs on the main process only: each event once, not once per rank.
    events = [json.loads(line)["event"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert events.count("train_begin") == 1
    assert events.count("train_end") == 1
    assert (out / "adapter_model.safetensors").is_file()
