"""Reading callbacks sections from pyproject.toml, any TOML, YAML, JSON, or a mapping."""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._errors import ConfigError, describe, printable
from ._spec import OPTION_KEYS, CallbacksConfig, hint_for_missing_keys, parse_section

logger = logging.getLogger("callbridge")

_SUFFIXES = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def load(
    source: str | os.PathLike[str] | Mapping[str, Any] | CallbacksConfig,
    *,
    environ: Mapping[str, str] | None = None,
) -> CallbacksConfig:
    """Read a callbacks configuration.

    Args:
        source: ``pyproject.toml`` (its ``[tool.callbacks]`` table), another TOML file
            (``[tool.callbacks]`` if present, else top-level keys), a YAML file (the
            keys may sit among a training YAML's other keys), a JSON file, a mapping,
            or an already loaded :class:`CallbacksConfig` (returned as is).
        environ: variables for ``${VAR}`` in entry names, ``enabled`` and options;
            ``os.environ`` by default. Arguments are interpolated at build.

    Raises:
        ConfigError: the source cannot be read or is not a valid configuration;
            the message names the file and the key path of every problem.
    """
    env = os.environ if environ is None else environ
    if isinstance(source, CallbacksConfig):
        return source
    if isinstance(source, Mapping):
        check_shape(source, "<mapping>")
        config = _from_document(dict(source), "<mapping>", env, pyproject=False)
    elif isinstance(source, (str, os.PathLike)):
        name = os.fsdecode(os.fspath(source))
        path = Path(name)
        data = _read(path, name)
        config = _from_document(data, name, env, pyproject=path.name == "pyproject.toml")
    else:
        raise ConfigError.at(
            "<source>", "", f"expected a file path or a mapping (got {describe(source)})"
        )
    for warning in config.warnings:
        logger.warning("callbridge: %s", warning)
    return config


#: Files larger than this are refused before they are read (callbridge reads configurations).
MAX_BYTES = 16 * 1024 * 1024
#: Collections nested deeper than this are refused, in every format and every key.
MAX_DEPTH = 64
#: Python's own limit for int() from text; larger integers (hex in TOML and YAML escape it)
#: could not even be printed in a message.
MAX_INT_DIGITS = 4300


def _read(path: Path, name: str) -> Any:
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError.at(
            name,
            "",
            f"unsupported file type {path.suffix or '(no suffix)'!r}: "
            "expected pyproject.toml, another .toml, .yaml, .yml or .json",
        )
    raw = _read_bytes(path, name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError.at(name, "", f"is not UTF-8 text ({exc.reason})") from None
    if not text.strip():
        raise ConfigError.at(name, "", "file is empty; expected a callbacks configuration")
    if kind == "toml":
        data = _parse_toml(text, name)
    elif kind == "json":
        data = _parse_json(text, name)
    else:
        data = _parse_yaml(text, name)
    check_shape(data, name)
    return data


def _read_bytes(path: Path, name: str) -> bytes:
    """The file's bytes: a regular file only, opened without blocking, at most MAX_BYTES."""
    if "\0" in name:
        raise ConfigError.at(
            printable(name), "", "the path contains a NUL byte; no file can have that name"
        )
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is then refused below.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ConfigError.at(
            name, "", f"file not found (looked for {path.resolve()}); check the path"
        ) from None
    except IsADirectoryError:
        raise ConfigError.at(
            name, "", "is a directory; name the file (e.g. pyproject.toml)"
        ) from None
    except OSError as exc:
        raise ConfigError.at(name, "", f"cannot be read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError.at(name, "", "is a directory; name the file (e.g. pyproject.toml)")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError.at(
                name,
                "",
                f"is not a regular file (it is {_file_kind(info.st_mode)}); "
                "callbridge reads configuration files only",
            )
        if info.st_size > MAX_BYTES:
            raise ConfigError.at(name, "", _too_large(info.st_size))
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(MAX_BYTES + 1)  # a file that grew since fstat is still bounded
    except OSError as exc:
        raise ConfigError.at(name, "", f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ConfigError.at(name, "", _too_large(len(data)))
    return data


def _too_large(size: int) -> str:
    return (
        f"is too large ({size:,} bytes; the limit is {MAX_BYTES:,}): "
        "a callbacks configuration is a few kilobytes"
    )


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def check_shape(data: Any, name: str) -> None:
    """Refuse data nested deeper than MAX_DEPTH or holding integers too long to print.

    Iterative, so that it also stops a mapping that contains itself.

    Raises:
        ConfigError: naming the key path of the first place past a limit.
    """
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, bool):
            continue
        if isinstance(node, int):
            if node.bit_length() > MAX_INT_DIGITS * 3.33:  # 10**4300 has about 14,284 bits
                raise ConfigError.at(
                    name,
                    path,
                    f"an integer with more than {MAX_INT_DIGITS} digits; "
                    "write a smaller number (or a string)",
                )
            continue
        if isinstance(node, Mapping):
            children: list[tuple[str, Any]] = [
                (f"{path}.{_key(k)}" if path else _key(k), v) for k, v in node.items()
            ]
        elif isinstance(node, (list, tuple)):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(node)]
        else:
            continue
        if depth >= MAX_DEPTH:
            raise ConfigError.at(
                name,
                path,
                f"nested more than {MAX_DEPTH} levels deep; callbridge reads configurations, "
                "not deep data",
            )
        stack.extend((child, child_path, depth + 1) for child_path, child in reversed(children))


def _key(key: Any) -> str:
    return printable(key) if isinstance(key, str) else printable(repr(key))


def _parse_toml(text: str, name: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    _scan_depth(text, name, _TOML_TOKENS)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError.at(name, "", f"invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError.at(name, "", _too_deep()) from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise ConfigError.at(name, "", f"invalid TOML: {_value_problem(exc, text)}") from None


# Strings, comments and brackets: enough to count how deep brackets nest, strings skipped.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')
_TOML_TOKENS = re.compile(
    r'"""(?:[^\\]|\\.)*?(?:"""|$)|\'\'\'.*?(?:\'\'\'|$)|"(?:[^"\\\n]|\\.)*"?|\'[^\'\n]*\'?'
    r"|#[^\n]*|[\[\]{}]",
    re.DOTALL,
)


def _scan_depth(text: str, name: str, tokens: re.Pattern[str]) -> None:
    """Refuse brackets nested deeper than MAX_DEPTH before a parser recurses into them.

    The parsers recurse once per level (JSON's in C, TOML's in Python): without this a
    deep file ends in a RecursionError, or worse, depending on the Python version.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # cannot nest deeper: skip the scan
        return
    depth = 0
    for match in tokens.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError.at(
                    name,
                    "",
                    f"nested more than {MAX_DEPTH} levels deep at {_place(text, match.start())}; "
                    "callbridge reads configurations, not deep data",
                )
        elif token in "]}":
            depth = max(depth - 1, 0)


def _value_problem(exc: ValueError, text: str) -> str:
    if "integer string conversion" in str(exc):  # worded differently across Python versions
        found = re.search(rf"[0-9_]{{{MAX_INT_DIGITS + 1},}}", text)
        where = f" at {_place(text, found.start())}" if found else ""
        return f"an integer with more than {MAX_INT_DIGITS} digits{where}; write a smaller number"
    return _short(exc)


def _place(text: str, offset: int) -> str:
    """``line 3, column 7`` of a character offset."""
    line = text.count("\n", 0, offset) + 1
    return f"line {line}, column {offset - (text.rfind(chr(10), 0, offset) + 1) + 1}"


def _too_deep() -> str:
    return (
        f"nested more than {MAX_DEPTH} levels deep (too deep to parse); callbridge reads "
        "configurations, not deep data"
    )


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _parse_json(text: str, name: str) -> Any:
    import json

    duplicates: list[tuple[str, dict[str, Any]]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                duplicates.append((key, out))
            out[key] = value
        return out

    _scan_depth(text, name, _JSON_TOKENS)
    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise ConfigError.at(
            name, "", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise ConfigError.at(name, "", _too_deep()) from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise ConfigError.at(name, "", f"invalid JSON: {_value_problem(exc, text)}") from None
    if duplicates:
        key, holder = duplicates[0]
        where = _path_of(data, holder)
        found = _json_key_places(text, key)
        places = f" (at {' and '.join(found)})" if len(found) >= 2 else ""
        raise ConfigError.at(
            name,
            f"{where}.{_key(key)}" if where else _key(key),
            f"the key {key!r} is given twice in one object{places}; JSON keeps only the last, "
            "so the first would be silently lost: keep one",
        )
    return data


def _path_of(data: Any, target: Any) -> str:
    """The key path of the object ``target`` inside ``data`` (iterative)."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if node is target:
            return path
        if depth > MAX_DEPTH:
            continue
        if isinstance(node, dict):
            stack.extend(
                (v, f"{path}.{_key(k)}" if path else _key(k), depth + 1) for k, v in node.items()
            )
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))
    return ""


def _json_key_places(text: str, key: str) -> list[str]:
    """``line 2, column 3`` for each place the key is written (JSON's parser keeps none)."""
    import json
    import re

    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    places = []
    for match in pattern.finditer(text):
        places.append(_place(text, match.start()))
    return places[:6]


def _parse_yaml(text: str, name: str) -> Any:
    import yaml

    from ._yaml import load_yaml

    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError.at(name, "", _yaml_message(exc)) from None
    if data is None:
        raise ConfigError.at(name, "", "file holds no data (only comments?)")
    return data


def _yaml_message(exc: Any) -> str:
    import yaml

    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return (
            f"invalid YAML: unacceptable character #x{char:04x} at character {exc.position + 1}"
            f" of the file: {exc.reason}"
        )
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.constructor.ConstructorError) and "determine a constructor" in str(
        problem
    ):
        return (
            f"YAML{where}: {problem.strip()}; callbridge reads YAML safely and never builds "
            "Python objects from tags: remove the tag and name the callback instead"
        )
    context = getattr(exc, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return f"invalid YAML{where}: {detail}"


def _from_document(
    data: Any, name: str, environ: Mapping[str, str], *, pyproject: bool
) -> CallbacksConfig:
    if not isinstance(data, Mapping):
        raise ConfigError.at(
            name, "", f"expected a mapping at the top level (got {describe(data)})"
        )
    tool = data.get("tool")
    if isinstance(tool, Mapping) and "callbacks" in tool:
        competing = [key for key in OPTION_KEYS if key in data]
        if competing:
            raise ConfigError.at(
                name,
                competing[0],
                f"callbacks are declared twice: in [tool.callbacks] and at the top level "
                f"({', '.join(repr(k) for k in competing)}); only one would be used, so keep "
                "one of them",
            )
        return parse_section(
            tool["callbacks"], source=name, prefix="tool.callbacks", environ=environ, loose=False
        )
    if pyproject:
        raise ConfigError.at(
            name,
            "tool.callbacks",
            "no [tool.callbacks] table; add one, e.g.\n"
            "    [tool.callbacks]\n"
            '    custom_callbacks = ["log"]',
        )
    if not any(key in data for key in OPTION_KEYS):
        raise ConfigError.at(name, "", hint_for_missing_keys(data))
    return parse_section(data, source=name, prefix="", environ=environ, loose=True)
