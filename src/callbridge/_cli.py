"""The ``callbridge`` command: ``list``, ``check``, ``show``, ``monitor flush|show``."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ._build import check_config, options_view, plan_all, signature_of, spec_view
from ._cli_env import (
    MISSING_MODULE_HINT,
    VersionAction,
    add_import_path,
    describe_folders,
    enter_import_path,
    mentions_missing_module,
)
from ._coerce import is_untyped, type_name
from ._control import RUN_COMMANDS
from ._errors import CallbridgeError, printable
from ._registry import default_registry
from ._sources import load
from ._spec import CallbacksConfig

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
# Where `monitor flush` reads the API key: never from an argument, which `ps` would show.
DEFAULT_API_KEY_ENV = "CALLBRIDGE_MONITOR_API_KEY"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callbridge",
        description="Declarative training callbacks for HF Trainer, TRL and Lightning.",
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p_list = sub.add_parser("list", help="every callback name, its origin and its arguments")
    p_list.add_argument("--json", action="store_true", help="machine-readable output")
    p_check = sub.add_parser(
        "check", help="resolve and validate config files without training (exit 1 on problems)"
    )
    p_check.add_argument("files", nargs="+", metavar="FILE")
    p_check.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="NAME",
        help="a parameter name your integration injects (beyond trainer, model, args...)",
    )
    p_show = sub.add_parser("show", help="the resolved callbacks of a file, secrets masked")
    p_show.add_argument("file", metavar="FILE")
    p_show.add_argument("--json", action="store_true", help="machine-readable output")
    for command in (p_list, p_check, p_show):
        add_import_path(command)
    _monitor_parsers(sub)
    _ctl_parser(sub)
    return parser


def _ctl_parser(sub: Any) -> None:
    p_ctl = sub.add_parser(
        "ctl", help="operate a running training: stop, save, enable, disable, set, status"
    )
    p_ctl.add_argument("run_dir", metavar="RUN_DIR", help="the trainer's output directory")
    p_ctl.add_argument(
        "action", choices=("status", *RUN_COMMANDS), metavar="ACTION",
        help="status | " + " | ".join(RUN_COMMANDS),
    )  # fmt: skip
    p_ctl.add_argument("target", nargs="?", default=None, help="NAME, or NAME.arg=VALUE for set")
    p_ctl.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS",
        help="wait up to SECONDS for the run to acknowledge the command, and print the answer",
    )  # fmt: skip
    add_import_path(p_ctl)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 problems, 2 usage)."""
    parser = _parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    # The CLI reports problems itself; the library's log lines would repeat them. Restored
    # afterwards: main() may run inside another program (pre-commit, tests).
    library_logger = logging.getLogger("callbridge")
    previous_level = library_logger.level
    library_logger.setLevel(logging.CRITICAL)
    # check, show and list import the config's modules from where the training script would.
    restore_path = enter_import_path(ns)
    try:
        if ns.command == "list":
            return cmd_list(ns.json, sys.stdout)
        if ns.command == "check":
            return cmd_check(ns.files, ns.inject, sys.stdout, searched=ns.searched)
        if ns.command == "ctl":
            return cmd_ctl(ns, sys.stdout)
        if ns.command == "monitor":
            if ns.monitor_command == "flush":
                return cmd_monitor_flush(ns, sys.stdout)
            return cmd_monitor_show(ns.path, ns.json, sys.stdout)
        return cmd_show(ns.file, ns.json, sys.stdout)
    except CallbridgeError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    finally:
        library_logger.setLevel(previous_level)
        restore_path()


def describe_args(factory: Any) -> list[dict[str, str]]:
    """Each constructor argument with its type and default, for ``list``."""
    sig = signature_of(factory)
    rows = []
    for param in sig.params.values():
        rows.append(
            {
                "name": param.name,
                "type": "any" if is_untyped(param.annotation) else type_name(param.annotation),
                "default": param.describe_default(),
            }
        )
    if sig.var_keyword:
        rows.append({"name": "**kwargs", "type": "any", "default": "-"})
    return rows


def _summary(factory: Any) -> str:
    doc = getattr(factory, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def cmd_list(as_json: bool, out: TextIO) -> int:
    rows = []
    for name, entry in default_registry().entries().items():
        row: dict[str, Any] = {"name": name, "origin": entry.origin, "target": entry.import_path}
        try:
            # What a plugin prints on import must not mix into the listing (--json above all).
            with contextlib.redirect_stdout(io.StringIO()):
                factory = entry.load()
        except Exception as exc:  # noqa: BLE001 - list shows broken plugins instead of dying
            row.update(summary=f"(cannot be imported: {type(exc).__name__}: {exc})", args=[])
        else:
            row.update(summary=_summary(factory), args=describe_args(factory))
        rows.append(row)
    if as_json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return EXIT_OK
    for row in rows:  # names come from installed packages too: escaped, one line each
        out.write(printable(f"{row['name']}  [{row['origin']}: {row['target']}]") + "\n")
        if row["summary"]:
            out.write(f"    {printable(row['summary'])}\n")
        for arg in row["args"]:
            out.write(printable(f"    {arg['name']}: {arg['type']} = {arg['default']}") + "\n")
        out.write("\n")
    return EXIT_OK


def cmd_check(
    files: Sequence[str], inject: Sequence[str], out: TextIO, searched: Sequence[str] = ()
) -> int:
    status = EXIT_OK
    for name in files:
        config, problems = check_config(name, inject_names=inject)  # each file read once
        shown = printable(name)
        if problems:
            status = EXIT_PROBLEMS
            out.write(f"{shown}: {len(problems)} problem{'s' if len(problems) != 1 else ''}\n")
            for problem in problems:
                out.write(f"  {problem}\n")
            if searched and mentions_missing_module(str(p) for p in problems):
                out.write(f"  {MISSING_MODULE_HINT.format(searched=describe_folders(searched))}\n")
            continue
        assert config is not None
        disabled = len(config.callbacks) - len(config.enabled)
        extra = f", {disabled} disabled" if disabled else ""
        out.write(f"{shown}: ok ({len(config.enabled)} callbacks{extra})\n")
        for warning in config.warnings:
            out.write(f"  warning: {warning}\n")
    return status


def cmd_show(name: str, as_json: bool, out: TextIO) -> int:
    config: CallbacksConfig = load(name)
    plans, problems = plan_all(config)
    views = [spec_view(spec, plan) for spec, plan in zip(config.callbacks, plans, strict=True)]
    options = options_view(config)
    if as_json:
        payload = {"source": name, "options": options, "callbacks": views}
        payload["problems"] = [str(p) for p in problems]
        payload["warnings"] = [str(w) for w in config.warnings]
        json.dump(payload, out, indent=2)
        out.write("\n")
    else:
        where = f" ({config.key_prefix})" if config.key_prefix else ""
        out.write(f"{printable(name)}{where}\n")
        for key, value in options.items():
            out.write(f"  {key} = {json.dumps(value)}\n")
        for index, view in enumerate(views):
            state = "" if view["enabled"] else "  (disabled)"
            origin = f"  [{view['origin']}: {view['target']}]" if "origin" in view else ""
            # Names and keys come from the file: escaped, so that none can forge a line.
            out.write(printable(f"  [{index}] {view['name']}{origin}{state}") + "\n")
            for key, value in view["args"].items():
                out.write(f"        {printable(str(key))} = {json.dumps(value, default=str)}\n")
            if view.get("injected"):
                out.write(f"        (injected: {', '.join(view['injected'])})\n")
        for problem in problems:
            out.write(f"  problem: {problem}\n")
        for warning in config.warnings:
            out.write(f"  warning: {warning}\n")
    return EXIT_PROBLEMS if problems else EXIT_OK


# --- monitor flush | show ---------------------------------------------------------------------

# Where `monitor flush` reads the full upload URL when the outbox holds it masked (a URL
# with credentials is never stored): an argument would show in `ps`, as would the key.
DEFAULT_URL_ENV = "CALLBRIDGE_MONITOR_URL"


def _seconds_arg(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 < s <= one day."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (got {text!r})") from None
    if not (math.isfinite(value) and 0 < value <= 86_400):
        raise argparse.ArgumentTypeError(f"expected seconds, 0 < s <= 86400 (got {text!r})")
    return value


def _retries_arg(text: str) -> int:
    """An argparse type: an integer, 0 <= n <= 1,000,000."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer (got {text!r})") from None
    if not 0 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"expected 0 <= n <= 1000000 (got {text!r})")
    return value


def _monitor_parsers(sub: Any) -> None:
    p_monitor = sub.add_parser("monitor", help="the monitor callback's outbox: flush or show it")
    monitor = p_monitor.add_subparsers(dest="monitor_command", metavar="ACTION")
    monitor.required = True
    p_flush = monitor.add_parser(
        "flush", help="deliver the records waiting in an outbox (exit 1 if some remain)"
    )
    p_flush.add_argument("path", metavar="PATH", help="the outbox file (callbridge-monitor.sqlite)")
    p_flush.add_argument("--url", help="where to POST (default: the URL the run used)")
    p_flush.add_argument(
        "--url-env",
        default=DEFAULT_URL_ENV,
        metavar="NAME",
        help=f"the environment variable holding the full URL, used when the outbox holds it "
        f"with masked credentials (default: {DEFAULT_URL_ENV})",
    )
    p_flush.add_argument(
        "--api-key-env",
        default=DEFAULT_API_KEY_ENV,
        metavar="NAME",
        help=f"the environment variable holding the API key (default: {DEFAULT_API_KEY_ENV})",
    )
    p_flush.add_argument(
        "--timeout", type=_seconds_arg, default=10.0, help="seconds for a whole request"
    )
    p_flush.add_argument(
        "--max-retries",
        type=_retries_arg,
        default=5,
        help="retries after a failed attempt before giving up (N + 1 failures in a row)",
    )
    p_flush.add_argument(
        "--flush-timeout",
        type=_seconds_arg,
        default=120.0,
        help="the longest the whole flush may take (a request in flight is cut at it)",
    )
    p_flush.add_argument(
        "--retry-dead",
        action="store_true",
        help="send the dead letters (records the server refused for good) again first",
    )
    p_mshow = monitor.add_parser(
        "show", help="the records waiting in an outbox and its dead letters, as a table"
    )
    p_mshow.add_argument("path", metavar="PATH")
    p_mshow.add_argument("--json", action="store_true", help="machine-readable output")


def _outbox_file(path: str) -> Path | None:
    if Path(path).is_file():
        return Path(path)
    what = "not a file" if Path(path).exists() else "no such outbox file"
    print(f"callbridge: {path}: {what}", file=sys.stderr)
    return None


def cmd_monitor_flush(ns: argparse.Namespace, out: TextIO) -> int:
    import sqlite3

    from ._outbox import Outbox, OutboxError
    from ._secrets import MASK, mask_url
    from .callbacks._delivery import Delivery, safe_url, url_problem, urllib3_missing

    missing = urllib3_missing()
    if missing is not None:
        print(f"callbridge: monitor flush: {missing}", file=sys.stderr)
        return EXIT_PROBLEMS
    path = _outbox_file(ns.path)
    if path is None:
        return EXIT_USAGE
    outbox = Outbox(path, create=False)
    try:
        stored = outbox.get_meta("upload_url")
        url = ns.url or os.environ.get(ns.url_env) or stored
        if not url:
            print(
                f"callbridge: {path}: no URL recorded for this outbox; set {ns.url_env} "
                f"or pass --url",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if url == stored and MASK in url:
            print(
                f"callbridge: {path}: the run's upload_url had credentials, which are never "
                f"stored ({mask_url(url)}); set {ns.url_env} to the full URL",
                file=sys.stderr,
            )
            return EXIT_USAGE
        problem = url_problem(url)
        if problem is not None:
            source = "--url" if ns.url else ns.url_env if url != stored else f"{path}: upload_url"
            print(f"callbridge: {source}: {problem}", file=sys.stderr)
            return EXIT_USAGE
        revived = outbox.revive() if ns.retry_dead else 0
        delivery = Delivery(
            path,
            url,
            os.environ.get(ns.api_key_env) or None,
            timeout=ns.timeout,
            max_retries=ns.max_retries,
        )
        delivery.run(outbox, ns.flush_timeout)
        remaining = outbox.count()
        elsewhere = outbox.claimed_by_others(delivery.owner)
        dead = len(outbox.dead())
    except sqlite3.Error as exc:
        raise OutboxError(path, f"cannot be read or written ({exc})") from None
    finally:
        outbox.close()
    again = f" ({revived} dead letters sent again)" if revived else ""
    out.write(
        f"{path}: delivered {delivery.delivered} records to {safe_url(url)}{again}; "
        f"{remaining} remain; {dead} dead letters\n"
    )
    if delivery.refused:
        print(f"callbridge: {delivery.refused}", file=sys.stderr)
    elif elsewhere:
        print(
            f"callbridge: {path}: {elsewhere} records are being sent by another process "
            f"(claimed); run flush again later",
            file=sys.stderr,
        )
    elif remaining:
        print(
            f"callbridge: {safe_url(url)} did not accept every record "
            f"({delivery.failed_attempts} failed attempts); run flush again later",
            file=sys.stderr,
        )
    if delivery.dead:
        print(
            f"callbridge: {path}: {delivery.dead} records refused for good moved to the dead "
            f"letters (see `callbridge monitor show {path}`)",
            file=sys.stderr,
        )
    return EXIT_PROBLEMS if remaining or delivery.dead else EXIT_OK


def _printable(text: str, width: int | None = None) -> str:
    """One line of plain text: control characters escaped (no forged lines, no ESC)."""
    out = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
    if width is not None and len(out) > width:
        out = out[: width - 3] + "..."
    return out


def _when(value: Any) -> str:
    import datetime

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?"
    try:
        when = datetime.datetime.fromtimestamp(value, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "?"
    return when.strftime("%Y-%m-%d %H:%M:%S")


def _epoch(value: Any) -> str:
    if value is None:
        return f"{0:.2f}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f}"
    return _printable(str(value), 10)


def _parse_record(body: Any) -> tuple[dict[str, Any] | None, str]:
    """A stored record, or None and why it cannot be read."""
    if not isinstance(body, str):
        return None, f"its body is {type(body).__name__}, not text"
    try:
        record = json.loads(body)
    except (ValueError, RecursionError):
        return None, "its body is not JSON"
    if not isinstance(record, dict):
        return None, f"its body is a JSON {type(record).__name__}, not an object"
    return record, ""


def cmd_monitor_show(path_name: str, as_json: bool, out: TextIO) -> int:
    import sqlite3

    from ._outbox import Outbox, OutboxError
    from ._secrets import mask_text, mask_url

    path = _outbox_file(path_name)
    if path is None:
        return EXIT_USAGE
    outbox = Outbox(path, create=False, readonly=True)
    try:
        rows = list(outbox)
        dead = outbox.dead()
        url = outbox.get_meta("upload_url")
    except sqlite3.Error as exc:
        raise OutboxError(path, f"cannot be read ({exc})") from None
    finally:
        outbox.close()
    url = mask_url(url) if url else None  # older outboxes stored it unmasked
    parsed = [(str(key), *_parse_record(body)) for key, body in rows]
    damaged = [(key, why) for key, record, why in parsed if record is None]
    if as_json:
        payload = {
            "path": str(path),
            "upload_url": url,
            "records": [
                record if record is not None else {"key": key, "damaged": why}
                for key, record, why in parsed
            ],
            "dead": [
                {
                    "key": str(key),
                    "reason": mask_text(str(reason)),
                    "at": at,
                    "record": _parse_record(body)[0],
                }
                for key, body, reason, at in dead
            ],
        }
        json.dump(payload, out, indent=2, default=str)
        out.write("\n")
    else:
        extra = f", {len(dead)} dead letters" if dead else ""
        out.write(f"{path}: {len(rows)} records waiting{extra} (upload_url: {url or '-'})\n")
        table = [("run", "seq", "event", "step", "epoch", "time", "metrics")]
        for key, record, why in parsed:
            if record is None:
                table.append((_printable(key, 20), "-", "(damaged)", "-", "-", "-", why))
                continue
            metrics = json.dumps(record.get("metrics", {}), separators=(",", ":"), default=str)
            table.append(
                (
                    _printable(str(record.get("run_id", "")), 8),
                    _printable(str(record.get("seq", "")), 12),
                    _printable(str(record.get("event", "")), 20),
                    _printable(str(record.get("step", "")), 12),
                    _epoch(record.get("epoch")),
                    _when(record.get("timestamp", 0)),
                    _printable(metrics, 60),
                )
            )
        if len(table) > 1:
            widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
            for row in table:
                cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
                out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")  # last column unpadded
        if dead:
            out.write(
                f"dead letters (refused for good; send again with "
                f"`callbridge monitor flush {path} --retry-dead`):\n"
            )
            for key, _body, reason, at in dead:
                out.write(f"  {_printable(str(key), 60)}  {_when(at)}  ")
                out.write(_printable(mask_text(str(reason)), 120) + "\n")
    if damaged:
        print(
            f"callbridge: {path}: {len(damaged)} damaged record{'s' if len(damaged) != 1 else ''} "
            f"(first: {_printable(damaged[0][0], 40)}: {damaged[0][1]}); `callbridge monitor "
            f"flush` moves them to the dead letters",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    return EXIT_OK


def cmd_ctl(ns: argparse.Namespace, out: TextIO) -> int:
    """``ctl RUN_DIR ACTION [TARGET]``: validate a command and append it, or show the status."""
    import time

    from . import _control as ctl

    try:
        if ns.action == "status":
            return _ctl_status(ns.run_dir, out)
        command = ctl.make_command(ns.action, ns.target)
        catalog = ctl.read_catalog(ns.run_dir)
        ctl.check(command, catalog)
        if ns.action == "set":
            entry = ctl.entry_of(catalog, command["name"])
            try:
                factory, _ = default_registry().resolve(entry["name"])
            except CallbridgeError:
                factory = None  # not importable here: the run checks the value when it applies it
            if factory is not None:
                ctl.coerce_arg(factory, entry["key"], command["arg"], command["value"])
    except ctl.CommandError as exc:
        print(f"callbridge ctl: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    folder = ctl.folder(ns.run_dir)
    ctl.append(folder / ctl.COMMANDS, command)
    print(f"accepted {_ctl_text(command)} (id {command['id']})", file=out)
    deadline = time.monotonic() + ns.wait
    while ns.wait > 0:
        for record in ctl.read_lines(folder / ctl.AUDIT):
            if isinstance(record, dict) and record.get("id") == command["id"]:
                print(_ctl_ack(record), file=out)
                return EXIT_OK if record.get("status") == "applied" else EXIT_PROBLEMS
        if time.monotonic() > deadline:
            print(f"not acknowledged within {ns.wait:g} s; see: callbridge ctl {ns.run_dir} "
                  "status", file=out)  # fmt: skip
            return EXIT_PROBLEMS
        time.sleep(0.05)
    return EXIT_OK


def _ctl_text(record: dict[str, Any]) -> str:
    action = str(record.get("command"))
    if action == "set":
        return f"set {record.get('name')}.{record.get('arg')}={record.get('value')}"
    if "name" in record:
        return f"{action} {record.get('name')}"
    return action


def _ctl_ack(record: dict[str, Any]) -> str:
    what = _ctl_text(record) if "command" in record else repr(record.get("line", ""))
    if record.get("status") == "applied":
        return f"step {record.get('step')}: applied {what}"
    return f"step {record.get('step')}: refused {what}: {record.get('reason')}"


def _ctl_status(run_dir: str, out: TextIO) -> int:
    from . import _control as ctl

    catalog = ctl.read_catalog(run_dir)
    folder = ctl.folder(run_dir)
    print(f"callbacks of the run in {run_dir}:", file=out)
    for entry in catalog.get("callbacks", []):
        mutable = ", ".join(f"{a}: {t}" for a, t in entry.get("mutable", {}).items())
        state = "enabled" if entry.get("enabled", True) else "disabled"
        print(f"  {entry['key']} ({state}; can change: {mutable or 'nothing'})", file=out)
    audit = [r for r in ctl.read_lines(folder / ctl.AUDIT) if isinstance(r, dict)]
    acknowledged = {r.get("id") for r in audit}
    print("audit:" if audit else "audit: (empty)", file=out)
    for record in audit:
        print(f"  {_ctl_ack(record)}", file=out)
    pending = [
        r
        for r in ctl.read_lines(folder / ctl.COMMANDS)
        if isinstance(r, dict) and r.get("id") not in acknowledged
    ]
    if pending:
        print("pending (the run has not read them yet):", file=out)
        for record in pending:
            print(f"  {_ctl_text(record)} (id {record.get('id')})", file=out)
    return EXIT_OK
