"""callbridge's output is visible by default, and printed once when the application logs too.

Each case runs in a fresh Python: pytest itself puts a handler on the root logger, which
is exactly the "application configured logging" case.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from .helpers import subprocess_env

LOADED = "callbridge: 1 callbacks loaded, 0 disabled, 0 failed (<mapping>)"
RUN = """
import callbridge
from callbridge.testing import Driver
callbacks = callbridge.build({"custom_callbacks": [{"name": "log"}]})
"""
TRAIN = "Driver(callbacks, max_steps=4, logging_steps=2).run()\n"


def stderr_of(code: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
        check=True,
    )
    assert proc.stdout == ""
    return proc.stderr.splitlines()


def test_without_logging_configured_callbridge_prints_to_stderr_itself() -> None:
    lines = stderr_of(RUN + TRAIN)
    assert lines[0] == LOADED
    logs = [line.split()[2] for line in lines if line.startswith("[driver] ") and " log " in line]
    assert logs == ["2/4", "4/4"]  # the log callback's lines, at INFO
    assert all(count == 1 for count in Counter(lines).values())


def test_logging_configured_first_takes_over_with_its_format_and_no_duplicate() -> None:
    configure = (
        "import logging\nlogging.basicConfig(level=logging.INFO, format='APP %(message)s')\n"
    )
    lines = stderr_of(configure + RUN + TRAIN)
    assert lines[0] == f"APP {LOADED}"
    assert all(line.startswith("APP ") for line in lines)
    assert all(count == 1 for count in Counter(lines).values())


def test_logging_configured_after_the_build_gets_every_line_once_at_its_level() -> None:
    configure = (
        "import logging\nlogging.basicConfig(level=logging.INFO, format='APP %(message)s')\n"
    )
    lines = stderr_of(RUN + configure + TRAIN)
    assert lines[0] == LOADED  # callbridge's handler, before the application had one
    assert len(lines) > 2
    assert all(line.startswith("APP ") for line in lines[1:])  # then the application's, alone
    assert all(count == 1 for count in Counter(lines).values())


def test_a_level_set_by_the_application_silences_callbridge() -> None:
    quiet = "import logging\nlogging.getLogger('callbridge').setLevel(logging.WARNING)\n"
    assert stderr_of(quiet + RUN + TRAIN) == []
