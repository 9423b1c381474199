"""One configuration that exercises run tags, the resolved config and the error summary.

Shared by the HF and Lightning catalogue tests (and the framework-free one) so that the
three prove the same thing: ``training_stage`` tags every record ``log`` and ``monitor``
write, and ``reporter`` carries the resolved configuration, secrets masked, with the
run's callback errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from callbridge._outbox import Outbox

#: The variable the monitor's key comes from, and its value (must never be written).
KEY_VAR, KEY = "CALLBRIDGE_TEST_TAGGED_KEY", "sk-tagged-0123456789"


def tagged_config(stage: str) -> dict[str, Any]:
    """Stage first, then the recorders, a callback failing at every step, and a disabled one."""
    return {
        "strict": True,
        "callback_errors": "log",
        "custom_callbacks": [
            {"name": "training_stage", "args": {"stage": stage}},
            {"name": "log", "args": {"jsonl": "events.jsonl"}},
            {"name": "monitor", "args": {"api_key": f"${{{KEY_VAR}}}", "project_name": "p"}},
            {"name": "support.neutral_spies.FailOnRank", "args": {"rank": 0}},
            {"name": "early_stopping", "enabled": False},
            "reporter",
        ],
    }


def check_tagged_outputs(out: Path, framework: str, stage: str, messages: list[str]) -> None:
    """What the run must have written; ``messages`` are the captured log messages."""
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][:1] == ["train_begin"]
    assert events[-1]["event"] == "train_end"
    assert all(e["tags"] == {"stage": stage} for e in events), events
    metric_lines = [m for m in messages if m.startswith(f"[{framework}")]
    assert metric_lines
    assert all(m.startswith(f"[{framework} stage={stage}] step") for m in metric_lines)

    box = Outbox(out / "callbridge-monitor.sqlite", create=False)
    try:
        records = [json.loads(body) for _, body in box]
    finally:
        box.close()
    assert records
    assert all(r["tags"] == {"stage": stage} for r in records)

    text = (out / "callbridge_report.json").read_text(encoding="utf-8")
    assert KEY not in text
    report = json.loads(text)
    assert (report["stage"], report["tags"]) == (stage, {"stage": stage})
    config = report["config"]
    assert config["options"]["callback_errors"] == "log"
    assert [(c["name"], c["status"]) for c in config["callbacks"]] == [
        ("training_stage", "loaded"),
        ("log", "loaded"),
        ("monitor", "loaded"),
        ("support.neutral_spies.FailOnRank", "loaded"),
        ("early_stopping", "disabled"),
        ("reporter", "loaded"),
    ]
    monitor = config["callbacks"][2]
    assert monitor["args"]["api_key"] == "***"
    assert monitor["args"]["project_name"] == "p"
    assert config["callbacks"][1]["args"]["jsonl"] == "events.jsonl"
    steps = report["global_step"]
    failing = [c for c in report["callback_errors"]["counts"] if c["hook"] == "on_step_end"]
    assert len(failing) == 1
    assert "FailOnRank" in failing[0]["callback"]
    assert failing[0]["count"] == steps  # every step failed, and the run went on
    assert report["callback_errors"]["total"] >= steps
    assert report["callback_errors"]["disabled"] == []
