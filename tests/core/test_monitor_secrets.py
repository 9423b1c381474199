"""The ``monitor`` leaks no secret: every output, log, file and request searched by value.

Four secrets from the environment reach the monitor the ways a user would send
them: the API key (a secret-looking name), a token in the URL's query and a
password in its userinfo (both under plain names: in a URL they are secrets
whatever the variable is called), and a database password inside the message of
the exception that ends the run. The run logs at DEBUG (urllib3 included), then
``show``, ``monitor show``, ``monitor show --json`` and ``monitor flush`` run. Each
secret is searched in all of it: 0 occurrences, except the two places a credential
must go to work: the ``Authorization`` header (the key, as a Bearer token), and the
request line to the upload URL's own host (its query is how that platform
authenticates; callbridge never sends it anywhere else).
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from callbridge._cli import main
from callbridge.testing import Driver
from support.receiver import Server, serving

pytest.importorskip("urllib3")

API_KEY = "sk-acme-API-7f3c9e1d"  # ACME_API_KEY
QUERY = "qtok-4b1e8a72c9"  # MON_QUERY: a plain name, in the URL's query
PASSWORD = "pw-plain-93kd82hs"  # PW: a plain name, in the URL's userinfo
DB_PASSWORD = "db-pass-5521aa0f"  # ACME_DB_PASSWORD: in an exception message
SECRETS = (API_KEY, QUERY, PASSWORD, DB_PASSWORD)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    yield from serving()


def test_no_secret_reaches_an_output_a_log_a_file_or_the_platform(
    serve: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    server = serve()
    monkeypatch.setenv("ACME_API_KEY", API_KEY)
    monkeypatch.setenv("MON_QUERY", QUERY)
    monkeypatch.setenv("PW", PASSWORD)
    monkeypatch.setenv("ACME_DB_PASSWORD", DB_PASSWORD)
    url = server.url.replace("http://", "http://acme:${PW}@") + "?token=${MON_QUERY}"
    config = tmp_path / "pyproject.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[tool.callbacks.custom_callbacks]]
            name = "monitor"
            args = {{ upload_url = "{url}", api_key = "${{ACME_API_KEY}}", backoff = 0.02, max_backoff = 0.1, flush_timeout = 15.0 }}
            """  # noqa: E501 - one TOML inline table
        ),
        encoding="utf-8",
    )
    full_url = url.replace("${PW}", PASSWORD).replace("${MON_QUERY}", QUERY)

    def loss(step: int) -> float:
        if step == 4:
            raise RuntimeError(
                f"lost the database (password {DB_PASSWORD}) and {full_url} (pw {PASSWORD})"
            )
        return 1.0 / step

    with caplog.at_level(logging.DEBUG):
        driver = Driver.from_config(config, output_dir=tmp_path, max_steps=6, loss=loss)
        (monitor,) = [b.callback for b in driver.callbacks]
        shown = [repr(monitor), str(monitor)]
        with pytest.raises(RuntimeError, match="lost the database"):
            driver.run()
    # urllib3 did log its request lines at DEBUG (masked).
    assert any("urllib3" in r.name and "POST /ingest?" in r.getMessage() for r in caplog.records)
    box = tmp_path / "callbridge-monitor.sqlite"
    monkeypatch.setenv("CALLBRIDGE_MONITOR_URL", full_url)
    monkeypatch.setenv("CALLBRIDGE_MONITOR_API_KEY", API_KEY)
    with caplog.at_level(logging.DEBUG):
        assert main(["monitor", "show", str(box)]) == 0
        assert main(["monitor", "show", str(box), "--json"]) == 0
        assert main(["monitor", "flush", str(box)]) == 0
        main(["show", str(config)])
    out, err = capfd.readouterr()

    # The credentials did their job...
    assert set(server.authorizations) == {f"Bearer {API_KEY}"}
    assert all(f"?token={QUERY}" in line for line in server.request_lines)
    exception = [r for r in server.stored.values() if r["event"] == "exception"]
    assert len(exception) == 1
    assert "***" in exception[0]["metrics"]["error"]
    # ...and appear nowhere else.
    places: dict[str, str] = {
        "repr": "\n".join(shown),
        "stdout": out,
        "stderr": err,
        "log (DEBUG, urllib3 included)": caplog.text,
        "log arguments": "\n".join(str(r.args) for r in caplog.records),
        "request bodies": json.dumps(server.bodies),
        "request lines (other than the query token)": "\n".join(
            line.replace(f"token={QUERY}", "token=") for line in server.request_lines
        ),
    }
    for file in tmp_path.rglob("*"):
        if file.is_file() and file != config:
            places[f"file {file.name}"] = file.read_bytes().decode("latin-1")
    leaks = [
        (place, secret) for place, text in places.items() for secret in SECRETS if secret in text
    ]
    assert leaks == []
