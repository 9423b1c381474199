"""Masking secrets by value: in URLs, in free text, and from the environment.

Names tell some secrets apart (``api_key``, ``ACME_TOKEN``: see
:func:`callbridge._errors.is_secret_name`); values tell the rest: a URL's userinfo
and query carry credentials whatever variable they came from, and a value read
from a secret-looking environment variable stays secret wherever it ends up (an
exception message, a log line). Every function here is total: masking must never
be the thing that raises.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from ._errors import is_secret_name

MASK = "***"

# scheme://[userinfo@]rest — userinfo cannot hold '/', '?', '#' or spaces.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s\"'<>]*)")
# Shorter values would mask ordinary words and numbers ("1", "true").
MIN_SECRET_LENGTH = 4
# Values that a variable named like a secret may hold without being one (NPM_CONFIG_ALWAYS_AUTH
# =true): masking them would blank every "true" in every output.
_PLAIN_VALUES = frozenset({"true", "false", "none", "null", "unset", "empty"})


def _mask_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        parts.append(f"{name}={MASK}" if eq else MASK if item else item)
    return "&".join(parts)


def mask_url(url: str) -> str:
    """``url`` with its userinfo, query values and fragment replaced by ``***``.

    ``https://user:pw@host:8443/ingest?token=abc`` becomes
    ``https://***@host:8443/ingest?token=***``. Works on any text (never raises):
    what is not a URL comes back with only a query masked.
    """
    try:
        text = str(url)
    except Exception:  # noqa: BLE001 - a str subclass with a broken __str__ still gets a mask
        return MASK
    match = _URL.match(text)
    scheme, rest = (match["scheme"], match["rest"] + text[match.end() :]) if match else ("", text)
    rest, hash_, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    if scheme:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = MASK + "@" + authority.rpartition("@")[2]
        rest = authority + slash + path
    masked = scheme + rest
    if question:
        masked += "?" + _mask_query(query)
    if hash_:
        masked += "#" + (MASK if fragment else "")
    return masked


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL as they appear in it (userinfo, query values, fragment)."""
    found: list[str] = []
    text = str(url)
    match = _URL.match(text)
    rest = match["rest"] if match else text
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    if match:
        authority = rest.partition("/")[0]
        if "@" in authority:
            userinfo = authority.rpartition("@")[0]
            # The user name alone is no secret (and often a common word): the password is.
            found += [userinfo, userinfo.partition(":")[2]]
    for item in query.split("&"):
        found.append(item.partition("=")[2] if "=" in item else item)
    found.append(fragment)
    return [value for value in found if len(value) >= MIN_SECRET_LENGTH]


def environment_secrets(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables with secret-looking names (``*_KEY``, ``*_TOKEN``...)."""
    env = os.environ if environ is None else environ
    return [
        value
        for name, value in env.items()
        if is_secret_name(name)
        and len(value) >= MIN_SECRET_LENGTH
        and value.lower() not in _PLAIN_VALUES
    ]


#: Values known to be secret in this process (read from a secret-looking variable, or put
#: into a URL's userinfo or query by interpolation), masked by :func:`mask_text` wherever
#: they end up. A set of strings only: it grows with the secrets a process reads, no more.
_REMEMBERED: set[str] = set()


def remember(*values: str) -> None:
    """Mark ``values`` secret for the rest of the process (short ones are ignored)."""
    for value in values:
        if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
            _REMEMBERED.add(value)


def mask_urls(text: str) -> str:
    """Every ``scheme://...`` URL in ``text`` with its userinfo and query masked."""
    return _URL.sub(lambda m: mask_url(m.group(0)), text)


def mask_text(text: str, secrets: Iterable[str] = (), *, environment: bool = True) -> str:
    """``text`` with known secret values, secret environment values and URL credentials masked.

    Args:
        text: any text (an exception message, a log line).
        secrets: values known to be secret (an API key, a URL's token).
        environment: also mask the values of secret-looking environment variables.
    """
    values = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH}
    if environment:
        values.update(environment_secrets())
        values.update(_REMEMBERED)
    out = str(text)
    for value in sorted(values, key=len, reverse=True):  # longest first: no partial leftovers
        out = out.replace(value, MASK)
    return mask_urls(out)
