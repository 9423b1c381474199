"""The errors callbridge raises on purpose, and the helpers that word them."""

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ._record import Record

# Words that mark a value as secret when a name ends with one (``api_key``, ``HF_TOKEN``,
# ``clientSecret``), wherever names appear: arguments, environment variables, mapping
# keys. A name that merely contains one elsewhere names something else: ``key_path``,
# ``tokens_per_second``, ``mean_token_accuracy`` are no secrets.
_SECRET_LAST = frozenset(
    {
        "key", "keys", "apikey", "token", "secret", "secrets", "password", "passwd", "pwd",
        "passphrase", "credential", "credentials", "auth", "authorization", "cookie", "cookies",
    }
)  # fmt: skip
# Words that make a secret of whatever follows them (``AUTH_HEADER``, ``secret_value``).
_SECRET_FIRST = frozenset({"auth", "authorization", "secret", "password", "credential"})
# Shell variables whose names end like a secret's but hold none: PWD is the working directory.
_SHELL_NAMES = frozenset({"PWD", "OLDPWD"})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether a key or variable name says that its value is a secret."""
    if name.upper() in _SHELL_NAMES:
        return False
    words = [w.lower() for w in _WORDS.findall(name)]
    return bool(words) and (words[-1] in _SECRET_LAST or words[0] in _SECRET_FIRST)


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``, ``\\u2028``).

    Names from a file (keys, callback names) are printed through this, so that a
    newline cannot forge an output line and an ESC sequence cannot reach the terminal.
    With ``keep_newlines``, ``\\n`` stays (messages callbridge wrote on several lines).
    """
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or (keep_newlines and c == "\n") else repr(c)[1:-1] for c in text
    )


class CallbridgeError(Exception):
    """Base of every error that callbridge raises on purpose."""


class Problem(Record):
    """One thing wrong with a configuration: where it is and what it is.

    Attributes:
        source: the file (as the user named it) or ``<mapping>``.
        key_path: the dotted key path inside the source, e.g.
            ``tool.callbacks.custom_callbacks[2].args.upload_intervl``; empty for
            problems of the whole file.
        message: what is wrong, what was expected, and the fix or alternatives.
    """

    __slots__ = ("key_path", "message", "source")

    def __init__(self, source: str, key_path: str, message: str) -> None:
        from ._secrets import mask_text  # _secrets imports this module

        self.source = source
        self.key_path = key_path
        # Masked once, here: a value read from a secret variable (a callback name, an
        # argument a validator quotes) or a URL's credentials never reach a message.
        self.message = mask_text(message)

    def __str__(self) -> str:
        # Escaped: a key or file name with a newline or an ESC must not forge output lines.
        source, key_path = printable(self.source), printable(self.key_path)
        where = f"{source}: {key_path}" if key_path else source
        return f"{where}: {printable(self.message, keep_newlines=True)}"


class ConfigError(CallbridgeError, ValueError):
    """A configuration that cannot be read, resolved or built.

    Carries every problem found (``problems``); ``source``, ``key_path`` and
    ``message`` are those of the first one.
    """

    problems: tuple[Problem, ...]
    #: What could be read despite the problems (entries with problems left out), so that
    #: ``check`` goes on to resolve the valid entries of a file with structural problems.
    partial: Any = None

    def __init__(self, problems: Problem | Sequence[Problem]) -> None:
        self.problems = (problems,) if isinstance(problems, Problem) else tuple(problems)
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        super().__init__(self._text())

    @classmethod
    def at(cls, source: str, key_path: str, message: str) -> "ConfigError":
        """The error of a single problem."""
        return cls(Problem(source, key_path, message))

    @property
    def source(self) -> str:
        return self.problems[0].source

    @property
    def key_path(self) -> str:
        return self.problems[0].key_path

    @property
    def message(self) -> str:
        return self.problems[0].message

    def _text(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        lines = [f"{len(self.problems)} problems:"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)

    def __reduce__(self) -> tuple[Any, ...]:
        # Survive pickling (DDP workers, multiprocessing) with the problems intact.
        return (type(self), (self.problems,))


def describe(value: Any, *, secret: bool = False) -> str:
    """``'4OO' that is a str``, in the manner of attrs; never the value when secret."""
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    if secret:
        return f"{article} {kind}, value hidden"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - an int past the digit limit, a broken __repr__
        text = f"<{kind} that cannot be shown>"
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} that is {article} {kind}"


def closest(
    word: str, choices: Iterable[str], *, cutoff: float = 0.6, contains: bool = False
) -> str | None:
    """The choice nearest to ``word``, if one is near enough.

    With ``contains``, a choice that contains ``word`` also counts (argument names:
    another framework's short name for ours).
    """
    import difflib  # only errors pay for it

    options = list(choices)
    found = difflib.get_close_matches(word, options, n=1, cutoff=cutoff)
    if found or not contains:
        return found[0] if found else None
    # Another framework's short name for ours: 'patience' -> 'early_stopping_patience'.
    containing = [c for c in options if len(word) >= 4 and word.lower() in c.lower()]
    return min(containing, key=len) if containing else None


def did_you_mean(word: str, choices: Iterable[str], *, noun: str = "Available") -> str:
    """``Did you mean 'bema'? Available: a, b, c.`` (or just the list)."""
    options = sorted(choices)
    near = closest(word, options)
    listing = ", ".join(options) if options else "(none)"
    prefix = f"Did you mean {near!r}? " if near else ""
    return f"{prefix}{noun}: {listing}."
