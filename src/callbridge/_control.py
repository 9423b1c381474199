"""Commands to a running training: their files, their validation, their audit trail.

A run with the ``control`` callback publishes what can be operated in
``RUN_DIR/callbridge-control/callbacks.json`` (each callback's key, name, whether it
is enabled, and the arguments it lets change while running). ``callbridge ctl``
validates a command against it with the configuration's coercion and messages, and
appends it to ``commands.jsonl``; the run reads new lines on rank 0 at optimizer-step
boundaries, applies them on every rank at the same step and acknowledges each in
``audit.jsonl`` with the step it took effect or the reason it was refused.

Whoever can write to the run directory controls the run (docs/operations.md).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ._coerce import CoercionError, coerce_untyped
from ._errors import closest, describe, did_you_mean

FOLDER = "callbridge-control"
CATALOG = "callbacks.json"
COMMANDS = "commands.jsonl"
AUDIT = "audit.jsonl"

#: Commands that go to the run (``status`` is answered by the CLI alone).
RUN_COMMANDS = ("stop", "save", "evaluate", "enable", "disable", "set")


class CommandError(ValueError):
    """A command that cannot be accepted; the message says why and what to do."""


def folder(run_dir: str | os.PathLike[str]) -> Path:
    """The control folder of a run directory."""
    return Path(run_dir) / FOLDER


def parse_set(text: str) -> tuple[str, str, str]:
    """``NAME.arg=VALUE`` as ``(NAME, arg, VALUE)``; NAME may hold dots (an import path)."""
    target, eq, value = text.partition("=")
    name, dot, arg = target.rpartition(".")
    if not eq or not dot or not name or not arg:
        raise CommandError(f"set: expected NAME.argument=VALUE (got {text!r})")
    return name.strip(), arg.strip(), value


def make_command(action: str, target: str | None = None) -> dict[str, Any]:
    """A command record, before validation (``target``: NAME, or NAME.arg=VALUE for ``set``)."""
    command: dict[str, Any] = {
        "id": f"{time.time_ns():x}-{os.getpid()}",
        "command": action,
        "issued": time.time(),
    }
    if action in ("enable", "disable"):
        if not target:
            raise CommandError(
                f"{action}: name the callback (callbridge ctl RUN_DIR {action} NAME)"
            )
        command["name"] = target
    elif action == "set":
        if not target:
            raise CommandError("set: expected NAME.argument=VALUE")
        command["name"], command["arg"], command["value"] = parse_set(target)
    elif target:
        raise CommandError(f"{action} takes no argument (got {target!r})")
    return command


def entry_of(catalog: dict[str, Any], name: str) -> dict[str, Any]:
    """The catalog entry a command names (by key: its ``id``, or its name with ``#2``...)."""
    entries = {e["key"]: e for e in catalog.get("callbacks", [])}
    if name in entries:
        entry: dict[str, Any] = entries[name]
        return entry
    raise CommandError(f"unknown callback {name!r}. {did_you_mean(name, entries)}")


def check(command: dict[str, Any], catalog: dict[str, Any]) -> None:
    """Validate a command against what the run published; the value itself is checked by
    :func:`coerce_arg` where the callback's class is at hand.

    Raises:
        CommandError: unknown command, callback or argument, or one that cannot change.
    """
    action = command.get("command")
    if action not in RUN_COMMANDS:
        near = closest(str(action), RUN_COMMANDS)
        hint = f"Did you mean {near!r}? " if near else ""
        raise CommandError(
            f"unknown command {action!r}. {hint}Available: {', '.join(RUN_COMMANDS)}, status."
        )
    if action in ("enable", "disable", "set"):
        entry = entry_of(catalog, str(command.get("name")))
        if entry.get("control"):
            raise CommandError(f"{action}: {entry['key']!r} is the control callback itself")
    if action == "set":
        arg = str(command.get("arg"))
        mutable = entry["mutable"]
        if arg not in entry["args"]:
            raise CommandError(
                f"{entry['key']}: unknown argument {arg!r}. "
                f"{did_you_mean(arg, entry['args'], noun='Arguments')}"
            )
        if arg not in mutable:
            allowed = ", ".join(sorted(mutable)) or "none"
            raise CommandError(
                f"{entry['key']}.{arg} cannot change while the run is going (it can: {allowed}); "
                "change it in the configuration and restart"
            )


def coerce_arg(factory: Any, name: str, arg: str, value: Any) -> Any:
    """``value`` as the argument ``arg`` of ``factory`` (a callback class) expects it, read as
    the configuration reads it.

    Raises:
        CommandError: ``expected <type> (got <value>)``.
    """
    from ._build import signature_of

    param = signature_of(factory).params.get(arg)
    if param is None:
        raise CommandError(f"{name}: unknown argument {arg!r}")
    try:
        return coerce_untyped(value, param.annotation, param.default)
    except CoercionError as exc:
        raise CommandError(
            f"{name}.{arg}: expected {exc.expected} (got {describe(value)})"
        ) from None


def read_catalog(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What a running training published, or :class:`CommandError` saying how to get it."""
    path = folder(run_dir) / CATALOG
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CommandError(
            f"{path}: not found. No training with the 'control' callback has started in "
            f'{run_dir}; add "control" to custom_callbacks and pass the trainer\'s output '
            "directory (Lightning: default_root_dir)"
        ) from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: cannot be read ({exc})") from None
    return data


def append(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, appended in one write (``O_APPEND``: concurrent writers do not mix)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[Any]:
    """Every JSON line of ``path`` (a line that does not parse is returned as a string)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out: list[Any] = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append(line)
    return out
