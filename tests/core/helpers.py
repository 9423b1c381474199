"""Paths and helpers shared by the core tests (conftest holds the fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PLUGINS = FIXTURES / "plugins"
FRAMEWORKS = ("torch", "transformers", "lightning", "pytorch_lightning")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python: the plugin fixtures importable, ``extra`` added."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS), env.get("PYTHONPATH")]))
    env.update(extra)
    return env
