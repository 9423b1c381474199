"""``${VAR}`` and ``${VAR:-default}`` in configuration strings; ``$${`` is a literal ``${``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._errors import Problem, is_secret_name
from ._secrets import _URL, remember, url_secrets

_TOKEN = re.compile(r"(?P<escape>\$\$\{)|\$\{(?P<body>[^{}]*)\}|(?P<open>\$\{)")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


class InterpolationError(Exception):
    """A string that cannot be interpolated; the message never holds a variable's value."""


def interpolate(text: str, environ: Mapping[str, str]) -> tuple[str, frozenset[str]]:
    """Replace every ``${...}`` in ``text``.

    Returns:
        The new text and the names of the variables that were read.

    Raises:
        InterpolationError: a required variable is unset, or a ``${`` is malformed.
    """
    if "${" not in text:  # the common case costs one scan
        return text, frozenset()
    used: set[str] = set()
    values: list[tuple[str, str]] = []

    def replace(match: re.Match[str]) -> str:
        if match.group("escape"):
            return "${"
        if match.group("open"):
            raise InterpolationError(
                "unclosed '${' (write ${VAR} or ${VAR:-default}; for a literal '${' write '$${')"
            )
        body = _BODY.fullmatch(match.group("body"))
        if body is None:
            raise InterpolationError(
                f"malformed '${{{match.group('body')}}}': expected ${{VAR}} or ${{VAR:-default}} "
                "with VAR made of letters, digits and '_' (for a literal '${' write '$${')"
            )
        name, default = body.group("name"), body.group("default")
        used.add(name)
        value = environ.get(name)
        if default is not None:
            value = value if value else default  # ':-' also covers a variable set to ""
        if value is None:
            raise InterpolationError(
                f"environment variable {name!r} is not set; set it, "
                f"or give a default with ${{{name}:-default}}"
            )
        values.append((name, value))
        return value

    result = _TOKEN.sub(replace, text)
    _remember_secrets(result, values)
    return result, frozenset(used)


def _remember_secrets(result: str, values: list[tuple[str, str]]) -> None:
    """Mark secret what a variable put in the result, when its name or place says so.

    A secret-looking name (``ACME_API_KEY``) makes its value secret wherever it goes (a
    callback name included); any value that lands in a URL's userinfo or query
    (``https://user:${PW}@host``) is a credential whatever the variable is called.
    """
    secret = [value for name, value in values if is_secret_name(name)]
    if "://" in result:
        parts = [part for match in _URL.finditer(result) for part in url_secrets(match.group(0))]
        secret += [value for _, value in values if any(value in part for part in parts)]
    if secret:
        remember(*secret)


def interpolate_tree(
    value: Any, environ: Mapping[str, str], *, source: str, key_path: str
) -> tuple[Any, list[Problem], set[str]]:
    """Interpolate every string in nested lists and mappings.

    Returns:
        The new value, the problems found (one per bad string), and the key paths
        whose value was read from a variable with a secret-looking name.
    """
    problems: list[Problem] = []
    secret_paths: set[str] = set()

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, str):
            try:
                text, used = interpolate(node, environ)
            except InterpolationError as exc:
                problems.append(Problem(source, path, str(exc)))
                return node
            if any(is_secret_name(name) for name in used):
                secret_paths.add(path)
            return text
        if isinstance(node, Mapping):
            return {k: walk(v, f"{path}.{k}") for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(node)]
        return node

    return walk(value, key_path), problems, secret_paths
