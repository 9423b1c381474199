"""The company example (``examples/company``), as its users run it: declared in YAML, both trainers.

``examples/company/callbacks.yaml`` declares the three ACME callbacks by dotted path;
their endpoints come from the environment and point at real HTTP servers on
127.0.0.1 that each test starts and stops. The same file drives a Hugging Face
``Trainer`` run and a Lightning run; a DDP run (2 CPU processes) shows that only
rank 0 reports.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import callbridge_hf
import callbridge_lightning
from callbridge._cli import main
from callbridge.testing import Driver
from support import hf_models, lightning_models
from support.receiver import Server, serving

pytestmark = pytest.mark.filterwarnings(*lightning_models.LIGHTNING_NOISE)
pytest.importorskip("urllib3")

COMPANY = Path(__file__).resolve().parents[2] / "examples" / "company"
CONFIG = COMPANY / "callbacks.yaml"
SECRET = "sk-acme-0c1d2e3f-SECRET"
STEPS, LOG_EVERY, NOTIFY_EVERY = 6, 2, 2


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    yield from serving()


@pytest.fixture
def endpoints(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> tuple[Server, Server]:
    """The monitoring platform and the Slack webhook, both local; the example importable."""
    monkeypatch.syspath_prepend(str(COMPANY))
    platform, webhook = serve(), serve()
    monkeypatch.setenv("ACME_MONITOR_URL", platform.url)
    monkeypatch.setenv("ACME_KEY", SECRET)
    monkeypatch.setenv("ACME_UPLOAD_INTERVAL", "4")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", webhook.url.replace("/ingest", "/hook"))
    monkeypatch.setenv("SLACK_NOTIFY_INTERVAL", str(NOTIFY_EVERY))
    return platform, webhook


def run_hf(root: Path) -> tuple[list[Any], Path]:
    out = root / "hf"
    trainer = hf_models.make_trainer(
        out,
        n_train=STEPS * 2,
        max_steps=STEPS,
        logging_steps=LOG_EVERY,
        eval_strategy="steps",
        eval_steps=3,
    )
    callbridge_hf.attach(trainer, CONFIG)
    trainer.train()
    return hf_models.neutral_callbacks(trainer), out


def run_lightning(root: Path) -> tuple[list[Any], Path]:
    out = root / "pl"
    callbacks = callbridge_lightning.callbacks(CONFIG)
    trainer = lightning_models.trainer(
        out, callbacks, max_steps=STEPS, max_epochs=-1, log_every_n_steps=LOG_EVERY
    )
    trainer.fit(
        lightning_models.BoringModel(),
        lightning_models.loader(STEPS),
        lightning_models.loader(2, seed=1),
    )
    neutral = callbridge_lightning.unwrap(callbacks)
    return neutral, out


def records_check(platform: Server, run_id: str, seq: int) -> Counter[str]:
    """Every record of the run reached the platform once; returns the events it received."""
    keys = {f"{run_id}:{n}" for n in range(1, seq + 1)}
    assert set(platform.received) == keys
    assert set(platform.received.values()) == {1}
    assert set(platform.authorizations) == {f"Bearer {SECRET}"}
    return Counter(record["event"] for record in platform.stored.values())


def field(line: str, name: str) -> str:
    """The value of ``name=value`` in a line of the detailed log."""
    match = re.search(rf"\b{name}=(\S+)", line)
    assert match is not None, (name, line)
    return match[1]


def texts(webhook: Server) -> list[str]:
    return [body["text"] for body in webhook.bodies]


@pytest.mark.parametrize("runner", [run_hf, run_lightning], ids=["hf", "lightning"])
def test_the_three_company_callbacks_from_one_yaml_under_both_trainers(
    tmp_path: Path, endpoints: tuple[Server, Server], runner: Any
) -> None:
    platform, webhook = endpoints
    (monitor, slack, detailed), out = runner(tmp_path)

    # The monitor: every record once by idempotency key, the outbox empty afterwards.
    assert monitor.project_name == "llm-sft"
    events = records_check(platform, monitor.run_id, monitor.seq)
    assert events["train_begin"] == events["train_end"] == 1
    assert events["log"] >= STEPS // LOG_EVERY
    assert events["evaluate"] >= 1
    steps = sorted(r["step"] for r in platform.stored.values() if r["event"] == "log")
    assert {LOG_EVERY * k for k in range(1, STEPS // LOG_EVERY + 1)} <= set(steps)
    assert (out / "acme-monitor.sqlite").exists()
    assert monitor.delivery is None  # flushed and stopped at train end

    # Slack: start, every NOTIFY_EVERY steps, completion, in that order, nothing lost.
    messages = texts(webhook)
    assert len(messages) == 2 + STEPS // NOTIFY_EVERY
    assert "training started" in messages[0]
    assert f"for {STEPS} steps" in messages[0]
    progress = [int(m) for text in messages[1:-1] for m in re.findall(r"step (\d+)/", text)]
    assert progress == list(range(NOTIFY_EVERY, STEPS + 1, NOTIFY_EVERY))
    assert f"training complete at step {STEPS}" in messages[-1]
    assert (slack.sent, slack.failed) == (len(messages), 0)

    # The detailed log: a line per log and evaluation, with the step and the memory.
    lines = (out / "detailed_training.log").read_text(encoding="utf-8").splitlines()
    assert len(lines) == detailed.lines == events["log"] + events["evaluate"]
    for line in lines:
        assert re.search(r" (log|evaluate) step=\d+ epoch=\S+ ", line), line
        assert float(field(line, "memory_rss_mb")) > 10
    logged_steps = {int(field(line, "step")) for line in lines if " log " in line}
    assert set(range(LOG_EVERY, STEPS + 1, LOG_EVERY)) <= logged_steps

    # Nothing secret in what the callbacks show of themselves.
    for callback in (monitor, slack, detailed):
        assert SECRET not in repr(callback)
    assert "/hook" not in repr(slack)


def test_a_dead_webhook_neither_stops_nor_slows_training(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Connections refused: every message fails, is logged, and the run ends normally."""
    monkeypatch.syspath_prepend(str(COMPANY))
    from acme_callbacks import SlackNotifier

    down = serve(up=False)
    slack = SlackNotifier(webhook_url=down.url, notify_interval=1, timeout=0.5, flush_timeout=5)
    start = time.monotonic()
    result = Driver([slack], max_steps=20, output_dir=tmp_path).run()
    assert time.monotonic() - start < 5
    assert result.errors.total == 0
    assert (slack.sent, slack.failed) == (0, 22)


def test_check_and_show_the_example_yaml(
    endpoints: tuple[Server, Server],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``callbridge check`` passes with the variables set; ``show`` masks key and webhook."""
    assert main(["check", str(CONFIG)]) == 0
    assert main(["show", str(CONFIG)]) == 0
    out = capsys.readouterr().out
    assert 'api_key = "***"' in out
    assert 'webhook_url = "***"' in out
    assert SECRET not in out
    assert "/hook" not in out
    monkeypatch.delenv("ACME_MONITOR_URL")
    monkeypatch.delenv("ACME_KEY")
    assert main(["check", str(CONFIG)]) == 1
    problems = capsys.readouterr().out
    assert "'ACME_MONITOR_URL' is not set" in problems
    assert "'ACME_KEY' is not set" in problems


# --- DDP --------------------------------------------------------------------------------------


@pytest.mark.ddp
def test_under_ddp_only_rank_zero_reports(
    tmp_path: Path, endpoints: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning ``strategy="ddp"``, 2 CPU processes: one run id, each record once, one outbox.

    Each rank builds the config itself; the outbox name carries the rank's LOCAL_RANK,
    so an outbox written by rank 1 would show up as its own file.
    """
    platform, webhook = endpoints
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(COMPANY), os.environ.get("PYTHONPATH", "")])
    )
    config = tmp_path / "callbacks.json"
    config.write_text(
        json.dumps(
            {
                "strict": True,
                "custom_callbacks": [
                    {
                        "name": "acme_callbacks.upload_monitor_to_new_platform",
                        "args": {
                            "upload_url": "${ACME_MONITOR_URL}",
                            "api_key": "${ACME_KEY}",
                            "outbox": "acme-rank${LOCAL_RANK:-0}.sqlite",
                        },
                    },
                    {
                        "name": "acme_callbacks.SlackNotifier",
                        "args": {"webhook_url": "${SLACK_WEBHOOK_URL}", "notify_interval": 4},
                    },
                ],
            }
        ),
        encoding="utf-8",
    )
    root = tmp_path / "run"
    # 16 batches: 8 per rank after Lightning's DistributedSampler; max_steps 8.
    lightning_models.run_script(
        "--root", str(root), "--config", str(config), "--out", str(tmp_path / "result"),
        "--max-steps", "8", "--train-batches", "16", "--log-every", "4", "--ddp",
        cwd=tmp_path, timeout=180,
    )  # fmt: skip
    results = [
        json.loads((tmp_path / f"result.rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)
    ]
    assert [(r["rank"], r["world_size"], r["global_step"]) for r in results] == [
        (0, 2, 8),
        (1, 2, 8),
    ]
    records = list(platform.stored.values())
    (run_id,) = {r["run_id"] for r in records}
    seqs = sorted(r["seq"] for r in records)
    assert seqs == list(range(1, len(records) + 1))
    events = records_check(platform, run_id, len(records))
    assert events["train_begin"] == events["train_end"] == 1
    assert sorted(r["step"] for r in records if r["event"] == "log")[:2] == [4, 8]
    assert (root / "acme-rank0.sqlite").exists()
    assert not (root / "acme-rank1.sqlite").exists()
    messages = texts(webhook)
    assert len(messages) == 4, messages  # start, steps 4 and 8, completion: once, not per rank
