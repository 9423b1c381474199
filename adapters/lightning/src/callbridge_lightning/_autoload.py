"""Lightning's ``callbacks_factory`` entry point: a project's callbacks in every ``Trainer``.

Opt-in per project: ``autoload = true`` in ``[tool.callbacks]`` of the
``pyproject.toml`` found from the working directory upwards (or the file named by
``CALLBRIDGE_CONFIG``). ``CALLBRIDGE_AUTOLOAD=0`` turns it off for one run.
Without the opt-in this costs one small file read per ``Trainer``.

A trainer that is also given callbridge's callbacks explicitly
(``Trainer(callbacks=callbridge_lightning.callbacks(...))`` or ``FromConfig``) keeps
those only: the autoloaded set stands aside, with one warning. So the factory returns
one inert :class:`AutoloadGate`, which decides at ``setup``, once the trainer's list is
complete, and inserts the callbacks right after itself (Lightning is iterating the list
to call ``setup``: what follows gets it too, and checkpoint state is restored after).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

logger = logging.getLogger("callbridge")

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

    return [AutoloadGate(path, callbacks(path))]


def _from_callbridge(callback: Callback) -> bool:
    from ._adapter import FromConfig, NeutralCallback, _DisplayOff

    return isinstance(callback, (NeutralCallback, FromConfig, _DisplayOff))


class AutoloadGate(Callback):
    """The autoloaded callbacks, inserted at ``setup`` unless the trainer has callbridge's own.

    Args:
        path: the configuration that opted in.
        children: its callbacks, as ``callbridge_lightning.callbacks(path)`` built them.
    """

    def __init__(self, path: Path, children: list[Callback]) -> None:
        self.path = path
        self.children = children
        self.inserted: bool | None = None  # None until setup decides

    @property
    def state_key(self) -> str:
        return f"callbridge-autoload[{self.path}]"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.inserted is not None:
            return
        trainer_callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        explicit = [cb for cb in trainer_callbacks if cb is not self and _from_callbridge(cb)]
        self.inserted = not explicit
        if explicit:
            if trainer.is_global_zero:
                logger.warning(
                    "callbridge: %s has autoload = true, and this Trainer was also given "
                    "callbridge callbacks (callbridge_lightning.callbacks(...) or FromConfig): "
                    "using those only, the autoloaded ones are left out. To silence this, "
                    "remove one of the two: autoload = true (or set CALLBRIDGE_AUTOLOAD=0), "
                    "or the explicit callbacks",
                    self.path,
                )
            return
        position = next(i for i, cb in enumerate(trainer_callbacks) if cb is self)
        trainer_callbacks[position + 1 : position + 1] = self.children
