"""Where the built-ins write: a file name resolved against the run's output directory."""

from __future__ import annotations

from pathlib import Path

from .._protocol import Run


def in_output_dir(run: Run, name: str | Path) -> Path | None:
    """``name`` itself when absolute, else under ``run.output_dir``; None when the run has none."""
    path = Path(name)
    if path.is_absolute():
        return path
    return None if run.output_dir is None else Path(run.output_dir) / path
