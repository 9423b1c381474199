"""What the ``callbridge`` command sets up around a subcommand: versions and the import path.

``check``, ``show`` and ``list`` import the modules a config names as the training script
would: ``python train.py`` run from a project has the script's folder on ``sys.path``, so
``mycallbacks.EventTally`` beside it imports. The command puts the folders of the config
files (their project roots), the working directory and every ``--import-path DIR`` first on
``sys.path`` for the duration of the command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: The distributions ``--version`` reports, the core first; adapters only where installed.
DISTRIBUTIONS = ("callbridge", "callbridge-hf", "callbridge-lightning", "callbridge-llamafactory")

IMPORT_PATH_HELP = (
    "a folder to import callback modules from (repeatable). The folders of the config "
    "files and the working directory are always searched, first, as `python train.py` "
    "searches the script's folder"
)

#: Printed under ``check``'s problems when a module of the config was not found.
MISSING_MODULE_HINT = (
    "hint: callbridge imported your modules from {searched}. A module elsewhere needs "
    "--import-path DIR (e.g. --import-path src), PYTHONPATH=DIR, or `pip install -e .` of "
    "the project that holds it."
)


def versions() -> str:
    """``callbridge 0.1.0`` and one line per installed adapter, for ``--version``."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    lines = []
    for dist in DISTRIBUTIONS:
        try:
            found = version(dist)
        except PackageNotFoundError:
            if dist != "callbridge":
                continue
            found = f"{__version__} (not installed: running from source)"
        lines.append(f"{dist} {found}")
    return "\n".join(lines)


class VersionAction(argparse.Action):
    """``--version``: the versions, read only when asked for (argparse's needs a string)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the versions of callbridge and its installed adapters")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        sys.stdout.write(versions() + "\n")
        parser.exit()


def add_import_path(parser: argparse.ArgumentParser) -> None:
    """The ``--import-path`` option of ``check``, ``show`` and ``list``."""
    parser.add_argument(
        "--import-path",
        action="append",
        default=[],
        metavar="DIR",
        dest="import_path",
        help=IMPORT_PATH_HELP,
    )


def search_folders(files: Iterable[str], extra: Iterable[str]) -> list[str]:
    """Where the command imports from, in order: ``--import-path``, config folders, cwd."""
    folders = [str(Path(p).resolve()) for p in extra]
    for name in files:
        path = Path(name)
        if path.is_file():
            folders.append(str(path.resolve().parent))
    folders.append(os.getcwd())
    return list(dict.fromkeys(folders))


@contextlib.contextmanager
def import_path(folders: Sequence[str]) -> Iterator[None]:
    """Put ``folders`` first on ``sys.path`` inside the block.

    Restored afterwards: main() may run inside another program (pre-commit, tests).
    """
    saved = list(sys.path)
    sys.path[:0] = [f for f in folders if f not in sys.path[: len(folders)]]
    try:
        yield
    finally:
        sys.path[:] = saved


def enter_import_path(ns: argparse.Namespace) -> Callable[[], None]:
    """Extend ``sys.path`` for ``check``, ``show`` and ``list``; returns what restores it.

    The folders searched are set on ``ns.searched`` (empty for other commands).
    """
    if not hasattr(ns, "import_path"):
        ns.searched = []
        return lambda: None
    files = ns.files if ns.command == "check" else [ns.file] if ns.command == "show" else []
    ns.searched = search_folders(files, ns.import_path)
    stack = contextlib.ExitStack()
    stack.enter_context(import_path(ns.searched))
    return stack.close


def mentions_missing_module(messages: Iterable[str]) -> bool:
    """Whether a problem says a module was not found (the hint then applies)."""
    return any("no module named" in m for m in messages)


def describe_folders(folders: Sequence[str]) -> str:
    """``a, b and the installed packages``, the cwd shown as ``.``."""
    cwd = os.getcwd()
    shown = ["." if f == cwd else f for f in folders]
    return ", ".join(shown) + " and the installed packages"
