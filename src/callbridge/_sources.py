"""Reading callbacks sections from pyproject.toml, any TOML, YAML, JSON, or a mapping."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._errors import ConfigError, describe
from ._spec import OPTION_KEYS, CallbacksConfig, hint_for_missing_keys, parse_section

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
        return _from_document(dict(source), "<mapping>", env, pyproject=False)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = os.fspath(source)
        data = _read(path, name)
        return _from_document(data, name, env, pyproject=path.name == "pyproject.toml")
    raise ConfigError.at(
        "<source>", "", f"expected a file path or a mapping (got {describe(source)})"
    )


def _read(path: Path, name: str) -> Any:
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError.at(
            name,
            "",
            f"unsupported file type {path.suffix or '(no suffix)'!r}: "
            "expected pyproject.toml, another .toml, .yaml, .yml or .json",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError.at(
            name, "", f"file not found (looked for {path.resolve()}); check the path"
        ) from None
    except IsADirectoryError:
        raise ConfigError.at(
            name, "", "is a directory; name the file (e.g. pyproject.toml)"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError.at(name, "", f"is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError.at(name, "", f"cannot be read: {exc.strerror or exc}") from None
    if not text.strip():
        raise ConfigError.at(name, "", "file is empty; expected a callbacks configuration")
    if kind == "toml":
        return _parse_toml(text, name)
    if kind == "json":
        return _parse_json(text, name)
    return _parse_yaml(text, name)


def _parse_toml(text: str, name: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError.at(name, "", f"invalid TOML: {exc}") from None


def _parse_json(text: str, name: str) -> Any:
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError.at(
            name, "", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def _parse_yaml(text: str, name: str) -> Any:
    import yaml

    from ._yaml import StrictSafeLoader

    try:
        data = yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError.at(name, "", _yaml_message(exc)) from None
    if data is None:
        raise ConfigError.at(name, "", "file holds no data (only comments?)")
    return data


def _yaml_message(exc: Any) -> str:
    import yaml

    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in str(problem):
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
