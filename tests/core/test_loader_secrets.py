"""Secrets through the loader, by value (callbridge._secrets): a callback name read from a secret
variable, a URL password and query under plain variable names, and an exception text quoting
them never reach ``check``, ``show``, ``show --json``, a ``ConfigError``, a repr, a log line
(DEBUG included) or the reporter's file. Every output is searched: 0 occurrences."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import callbridge
from callbridge import ConfigError
from callbridge.testing import Driver

SECRETS = {
    "ACME_API_KEY": "sk-leak-name-0001",  # a secret-looking name, used as a callback name
    "LEAK_PW": "pw-leak-plain-0002",  # a plain name, in a URL's userinfo
    "LEAK_Q": "q-leak-plain-0003",  # a plain name, in a URL's query
    "ACME_UPLOAD_KEY": "sk-leak-key-0004",  # a secret-looking name, an argument
}
URL = "https://user:${LEAK_PW}@127.0.0.1:9/ingest?token=${LEAK_Q}"


def occurrences(text: str) -> int:
    return sum(text.count(value) for value in SECRETS.values())


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "leaky.yaml"
    path.write_text(
        "callback_errors: raise\n"
        "custom_callbacks:\n"
        "  - name: ${ACME_API_KEY}\n"
        "  - name: sample_callbacks.Leaky\n"
        f"    args: {{url: '{URL}', api_key: '${{ACME_UPLOAD_KEY}}', fail_at: 2}}\n"
        "  - name: sample_callbacks.Typed\n"
        f"    args: {{label: '{URL}', count: '{URL}'}}\n"
        "  - name: reporter\n"
        f"    args: {{filename: '{tmp_path / 'out' / 'report.json'}'}}\n",
        encoding="utf-8",
    )
    return path


def test_check_show_and_show_json_print_no_secret(
    config: Path, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    outputs = []
    for args in (["check"], ["show"], ["show", "--json"]):
        proc = cli(*args, str(config), env=SECRETS)
        assert proc.returncode == 1  # the unknown name and the bad count are problems
        outputs.append(proc.stdout + proc.stderr)
    text = "\n".join(outputs)
    assert "unknown callback '***'" in text
    assert "https://***@127.0.0.1:9/ingest?token=***" in text
    assert occurrences(text) == 0


def test_errors_reprs_logs_and_the_reporters_file_hold_no_secret(
    config: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts = []
    caplog.set_level(logging.DEBUG)  # every logger, urllib3 and the library's included
    loaded = callbridge.load(config)
    texts.append(repr(loaded))
    with pytest.raises(ConfigError) as info:
        callbridge.build(config, strict=True)
    texts += [str(info.value), repr(info.value.problems)]
    texts.append("\n".join(str(p) for p in callbridge.check(config)))
    # Not strict: the unknown name and the bad count are skipped (logged), the rest run;
    # Leaky then fails at step 2 with a text that quotes its URL and key.
    with pytest.raises(RuntimeError) as failure:
        Driver.from_config(config, output_dir=tmp_path / "out", max_steps=4).run()
    assert "POST https://user:" in str(failure.value)  # the user's own exception, untouched
    texts.append(caplog.text)
    assert "skipped callback '***'" in caplog.text
    report = (tmp_path / "out" / "report.json").read_text(encoding="utf-8")
    assert '"status": "failed"' in report
    assert "RuntimeError: POST https://***@127.0.0.1:9/ingest?token=*** failed with key ***" in (
        report
    )
    texts.append(report)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    assert occurrences("\n".join(texts)) == 0


def test_the_working_directory_and_plain_words_are_not_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PWD ends like a password but is a path; a flag named like a secret may hold "true"."""
    from callbridge._secrets import mask_text

    monkeypatch.setenv("PWD", "/work/project")
    monkeypatch.setenv("NPM_CONFIG_ALWAYS_AUTH", "true")
    monkeypatch.setenv("DB_PWD", "pw-real-secret")
    text = "strict = true in /work/project/pyproject.toml, password pw-real-secret"
    assert mask_text(text) == "strict = true in /work/project/pyproject.toml, password ***"


def test_the_repr_of_a_resolved_plan_masks_its_secrets(config: Path) -> None:
    from callbridge._build import plan_all

    plans, _ = plan_all(callbridge.load(config))
    text = repr([plan for plan in plans if plan is not None])
    assert "sample_callbacks.Leaky" in text
    assert occurrences(text) == 0
