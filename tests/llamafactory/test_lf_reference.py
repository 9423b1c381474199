"""The reference document's four YAML examples, as written, in a LLaMA-Factory training YAML.

Each example's ``custom_callbacks`` block (tests/fixtures/reference/, verbatim) is appended to
the LLaMA-Factory keys of a real LoRA SFT run of a tiny Llama, and trained with the one
command (``callbridge-lf train``) or the Python call (``callbridge_lf.run_exp``). The names
resolve to real callbacks (tests/llamafactory/company/): ACME's monitor and Slack notifier
POST to servers on 127.0.0.1. The one change to the text: Example 1's literal endpoint
``https://company-monitor.internal/api/metrics`` becomes the local server's URL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import callbridge_lf
from conftest import child_env

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
CLI = Path(sys.executable).with_name("callbridge-lf")


def example(name: str) -> str:
    return (REFERENCE / name).read_text(encoding="utf-8")


def train_cli(path: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "train", str(path), *overrides],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_example_1_company_monitor_through_the_command(
    training_yaml: Any, serve: Any, tmp_path: Path
) -> None:
    server = serve()
    block = example("company_monitoring.yaml")
    assert "https://company-monitor.internal/api/metrics" in block
    path = training_yaml(block.replace("https://company-monitor.internal/api/metrics", server.url))

    done = train_cli(path, "max_steps=4", COMPANY_API_KEY="company-key-123")

    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file()  # LLaMA-Factory trained and saved
    records = list(server.stored.values())
    events = [r["event"] for r in sorted(records, key=lambda r: r["seq"])]
    assert events[0] == "train_begin"
    assert events[-1] == "train_end"
    assert events.count("evaluate") >= 1
    assert all(r["project"] == "llama-sft-experiment" for r in records)
    assert set(server.authorizations) == {"Bearer company-key-123"}
    assert "company-key-123" not in done.stdout + done.stderr  # the key is never printed
    # The override reached LLaMA-Factory: 4 steps, not the file's 6.
    assert max(r["step"] for r in records) == 4


def test_example_2_slack_notifier(
    training_yaml: Any, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    monkeypatch.setenv("SLACK_WEBHOOK_URL", server.url)
    injector = callbridge_lf.run_exp(training_yaml(example("slack.yaml")))

    [slack] = injector.callbacks
    assert (slack.notify_on_start, slack.notify_on_complete, slack.notify_interval) == (
        True,
        True,
        100,
    )
    texts = [body["text"] for body in server.bodies]
    assert texts[0] == ":rocket: out: training started (hf) for 6 steps"
    assert texts[-1].startswith(":white_check_mark: out: training complete at step 6 (")
    assert len(texts) == 2  # every 100 steps: none in a 6-step run


def test_example_3_enhanced_logging(training_yaml: Any, tmp_path: Path) -> None:
    callbridge_lf.run_exp(training_yaml(example("enhanced_logging.yaml")))
    lines = (tmp_path / "out" / "detailed_training.log").read_text(encoding="utf-8").splitlines()
    assert lines, "the detailed log is empty"
    assert any("eval_loss" in line for line in lines)
    assert all("memory_rss_mb" in line or "train_begin" in line or "train_end" in line
               for line in lines)  # fmt: skip


def test_example_4_mixed_builtin_and_custom(training_yaml: Any, tmp_path: Path) -> None:
    injector = callbridge_lf.run_exp(training_yaml(example("mixed.yaml")))

    names = [type(cb).__name__ for cb in injector.callbacks]
    assert names == ["LogCallback", "EarlyStoppingCallback", "MonitorCallback", "AlertCallback"]
    _log, early_stopping, monitor, alert = injector.callbacks
    assert early_stopping.early_stopping_patience == 3
    out = tmp_path / "out"
    seen = [json.loads(line) for line in (out / "monitor_callback.jsonl").read_text().splitlines()]
    assert [r["step"] for r in seen if "loss" in r] == [2, 4, 6]
    assert alert.alert_threshold == 0.5
    assert alert.alerts
    assert all(loss > 0.5 for loss in alert.alerts)
    assert monitor.seen == [{k: v for k, v in r.items() if k != "step"} for r in seen]
