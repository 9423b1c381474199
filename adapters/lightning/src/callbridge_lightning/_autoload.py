"""Lightning's ``callbacks_factory`` entry point: a project's callbacks in every ``Trainer``.

Opt-in per project: ``autoload = true`` in ``[tool.callbacks]`` of the
``pyproject.toml`` found from the working directory upwards (or the file named by
``CALLBRIDGE_CONFIG``). ``CALLBRIDGE_AUTOLOAD=0`` turns it off for one run.
Without the opt-in this costs one small file read per ``Trainer``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

_OFF = frozenset({"0", "false", "no", "off"})


def find_config(start: Path | None = None) -> Path | None:
    """``CALLBRIDGE_CONFIG``, else the nearest ``pyproject.toml`` from ``start`` upwards."""
    named = os.environ.get("CALLBRIDGE_CONFIG")
    if named:
        return Path(named)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _opted_in(path: Path) -> bool:
    if path.suffix != ".toml":
        return True  # a config named explicitly through CALLBRIDGE_CONFIG is the opt-in
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False  # not ours to report: Lightning users without callbridge configs
    section = data.get("tool", {}).get("callbacks", {})
    value = section.get("autoload", False) if isinstance(section, dict) else False
    return value is True or (
        isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}
    )


def factory() -> list[Any]:
    """The callbacks of the project's config when it opts in with ``autoload = true``; else none."""
    if os.environ.get("CALLBRIDGE_AUTOLOAD", "").strip().lower() in _OFF:
        return []
    path = find_config()
    if path is None or not _opted_in(path):
        return []
    from ._adapter import callbacks

    return callbacks(path)
