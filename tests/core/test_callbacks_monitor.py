"""The ``monitor`` callback: a durable outbox, retries, idempotent delivery, no leaked key.

Every test runs a real HTTP server on 127.0.0.1 (a thread of this process) whose
behaviour is scripted per request, and a real SQLite outbox under ``tmp_path``.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from callbridge import Callback, Run
from callbridge._cli import main
from callbridge.callbacks.monitor import MonitorCallback
from callbridge.testing import Driver
from support.receiver import Action, Server, serving

from .helpers import subprocess_env

pytest.importorskip("urllib3")

SECRET = "sk-acme-7f3c9e1d-SECRET"
FAST = {"backoff": 0.02, "max_backoff": 0.1, "timeout": 2.0, "flush_timeout": 15.0}


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    yield from serving()


class At(Callback):
    """Runs ``action`` once, at the end of optimizer step ``step``."""

    def __init__(self, step: int, action: Callable[[], None]) -> None:
        self.step, self.action = step, action

    def on_step_end(self, run: Run) -> None:
        if run.state.global_step == self.step:
            self.action()


def keys_of(monitor: MonitorCallback) -> set[str]:
    """Every idempotency key the monitor's last run produced."""
    return {f"{monitor.run_id}:{seq}" for seq in range(1, monitor.seq + 1)}


def outbox_keys(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [key for (key,) in db.execute("SELECT key FROM records ORDER BY id")]
    finally:
        db.close()


def waiting(path: Path) -> int:
    """Records in an outbox another process is writing (0 until its schema exists)."""
    if not path.exists():
        return 0
    try:
        return len(outbox_keys(path))
    except sqlite3.OperationalError:
        return 0


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def drive(monitor: MonitorCallback, tmp_path: Path, *extra: Callback, **kwargs: Any) -> Any:
    kwargs.setdefault("max_steps", 20)
    return Driver([*extra, monitor], output_dir=tmp_path, eval_steps=5, save_steps=10, **kwargs)


def test_every_event_is_delivered_once_with_the_bearer_key(serve: Any, tmp_path: Path) -> None:
    server = serve()
    monitor = MonitorCallback(upload_url=server.url, api_key=SECRET, upload_interval=4, **FAST)
    result = drive(monitor, tmp_path).run()
    assert result.errors.total == 0
    # train_begin, 20 logs, 4 evaluations (each logs its metrics too), 2 saves, train_end
    assert monitor.seq == 2 + len(result.logged) + 2 * len(result.evaluated) + 2 == 32
    assert set(server.received) == keys_of(monitor)
    assert set(server.received.values()) == {1}
    assert set(server.authorizations) == {f"Bearer {SECRET}"}
    assert SECRET not in server.url
    first = server.stored[f"{monitor.run_id}:1"]
    assert (first["event"], first["step"], first["project"]) == ("train_begin", 0, "default")
    events = Counter(r["event"] for r in server.stored.values())
    assert events == {"train_begin": 1, "log": 24, "evaluate": 4, "save": 2, "train_end": 1}
    assert outbox_keys(tmp_path / "callbridge-monitor.sqlite") == []


def test_a_server_down_at_train_start_gets_everything_once_it_is_up(
    serve: Any, tmp_path: Path
) -> None:
    server = serve(up=False)
    monitor = MonitorCallback(upload_url=server.url, **FAST)

    def come_up() -> None:
        wait_for(lambda: monitor.delivery is not None and monitor.delivery.failed_attempts >= 2)
        server.up()

    result = drive(monitor, tmp_path, At(3, come_up)).run()
    assert result.errors.total == 0
    assert set(server.received) == keys_of(monitor)
    assert set(server.received.values()) == {1}


@pytest.mark.parametrize(
    ("name", "script"),
    [
        ("bursts of 503", lambda n: "503" if n % 4 in (1, 2) else "ok"),
        ("429 with Retry-After", lambda n: "429" if n <= 3 else "ok"),
        ("connections reset", lambda n: "reset" if n % 3 != 0 else "ok"),
    ],
)
def test_transient_failures_are_retried_until_every_record_is_delivered_once(
    serve: Any, tmp_path: Path, name: str, script: Callable[[int], Action]
) -> None:
    server = serve(script)
    monitor = MonitorCallback(upload_url=server.url, upload_interval=5, **FAST)
    result = drive(monitor, tmp_path).run()
    assert result.errors.total == 0
    assert server.requests > 3  # the failures happened
    assert set(server.received) == keys_of(monitor)
    assert set(server.received.values()) == {1}  # a refused or reset request stored nothing
    assert outbox_keys(tmp_path / "callbridge-monitor.sqlite") == []


def test_answers_slower_than_the_timeout_are_retried_and_stored_once_per_key(
    serve: Any, tmp_path: Path
) -> None:
    server = serve(lambda n: "slow" if n <= 2 else "ok")
    server.slow_seconds = 0.6
    monitor = MonitorCallback(upload_url=server.url, **{**FAST, "timeout": 0.2})
    result = drive(monitor, tmp_path).run()
    assert result.errors.total == 0
    assert monitor.delivery is None  # flushed and stopped
    # The slow answers arrived after the client gave up: the records were sent again,
    # and the idempotency key lets the server store each of them once.
    assert set(server.stored) == keys_of(monitor)
    assert outbox_keys(tmp_path / "callbridge-monitor.sqlite") == []


def test_401_delivers_nothing_keeps_everything_and_logs_one_clear_error(
    serve: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(lambda n: "401")
    monitor = MonitorCallback(upload_url=server.url, api_key=SECRET, **FAST)
    with caplog.at_level(logging.DEBUG, logger="callbridge"):
        result = drive(monitor, tmp_path).run()
    assert result.errors.total == 0
    assert server.requests == 1  # not retried
    assert server.stored == {}
    assert set(outbox_keys(tmp_path / "callbridge-monitor.sqlite")) == keys_of(monitor)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert re.search(r"refused \d+ records with HTTP 401 Unauthorized: check api_key", message)
    assert "callbridge monitor flush" in message
    assert SECRET not in caplog.text


def test_the_training_thread_never_waits_for_the_server(serve: Any, tmp_path: Path) -> None:
    """The first request is held open while training runs on to its last step."""
    server = serve(lambda n: "hold" if n == 1 else "ok")
    monitor = MonitorCallback(upload_url=server.url, **FAST)
    trained = threading.Event()

    class LastHook(Callback):
        def on_train_end(self, run: Run) -> None:
            trained.set()  # before the monitor's own train_end (it flushes)
            server.release.set()

    result = drive(
        monitor, tmp_path, At(1, lambda: server.first_request.wait(10)), LastHook(), max_steps=200
    ).run()
    assert server.first_request.is_set()
    assert trained.is_set()
    assert server.released  # released by the end of training, not by the 10 s timeout
    assert result.errors.total == 0
    assert set(server.stored) == keys_of(monitor)


def test_without_upload_url_records_stay_in_the_outbox_for_the_next_run(
    serve: Any, tmp_path: Path
) -> None:
    offline = MonitorCallback(outbox=Path("box.sqlite"))
    drive(offline, tmp_path, max_steps=5).run()
    first = keys_of(offline)
    assert set(outbox_keys(tmp_path / "box.sqlite")) == first
    server = serve()
    online = MonitorCallback(upload_url=server.url, outbox=tmp_path / "box.sqlite", **FAST)
    drive(online, tmp_path, max_steps=5).run()
    assert set(server.received) == first | keys_of(online)
    assert set(server.received.values()) == {1}
    assert outbox_keys(tmp_path / "box.sqlite") == []


def test_an_outbox_given_as_a_string_in_code_works_like_a_path(tmp_path: Path) -> None:
    """A str (as Python code passes it; the config coerces) used to fail in on_train_begin."""
    monitor = MonitorCallback(outbox="box.sqlite")
    result = drive(monitor, tmp_path, max_steps=2).run()
    assert result.errors.total == 0
    assert set(outbox_keys(tmp_path / "box.sqlite")) == keys_of(monitor)


def test_other_ranks_send_and_store_nothing(serve: Any, tmp_path: Path) -> None:
    server = serve()
    monitor = MonitorCallback(upload_url=server.url, **FAST)
    drive(monitor, tmp_path, rank=1, world_size=2).run()
    assert server.requests == 0
    assert not (tmp_path / "callbridge-monitor.sqlite").exists()


def test_a_failing_run_records_the_exception_and_flushes(serve: Any, tmp_path: Path) -> None:
    server = serve()
    monitor = MonitorCallback(upload_url=server.url, **FAST)
    with pytest.raises(RuntimeError, match="training failed at step 4"):
        drive(monitor, tmp_path, raise_at_step=4).run()
    last = server.stored[f"{monitor.run_id}:{monitor.seq}"]
    assert last["event"] == "exception"
    assert last["metrics"] == {"error": "RuntimeError: training failed at step 4"}
    assert set(server.received) == keys_of(monitor)


def test_the_api_key_from_the_environment_never_leaks(
    serve: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = serve(lambda n: "401")
    monkeypatch.setenv("ACME_KEY", SECRET)
    config = tmp_path / "pyproject.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[tool.callbacks.custom_callbacks]]
            name = "monitor"
            args = {{ upload_url = "{server.url}", api_key = "${{ACME_KEY}}", backoff = "0.02" }}
            """
        ),
        encoding="utf-8",
    )
    with caplog.at_level(logging.DEBUG):
        driver = Driver.from_config(config, output_dir=tmp_path, max_steps=5)
        result = driver.run()
    (monitor,) = [b.callback for b in driver.callbacks]
    assert server.authorizations == [f"Bearer {SECRET}"]  # the key was really used
    assert SECRET not in repr(monitor)
    assert SECRET not in caplog.text
    assert SECRET not in str(result.errors)
    for file in tmp_path.glob("callbridge-monitor.sqlite*"):  # the database, its WAL and index
        assert SECRET.encode() not in file.read_bytes()
    assert main(["show", str(config)]) == 0
    assert main(["monitor", "show", str(tmp_path / "callbridge-monitor.sqlite")]) == 0
    monkeypatch.setenv("CALLBRIDGE_MONITOR_API_KEY", SECRET)
    assert main(["monitor", "flush", str(tmp_path / "callbridge-monitor.sqlite")]) == 1
    out, err = capsys.readouterr()
    assert "api_key" in out  # show lists the argument...
    assert "HTTP 401" in err
    assert SECRET not in out + err  # ...but never its value


def test_monitor_show_prints_the_waiting_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monitor = MonitorCallback(project_name="acme")
    drive(monitor, tmp_path, max_steps=2).run()
    assert main(["monitor", "show", str(tmp_path / "callbridge-monitor.sqlite")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("callbridge-monitor.sqlite: 4 records waiting (upload_url: -)")
    assert lines[1].split() == ["run", "seq", "event", "step", "epoch", "time", "metrics"]
    assert [line.split()[1:4] for line in lines[2:]] == [
        ["1", "train_begin", "0"],
        ["2", "log", "1"],
        ["3", "log", "2"],
        ["4", "train_end", "2"],
    ]


def test_monitor_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "show", str(tmp_path / "missing.sqlite")]) == 2
    drive(MonitorCallback(), tmp_path, max_steps=1).run()
    assert main(["monitor", "flush", str(tmp_path / "callbridge-monitor.sqlite")]) == 2
    not_a_box = tmp_path / "x.sqlite"
    not_a_box.write_text("hello", encoding="utf-8")
    assert main(["monitor", "show", str(not_a_box)]) == 1
    err = capsys.readouterr().err
    assert "missing.sqlite: no such outbox file" in err
    assert "no URL recorded for this outbox; set CALLBRIDGE_MONITOR_URL or pass --url" in err
    assert "not a callbridge monitor outbox" in err


TRAINER = """
import sys, time
from pathlib import Path
from callbridge import Callback
from callbridge.callbacks.monitor import MonitorCallback
from callbridge.testing import Driver

class Slow(Callback):
    def on_step_end(self, run):
        time.sleep(0.005)

monitor = MonitorCallback(upload_url=sys.argv[2], backoff=0.05, max_backoff=0.2, timeout=1.0)
Driver([Slow(), monitor], max_steps=100_000, output_dir=Path(sys.argv[1])).run()
"""


def test_records_of_a_killed_run_are_delivered_by_the_cli_once(serve: Any, tmp_path: Path) -> None:
    down = serve(up=False)  # refuses connections: every record stays in the outbox
    script = tmp_path / "train.py"
    script.write_text(TRAINER, encoding="utf-8")
    box = tmp_path / "callbridge-monitor.sqlite"
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), down.url], env=subprocess_env()
    )
    try:
        wait_for(lambda: waiting(box) >= 50, timeout=30)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    logged = outbox_keys(box)
    assert len(logged) >= 50
    server = serve()
    env = subprocess_env(CALLBRIDGE_MONITOR_API_KEY=SECRET)
    proc = subprocess.run(
        [sys.executable, "-m", "callbridge", "monitor", "flush", str(box), "--url", server.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"delivered {len(logged)} records" in proc.stdout
    assert set(server.received) == set(logged)
    assert set(server.received.values()) == {1}
    assert set(server.authorizations) == {f"Bearer {SECRET}"}
    assert outbox_keys(box) == []


def test_urllib3_is_imported_only_when_a_record_is_sent(tmp_path: Path) -> None:
    code = (
        "import sys, callbridge\n"
        "from callbridge.callbacks.monitor import MonitorCallback\n"
        "from callbridge.testing import Driver\n"
        "Driver([MonitorCallback()], max_steps=2, output_dir=sys.argv[1]).run()\n"
        "print('urllib3' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
        check=True,
    )
    assert proc.stdout.strip() == "False"
