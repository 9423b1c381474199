"""The ``callbridge`` command: ``list``, ``check``, ``show``, ``monitor flush|show``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ._build import check, options_view, plan_all, signature_of, spec_view
from ._cli_env import (
    MISSING_MODULE_HINT,
    VersionAction,
    add_import_path,
    describe_folders,
    enter_import_path,
    mentions_missing_module,
)
from ._coerce import is_untyped, type_name
from ._errors import CallbridgeError
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
    p_monitor = sub.add_parser("monitor", help="the monitor callback's outbox: flush or show it")
    monitor = p_monitor.add_subparsers(dest="monitor_command", metavar="ACTION")
    monitor.required = True
    p_flush = monitor.add_parser(
        "flush", help="deliver the records waiting in an outbox (exit 1 if some remain)"
    )
    p_flush.add_argument("path", metavar="PATH", help="the outbox file (callbridge-monitor.sqlite)")
    p_flush.add_argument("--url", help="where to POST (default: the URL the run used)")
    p_flush.add_argument(
        "--api-key-env",
        default=DEFAULT_API_KEY_ENV,
        metavar="NAME",
        help=f"the environment variable holding the API key (default: {DEFAULT_API_KEY_ENV})",
    )
    p_flush.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p_flush.add_argument(
        "--max-retries",
        type=int,
        default=5,
        help="retries after a failed attempt before giving up (N + 1 failures in a row)",
    )
    p_flush.add_argument(
        "--flush-timeout", type=float, default=120.0, help="the longest the whole flush may take"
    )
    p_mshow = monitor.add_parser("show", help="the records waiting in an outbox, as a table")
    p_mshow.add_argument("path", metavar="PATH")
    p_mshow.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


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
    for row in rows:
        out.write(f"{row['name']}  [{row['origin']}: {row['target']}]\n")
        if row["summary"]:
            out.write(f"    {row['summary']}\n")
        for arg in row["args"]:
            out.write(f"    {arg['name']}: {arg['type']} = {arg['default']}\n")
        out.write("\n")
    return EXIT_OK


def cmd_check(
    files: Sequence[str], inject: Sequence[str], out: TextIO, searched: Sequence[str] = ()
) -> int:
    status = EXIT_OK
    for name in files:
        problems = check(name, inject_names=inject)
        if problems:
            status = EXIT_PROBLEMS
            out.write(f"{name}: {len(problems)} problem{'s' if len(problems) != 1 else ''}\n")
            for problem in problems:
                out.write(f"  {problem}\n")
            if searched and mentions_missing_module(str(p) for p in problems):
                out.write(f"  {MISSING_MODULE_HINT.format(searched=describe_folders(searched))}\n")
            continue
        config = load(name)
        disabled = len(config.callbacks) - len(config.enabled)
        extra = f", {disabled} disabled" if disabled else ""
        out.write(f"{name}: ok ({len(config.enabled)} callbacks{extra})\n")
    return status


def cmd_show(name: str, as_json: bool, out: TextIO) -> int:
    config: CallbacksConfig = load(name)
    plans, problems = plan_all(config)
    views = [spec_view(spec, plan) for spec, plan in zip(config.callbacks, plans, strict=True)]
    options = options_view(config)
    if as_json:
        payload = {"source": name, "options": options, "callbacks": views}
        payload["problems"] = [str(p) for p in problems]
        json.dump(payload, out, indent=2)
        out.write("\n")
    else:
        where = f" ({config.key_prefix})" if config.key_prefix else ""
        out.write(f"{name}{where}\n")
        for key, value in options.items():
            out.write(f"  {key} = {json.dumps(value)}\n")
        for index, view in enumerate(views):
            state = "" if view["enabled"] else "  (disabled)"
            origin = f"  [{view['origin']}: {view['target']}]" if "origin" in view else ""
            out.write(f"  [{index}] {view['name']}{origin}{state}\n")
            for key, value in view["args"].items():
                out.write(f"        {key} = {json.dumps(value, default=str)}\n")
            if view.get("injected"):
                out.write(f"        (injected: {', '.join(view['injected'])})\n")
        for problem in problems:
            out.write(f"  problem: {problem}\n")
    return EXIT_PROBLEMS if problems else EXIT_OK


def _outbox_file(path: str) -> Path | None:
    if Path(path).is_file():
        return Path(path)
    print(f"callbridge: {path}: no such outbox file", file=sys.stderr)
    return None


def cmd_monitor_flush(ns: argparse.Namespace, out: TextIO) -> int:
    from ._outbox import Outbox
    from .callbacks._delivery import Delivery, safe_url

    path = _outbox_file(ns.path)
    if path is None:
        return EXIT_USAGE
    outbox = Outbox(path, create=False)
    try:
        url = ns.url or outbox.get_meta("upload_url")
        if not url:
            print(
                f"callbridge: {path}: no URL recorded for this outbox; pass --url", file=sys.stderr
            )
            return EXIT_USAGE
        delivery = Delivery(
            path,
            url,
            os.environ.get(ns.api_key_env) or None,
            timeout=ns.timeout,
            max_retries=ns.max_retries,
        )
        delivery.run(outbox, ns.flush_timeout)
        remaining = outbox.count()
    finally:
        outbox.close()
    out.write(
        f"{path}: delivered {delivery.delivered} records to {safe_url(url)}; {remaining} remain\n"
    )
    if delivery.refused:
        print(f"callbridge: {delivery.refused}", file=sys.stderr)
    elif remaining:
        print(
            f"callbridge: {safe_url(url)} did not accept every record "
            f"({delivery.failed_attempts} failed attempts); run flush again later",
            file=sys.stderr,
        )
    return EXIT_PROBLEMS if remaining else EXIT_OK


def cmd_monitor_show(path_name: str, as_json: bool, out: TextIO) -> int:
    import datetime

    from ._outbox import Outbox

    path = _outbox_file(path_name)
    if path is None:
        return EXIT_USAGE
    outbox = Outbox(path, create=False)
    try:
        records = [json.loads(body) for _, body in outbox]
        url = outbox.get_meta("upload_url")
    finally:
        outbox.close()
    if as_json:
        json.dump({"path": str(path), "upload_url": url, "records": records}, out, indent=2)
        out.write("\n")
        return EXIT_OK
    out.write(f"{path}: {len(records)} records waiting (upload_url: {url or '-'})\n")
    if not records:
        return EXIT_OK
    rows = [("run", "seq", "event", "step", "epoch", "time", "metrics")]
    for r in records:
        when = datetime.datetime.fromtimestamp(r.get("timestamp", 0), tz=datetime.timezone.utc)
        metrics = json.dumps(r.get("metrics", {}), separators=(",", ":"))
        rows.append(
            (
                str(r.get("run_id", ""))[:8],
                str(r.get("seq", "")),
                str(r.get("event", "")),
                str(r.get("step", "")),
                f"{r.get('epoch') or 0:.2f}",
                when.strftime("%Y-%m-%d %H:%M:%S"),
                metrics if len(metrics) <= 60 else metrics[:57] + "...",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [
            cell.ljust(width) for cell, width in zip(row, widths, strict=False)
        ]  # the last column is not padded
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")
    return EXIT_OK
