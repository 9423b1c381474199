"""Core test fixtures: plugin fixtures on sys.path, an isolated registry, the CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from callbridge.testing import use_registry

from .helpers import PLUGINS, subprocess_env

# The reference document's company packages (callbacks.company, my_company.callbacks) and the
# test callbacks (sample_callbacks) are importable by their import paths, as a user's would be.
if str(PLUGINS) not in sys.path:
    sys.path.insert(0, str(PLUGINS))


@pytest.fixture(autouse=True)
def _isolated_registry() -> Iterator[object]:
    """Every test gets its own copy of the default registry: registrations never leak."""
    with use_registry() as isolated:
        yield isolated


@pytest.fixture(autouse=True)
def _clear_journal() -> Iterator[None]:
    from sample_callbacks import Recorder

    Recorder.journal.clear()
    yield
    Recorder.journal.clear()


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m callbridge ARGS`` as a real process (plugins importable)."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        unset: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        child_env = subprocess_env(**(env or {}))
        for name in unset:
            child_env.pop(name, None)
        return subprocess.run(
            [sys.executable, "-m", "callbridge", *args],
            capture_output=True,
            text=True,
            env=child_env,
            cwd=cwd,
            timeout=60,
            check=False,
        )

    return run
