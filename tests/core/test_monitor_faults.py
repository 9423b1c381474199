"""The ``monitor`` under faults: nothing lost, nothing stuck, nothing hangs, nothing leaks.

Each case is one way a platform, a disk or a user can go wrong (issue 12): a record
the platform refuses for good, an outbox that cannot be opened or is damaged, two
processes sharing one outbox, a server that trickles its answer, settings that can
never work, a missing ``urllib3``, damaged outboxes under ``monitor show``/``flush``,
a resumed run, secrets from the environment. Every server is real (127.0.0.1, see
``support.receiver``); every outbox is a real SQLite file under ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbridge import Callback, Run
from callbridge._cli import main
from callbridge._outbox import Outbox, owner_id
from callbridge._secrets import mask_url
from callbridge.callbacks._delivery import safe_url, url_problem
from callbridge.callbacks.monitor import MonitorCallback
from callbridge.testing import Driver
from support.receiver import Server, serving

from .helpers import subprocess_env

pytest.importorskip("urllib3")

FAST = {"backoff": 0.02, "max_backoff": 0.1, "timeout": 2.0, "flush_timeout": 15.0}


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    yield from serving()


@pytest.fixture(autouse=True)
def _own_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last-resort fallback outbox lives in the temp dir: this test's own."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))


def keys_of(monitor: MonitorCallback) -> set[str]:
    """Every idempotency key the monitor's last run produced."""
    key = getattr(monitor, "key", lambda seq: f"{monitor.run_id}:{seq}")
    return {key(seq) for seq in range(1, monitor.seq + 1)}


def table(path: Path, name: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(f"SELECT key, body FROM {name} ORDER BY id"))
    finally:
        db.close()


def drive(monitor: MonitorCallback, tmp_path: Path, *extra: Callback, **kwargs: Any) -> Any:
    kwargs.setdefault("max_steps", 20)
    kwargs.setdefault("eval_steps", 5)
    kwargs.setdefault("save_steps", 10)
    return Driver([*extra, monitor], output_dir=tmp_path, **kwargs)


# --- a poison record ---------------------------------------------------------------------------


class Poisoned(MonitorCallback):
    """A monitor whose 5th record carries a field the platform refuses (HTTP 400)."""

    def record(self, run: Run, event: str, metrics: dict[str, Any]) -> dict[str, Any]:
        body = super().record(run, event, metrics)
        if body["seq"] == 5:
            body["poison"] = True
        return body


def refuse_poison(payload: Any) -> str | None:
    return "400" if any(r.get("poison") for r in payload["records"]) else None


def test_a_poison_record_goes_to_the_dead_letters_and_the_rest_is_delivered(
    serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve()
    server.judge = refuse_poison
    monitor = Poisoned(upload_url=server.url, upload_interval=8, **FAST)
    result = drive(monitor, tmp_path).run()
    assert result.errors.total == 0
    poison = monitor.key(5)
    assert set(server.received) == keys_of(monitor) - {poison}
    assert set(server.received.values()) == {1}
    box = tmp_path / "callbridge-monitor.sqlite"
    assert table(box, "records") == []
    assert [key for key, _ in table(box, "dead")] == [poison]

    # The next run is not blocked by it (it used to deliver 0 of its records).
    clean = MonitorCallback(upload_url=server.url, **FAST)
    drive(clean, tmp_path).run()
    assert keys_of(clean) <= set(server.received)

    assert main(["monitor", "show", str(box)]) == 0
    out = capsys.readouterr().out
    assert "0 records waiting, 1 dead letters" in out
    assert poison in out
    assert "HTTP 400 Bad Request" in out
    assert "--retry-dead" in out

    # Fixed on the platform's side: --retry-dead sends it again.
    server.judge = None
    assert main(["monitor", "flush", str(box), "--retry-dead"]) == 0
    assert "delivered 1 records" in capsys.readouterr().out
    assert server.received[poison] == 1
    assert table(box, "dead") == []


def test_a_401_is_the_sender_s_fault_not_a_record_s_nothing_is_dead_lettered(
    serve: Any, tmp_path: Path
) -> None:
    server = serve(lambda n: "401")
    monitor = MonitorCallback(upload_url=server.url, **FAST)
    drive(monitor, tmp_path, max_steps=5).run()
    box = tmp_path / "callbridge-monitor.sqlite"
    assert server.requests == 1
    assert {key for key, _ in table(box, "records")} == keys_of(monitor)
    assert table(box, "dead") == []


def test_records_damaged_in_the_outbox_are_set_aside_without_blocking_the_run(
    serve: Any, tmp_path: Path
) -> None:
    box = tmp_path / "callbridge-monitor.sqlite"
    MonitorCallback(outbox=box)  # nothing written yet: an earlier run's outbox, then damage
    early = Outbox(box)
    early.add("old:1", "{not json")
    early.add("old:2", "[1, 2]")
    early.add("old:3", json.dumps({"idempotency_key": "old:3", "run_id": "old"}))
    early.close()
    server = serve()
    monitor = MonitorCallback(upload_url=server.url, **FAST)
    drive(monitor, tmp_path, max_steps=5).run()
    assert set(server.received) == keys_of(monitor) | {"old:3"}
    assert sorted(key for key, _ in table(box, "dead")) == ["old:1", "old:2"]


# --- outboxes that cannot be opened ------------------------------------------------------------


def damaged_text(path: Path) -> None:
    path.write_text("hello, I am not a database\n", encoding="utf-8")


def damaged_bytes(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 64)


def damaged_pages(path: Path) -> None:
    """A real outbox whose pages after the header were overwritten."""
    box = Outbox(path)
    for i in range(200):
        box.add(f"k{i}", json.dumps({"i": i, "pad": "x" * 200}))
    box.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    data[120:] = b"\xff" * (len(data) - 120)
    path.write_bytes(bytes(data))


def foreign_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("name", "damage", "moved_aside"),
    [
        ("text file", damaged_text, True),
        ("random bytes", damaged_bytes, True),
        ("corrupted pages", damaged_pages, True),
        ("another program's database", foreign_database, False),
    ],
)
def test_an_outbox_that_cannot_be_used_loses_no_record_and_is_kept_for_inspection(
    serve: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    damage: Callable[[Path], None],
    moved_aside: bool,
) -> None:
    box = tmp_path / "callbridge-monitor.sqlite"
    damage(box)
    before = box.read_bytes()
    server = serve()
    monitor = MonitorCallback(upload_url=server.url, **FAST)
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        result = drive(monitor, tmp_path).run()
    assert result.errors.total == 0
    assert set(server.received) == keys_of(monitor)  # 0 records lost
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(box) in w for w in warnings), warnings
    if moved_aside:
        (aside,) = tmp_path.glob("callbridge-monitor.sqlite.damaged-*[0-9]")
        assert aside.read_bytes() == before  # kept, as it was
        assert any(str(aside) in w for w in warnings)
        # A fresh outbox took its place: the next run works without a word.
        caplog.clear()
        again = MonitorCallback(upload_url=server.url, **FAST)
        with caplog.at_level(logging.WARNING, logger="callbridge"):
            drive(again, tmp_path, max_steps=3).run()
        assert keys_of(again) <= set(server.received)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    else:  # someone else's database is never moved or written
        assert box.read_bytes() == before
        assert any("callbridge-monitor-fallback.sqlite" in w for w in warnings)


def test_an_outbox_folder_that_cannot_be_created_falls_back_to_the_temp_dir(
    serve: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file where the folder should be fails for root too (chmod would not)."""
    blocker = tmp_path / "runs"
    blocker.write_text("a file, not a folder", encoding="utf-8")
    server = serve(up=False)
    monitor = MonitorCallback(upload_url=server.url, outbox=blocker / "box.sqlite", **FAST)
    monitor.flush_timeout = 0.2
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        drive(monitor, tmp_path, max_steps=5).run()
    (fallback,) = (tmp_path / "tmpdir").glob("callbridge-monitor-*.sqlite")
    assert {key for key, _ in table(fallback, "records")} == keys_of(monitor)  # 0 lost
    text = caplog.text
    assert str(blocker / "box.sqlite") in text
    assert str(fallback) in text
    # The next run falls back to the same file and delivers what the first one left.
    server.up()
    again = MonitorCallback(upload_url=server.url, outbox=blocker / "box.sqlite", **FAST)
    drive(again, tmp_path, max_steps=5).run()
    assert set(server.received) == keys_of(monitor) | keys_of(again)
    assert set(server.received.values()) == {1}


def test_a_folder_where_the_outbox_file_should_be_is_left_alone_and_nothing_is_lost(
    serve: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "callbridge-monitor.sqlite").mkdir()
    server = serve()
    monitor = MonitorCallback(upload_url=server.url, **FAST)
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        drive(monitor, tmp_path, max_steps=5).run()
    assert set(server.received) == keys_of(monitor)
    assert (tmp_path / "callbridge-monitor.sqlite").is_dir()
    assert "callbridge-monitor-fallback.sqlite" in caplog.text
    assert main(["monitor", "show", str(tmp_path / "callbridge-monitor.sqlite")]) == 2
    assert capsys.readouterr().err.strip().endswith("callbridge-monitor.sqlite: not a file")


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` refuses new files, for root too (chmod does not stop root: chattr +i does)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: no way to make a folder read-only")
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not allowed here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("existing", [False, True], ids=["new outbox", "existing outbox"])
def test_a_read_only_outbox_folder_falls_back_losing_nothing(
    serve: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, existing: bool
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    earlier: set[str] = set()
    if existing:  # an earlier run's outbox, left with records in it
        before = MonitorCallback(outbox=folder / "box.sqlite")
        drive(before, tmp_path, max_steps=3).run()
        earlier = keys_of(before)
    server = serve()
    with read_only(folder):
        probe = folder / "probe"
        with pytest.raises(PermissionError):  # the folder really is read-only
            probe.touch()
        monitor = MonitorCallback(upload_url=server.url, outbox=folder / "box.sqlite", **FAST)
        with caplog.at_level(logging.WARNING, logger="callbridge"):
            result = drive(monitor, tmp_path, max_steps=5).run()
    assert result.errors.total == 0
    assert keys_of(monitor) <= set(server.received)  # 0 of this run's records lost
    assert str(folder / "box.sqlite") in caplog.text
    (fallback,) = (tmp_path / "tmpdir").glob("callbridge-monitor-*.sqlite")
    assert str(fallback) in caplog.text
    if existing:  # the earlier records wait where they were, untouched
        assert {key for key, _ in table(folder / "box.sqlite", "records")} == earlier


def test_an_outbox_that_fails_during_the_run_hands_over_to_a_fallback_losing_nothing(
    serve: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """From step 5 the outbox refuses writes (as a disk gone read-only would)."""
    server = serve()
    monitor = MonitorCallback(upload_url=server.url, **FAST)

    class ReadOnlyFromStep5(Callback):
        def on_step_end(self, run: Run) -> None:
            if run.state.global_step == 5:
                monitor._box._db.execute("PRAGMA query_only = 1")  # type: ignore[union-attr]

    with caplog.at_level(logging.WARNING, logger="callbridge"):
        result = drive(monitor, tmp_path, ReadOnlyFromStep5()).run()
    assert result.errors.total == 0
    box = tmp_path / "callbridge-monitor.sqlite"
    fallback = tmp_path / "callbridge-monitor-fallback.sqlite"
    left = {key for key, _ in table(box, "records")} | {
        key for key, _ in table(fallback, "records")
    }
    assert set(server.received) | left == keys_of(monitor)  # 0 lost
    assert set(server.received.values()) == {1}
    assert any(
        str(box) in r.getMessage() and str(fallback) in r.getMessage() for r in caplog.records
    )


# --- two processes, one outbox -----------------------------------------------------------------

SHARER = """
import json, sys, time
from callbridge import Callback
from callbridge.callbacks.monitor import MonitorCallback
from callbridge.testing import Driver

class Pace(Callback):
    def on_step_end(self, run):
        time.sleep(0.002)

monitor = MonitorCallback(
    upload_url=sys.argv[2], outbox=sys.argv[1], upload_interval=5,
    backoff=0.02, max_backoff=0.1, timeout=5.0, flush_timeout=60.0,
)
Driver([Pace(), monitor], max_steps=300, eval_steps=7, save_steps=50).run()
print(json.dumps([monitor.key(s) for s in range(1, monitor.seq + 1)]))
"""


def test_two_processes_sharing_an_outbox_never_send_a_record_twice(
    serve: Any, tmp_path: Path
) -> None:
    server = serve(lambda n: "slow")
    server.slow_seconds = 0.01  # requests overlap: both senders see the same waiting rows
    script = tmp_path / "sharer.py"
    script.write_text(SHARER, encoding="utf-8")
    box = tmp_path / "shared.sqlite"
    Outbox(box).close()  # both start on an existing outbox
    children = [
        subprocess.Popen(
            [sys.executable, str(script), str(box), server.url],
            stdout=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for _ in range(2)
    ]
    keys: set[str] = set()
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        keys |= set(json.loads(out.strip().splitlines()[-1]))
    assert len(keys) > 2 * 300  # both runs' records, every log, evaluation and save
    assert set(server.received) == keys  # 0 lost
    duplicates = sum(n - 1 for n in server.received.values())
    assert duplicates == 0
    assert table(box, "records") == []


def test_flush_leaves_records_a_live_process_is_sending_and_takes_a_dead_one_s(
    serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    offline = MonitorCallback(outbox=Path("box.sqlite"))
    drive(offline, tmp_path, max_steps=5).run()
    box = tmp_path / "box.sqlite"
    keys = [key for key, _ in table(box, "records")]
    held = Outbox(box)
    # This test's process is alive: its claim on the first 3 records stands.
    assert len(held.claim(owner_id(), 3, lease=60.0)) == 3
    server = serve()
    assert main(["monitor", "flush", str(box), "--url", server.url]) == 1
    assert set(server.received) == set(keys[3:])
    assert "3 records are being sent by another process" in capsys.readouterr().err
    # A dead process's claim (same host, a pid that has exited) is taken over at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    host = owner_id().rsplit(":", 2)[0]
    held._db.execute("UPDATE records SET owner = ?", (f"{host}:{dead.stdout.strip()}:0",))
    held.close()
    assert main(["monitor", "flush", str(box), "--url", server.url]) == 0
    assert set(server.received) == set(keys)
    assert set(server.received.values()) == {1}


# --- deadlines ---------------------------------------------------------------------------------


def test_flush_honours_its_deadline_against_a_trickling_server(
    serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One byte every 1.5 s keeps a per-read timeout happy forever: the deadline is total."""
    offline = MonitorCallback(outbox=Path("box.sqlite"))
    drive(offline, tmp_path, max_steps=5).run()
    box = tmp_path / "box.sqlite"
    waiting = len(table(box, "records"))
    server = serve(lambda n: "trickle")
    started = time.monotonic()
    status = main(
        ["monitor", "flush", str(box), "--url", server.url, "--flush-timeout", "3",
         "--timeout", "60"]
    )  # fmt: skip
    took = time.monotonic() - started
    assert status == 1
    assert len(table(box, "records")) == waiting  # nothing acknowledged, nothing lost
    assert took < 5 * 3  # a generous bound: it used to run for minutes
    assert "did not accept every record" in capsys.readouterr().err


def test_train_end_honours_flush_timeout_against_a_trickling_server(
    serve: Any, tmp_path: Path
) -> None:
    server = serve(lambda n: "trickle")
    monitor = MonitorCallback(
        upload_url=server.url, timeout=600, flush_timeout=1.0, backoff=0.02, max_backoff=0.1
    )
    ended: list[float] = []

    class Clock(Callback):
        def on_train_end(self, run: Run) -> None:
            ended.append(time.monotonic())

    result = drive(monitor, tmp_path, Clock(), max_steps=5).run()
    returned = time.monotonic()
    assert result.errors.total == 0
    assert returned - ended[0] < 5 * 1.0
    box = tmp_path / "callbridge-monitor.sqlite"
    assert {key for key, _ in table(box, "records")} == keys_of(monitor)


def test_a_request_slower_than_timeout_is_cut_and_retried(serve: Any, tmp_path: Path) -> None:
    server = serve(lambda n: "trickle" if n == 1 else "ok")
    monitor = MonitorCallback(upload_url=server.url, **{**FAST, "timeout": 0.5})
    drive(monitor, tmp_path, max_steps=5).run()
    assert server.requests >= 2
    assert set(server.stored) == keys_of(monitor)


# --- settings that cannot work -----------------------------------------------------------------

BAD_SETTINGS = [
    ("timeout", float("inf"), "timeout must be a finite number of seconds"),
    ("timeout", float("nan"), "timeout must be a finite number of seconds"),
    ("timeout", 0, "timeout must be a finite number of seconds, 0 < timeout"),
    ("timeout", -1.0, "timeout must be a finite number of seconds"),
    ("timeout", 1e9, "<= 86400"),
    ("flush_timeout", float("inf"), "flush_timeout must be a finite number of seconds"),
    ("flush_timeout", -0.5, "0 <= flush_timeout <= 86400"),
    ("backoff", float("nan"), "backoff must be a finite number"),
    ("max_backoff", 1e12, "max_backoff must be a finite number"),
    ("upload_interval", 0, "upload_interval must be an integer, 1 <= upload_interval <= 10000"),
    ("upload_interval", 10**9, "upload_interval must be an integer"),
    ("max_retries", -1, "max_retries must be an integer, 0 <= max_retries"),
    ("upload_url", "http://", "expected a URL with a host"),
    ("upload_url", "http:///ingest", "expected a URL with a host"),
    ("upload_url", "http://mon.acme.dev/in gest", "without spaces"),
    ("upload_url", "ftp://mon.acme.dev/ingest", "expected an http:// or https:// URL"),
    ("upload_url", "mon.acme.dev/ingest", "expected an http:// or https:// URL"),
    ("upload_url", "http://mon.acme.dev:99999/ingest", "Port out of range"),
    ("upload_url", "http://mon.acme.dev:0/ingest", "between 1 and 65535"),
    ("upload_url", "http://[::1/ingest", "expected a valid URL"),
    ("upload_url", "http://h/x\n", "control characters"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_SETTINGS)
def test_settings_that_cannot_work_are_refused_at_construction(
    field: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=r".") as info:
        MonitorCallback(**{field: value})
    assert message in str(info.value)


def test_check_reports_unworkable_settings_with_their_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(
        textwrap.dedent(
            """
            custom_callbacks:
              - name: monitor
                args: {upload_url: "http://127.0.0.1:8080/x", flush_timeout: .inf}
              - name: monitor
                args: {upload_url: "http://127.0.0.1:99999/x?token=tok-SECRET-1"}
              - name: monitor
                args: {timeout: .nan}
            """
        ),
        encoding="utf-8",
    )
    assert main(["check", str(config)]) == 1
    out = capsys.readouterr().out
    assert "3 problems" in out
    assert "custom_callbacks[0]" in out
    assert "flush_timeout must be a finite number" in out
    assert "custom_callbacks[1]" in out
    assert "Port out of range" in out
    assert "custom_callbacks[2]" in out
    assert "timeout must be a finite number" in out
    assert "tok-SECRET-1" not in out
    assert "token=***" in out


# --- without urllib3 ---------------------------------------------------------------------------


def test_without_urllib3_the_monitor_is_a_clear_error_at_construction_and_in_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "urllib3", None)  # as if the extra were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'callbridge\[monitor\]'"):
        MonitorCallback(upload_url="http://127.0.0.1:8080/ingest")
    MonitorCallback()  # the outbox alone needs no urllib3
    config = tmp_path / "pyproject.toml"
    config.write_text(
        '[tool.callbacks]\nstrict = true\ncustom_callbacks = [{ name = "monitor", args = '
        '{ upload_url = "http://127.0.0.1:8080/ingest" } }]\n',
        encoding="utf-8",
    )
    assert main(["check", str(config)]) == 1
    out = capsys.readouterr().out
    assert "custom_callbacks[0]" in out
    assert "pip install 'callbridge[monitor]'" in out


def test_without_urllib3_monitor_flush_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    drive(MonitorCallback(), tmp_path, max_steps=2).run()
    monkeypatch.setitem(sys.modules, "urllib3", None)
    box = tmp_path / "callbridge-monitor.sqlite"
    assert main(["monitor", "flush", str(box), "--url", "http://127.0.0.1:9/x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'callbridge[monitor]'" in err
    assert "Traceback" not in err


# --- damaged outboxes under `monitor show` and `monitor flush` ---------------------------------


def good(i: int, **changes: Any) -> str:
    record = {
        "idempotency_key": f"run:{i}", "run_id": "run", "seq": i, "event": "log", "step": i,
        "epoch": 0.5, "metrics": {"loss": 1.0}, "tags": {}, "timestamp": 1_700_000_000.0,
    }  # fmt: skip
    record.update(changes)
    return json.dumps(record)


def outbox_with(*bodies: Any) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        box = Outbox(path)
        box.add("run:0", good(0))
        box.close()
        db = sqlite3.connect(path)
        for i, body in enumerate(bodies, 1):
            db.execute("INSERT INTO records (key, body) VALUES (?, ?)", (f"run:{i}", body))
        db.commit()
        db.close()

    return make


def sql(*statements: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        outbox_with()(path)
        db = sqlite3.connect(path)
        for statement in statements:
            db.execute(statement)
        db.commit()
        db.close()

    return make


def raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def foreign(ddl: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        db = sqlite3.connect(path)
        db.execute(ddl)
        db.commit()
        db.close()

    return make


DAMAGED: dict[str, Callable[[Path], None]] = {
    "body not JSON": outbox_with("{not json"),
    "body a list": outbox_with("[1, 2, 3]"),
    "body a string": outbox_with('"hello"'),
    "body null": outbox_with("null"),
    "body a number": outbox_with("42"),
    "body deeply nested": outbox_with("[" * 100_000 + "]" * 100_000),
    "body a blob": outbox_with(b"\x00\x01binary"),
    "timestamp 1e20": outbox_with(good(1, timestamp=1e20)),
    "timestamp -1e20": outbox_with(good(1, timestamp=-1e20)),
    "timestamp a string": outbox_with(good(1, timestamp="yesterday")),
    "timestamp NaN": outbox_with(good(1).replace("1700000000.0", "NaN")),
    "epoch a string": outbox_with(good(1, epoch="one")),
    "epoch a list": outbox_with(good(1, epoch=[1])),
    "metrics a list": outbox_with(good(1, metrics=[1, 2])),
    "a newline and ESC in the event": outbox_with(good(1, event="log\n\x1b[31mforged")),
    "step a dict": outbox_with(good(1, step={"a": 1})),
    "missing meta table": sql("DROP TABLE meta"),
    "missing dead table": sql("DROP TABLE dead"),
    "upload_url not a URL": sql("INSERT INTO meta VALUES ('upload_url', 'http://')"),
    "upload_url a number": sql("INSERT INTO meta VALUES ('upload_url', 12)"),
    "records without claim columns": sql(
        "CREATE TABLE r2 (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE, body TEXT)",
        "INSERT INTO r2 (key, body) SELECT key, body FROM records",
        "DROP TABLE records",
        "ALTER TABLE r2 RENAME TO records",
    ),
    "foreign schema": foreign("CREATE TABLE customers (id INTEGER, name TEXT)"),
    "records table of another shape": foreign("CREATE TABLE records (a INTEGER, b TEXT)"),
    "empty file": raw(b""),
    "not SQLite": raw(b"hello, I am not a database\n"),
    "SQLite header then garbage": raw(b"SQLite format 3\x00" + b"\xff" * 4000),
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_monitor_show_and_flush_never_print_a_traceback_on_a_damaged_outbox(
    serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    box = tmp_path / "damaged.sqlite"
    DAMAGED[name](box)
    server = serve()
    for argv in (
        ["monitor", "show", str(box)],
        ["monitor", "show", str(box), "--json"],
        ["monitor", "flush", str(box), "--url", server.url, "--flush-timeout", "10"],
    ):
        status = main(argv)  # raising anything would fail the test: no traceback
        out, err = capsys.readouterr()
        assert status in (0, 1), (argv, status, err)
        lines = err.splitlines()
        if status:
            assert len(lines) == 1, (argv, err)
            assert str(box) in lines[0], (argv, err)
        assert "\x1b" not in out + err
        assert "\nforged" not in out
    # Whatever was readable was delivered; nothing readable was left behind or lost.
    if "run:0" in server.received:
        assert server.received["run:0"] == 1


def test_flush_delivers_the_readable_records_of_a_damaged_outbox_and_sets_aside_the_rest(
    serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = tmp_path / "box.sqlite"
    outbox_with("{not json", good(2), "[1]", good(4, timestamp=1e20))(box)
    server = serve()
    assert main(["monitor", "flush", str(box), "--url", server.url]) == 1
    assert set(server.received) == {"run:0", "run:2", "run:4"}
    assert sorted(key for key, _ in table(box, "dead")) == ["run:1", "run:3"]
    assert "2 records refused for good moved to the dead letters" in capsys.readouterr().err


# --- a resumed run -----------------------------------------------------------------------------


def test_a_resumed_run_keeps_its_run_id_and_marks_the_steps_it_trains_again(
    serve: Any, tmp_path: Path
) -> None:
    """Saved at step 5, died at step 8 (its records up to 8 sent), resumed from step 5."""
    server = serve()
    first = MonitorCallback(upload_url=server.url, **FAST)
    saved: list[dict[str, Any]] = []

    class Checkpoint(Callback):
        def on_save(self, run: Run) -> None:
            saved.append(first.state_dict())

    drive(first, tmp_path, Checkpoint(), max_steps=8, save_steps=5).run()
    second = MonitorCallback(upload_url=server.url, **FAST)
    second.load_state_dict(saved[0])
    drive(second, tmp_path, max_steps=12, save_steps=5, start_step=5).run()

    records = list(server.stored.values())
    assert {r["run_id"] for r in records} == {first.run_id}  # one run id
    assert set(server.received.values()) == {1}
    assert second.resume == 1
    again = [r for r in records if r["resume"] == 1 and r["event"] == "log"]
    assert {r["step"] for r in again} == set(range(6, 13))
    assert {r["step"] for r in again if r["retrained"]} == {6, 7, 8}
    assert not any(r["retrained"] for r in records if r["resume"] == 0)
    # Resumed from step 5 twice (the second attempt died too): keys never collide.
    third = MonitorCallback(upload_url=server.url, **FAST)
    third.load_state_dict(saved[0])
    drive(third, tmp_path, max_steps=12, save_steps=5, start_step=5).run()
    assert third.resume == 2
    assert set(server.received.values()) == {1}
    assert keys_of(third) <= set(server.received)


# --- masking never raises ----------------------------------------------------------------------

URLISH = st.one_of(
    st.text(),
    st.builds(
        "{}://{}@{}:{}/{}?{}#{}".format,
        st.sampled_from(["http", "https", "ftp", ""]),
        st.text(max_size=12),
        st.text(max_size=12),
        st.one_of(st.integers(-10, 10**6).map(str), st.text(max_size=6)),
        st.text(max_size=12),
        st.text(max_size=12),
        st.text(max_size=6),
    ),
)


@given(URLISH)
def test_url_helpers_never_raise_and_never_show_a_query_value(url: str) -> None:
    """safe_url, mask_url and url_problem take anything (a port of 99999 used to raise)."""
    safe, masked, problem = safe_url(url), mask_url(url), url_problem(url)
    assert isinstance(safe, str)
    assert isinstance(masked, str)
    assert problem is None or isinstance(problem, str)
    if "?" in masked:  # every query value is masked, whatever the text around it
        query = masked.split("?", 1)[1].split("#", 1)[0]
        for item in query.split("&"):
            _name, eq, value = item.partition("=")
            assert value == "***" if eq else item in ("", "***")
