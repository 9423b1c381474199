"""The configuration model (:class:`CallbacksConfig`, :class:`CallbackSpec`) and its validation.

One schema, three spellings: TOML inline arrays, TOML arrays of tables and YAML
all produce the same plain data, which :func:`parse_section` turns into equal
objects. Entry-level values (``enabled``, ``name``) and the options are
interpolated here; arguments stay raw until build, so a disabled callback never
needs its variables.
"""

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from ._coerce import CoercionError, to_bool
from ._errors import ConfigError, Problem, closest, describe, is_secret_name, printable
from ._interpolate import InterpolationError, interpolate
from ._secrets import mask_text

OnError = Literal["log", "disable", "raise"]
ON_ERROR_CHOICES: tuple[str, ...] = ("log", "disable", "raise")

#: The keys of a callbacks section, with what each expects (for messages).
OPTION_KEYS: dict[str, str] = {
    "custom_callbacks": "a list of callback names or {name, args, enabled} tables",
    "custom_callbacks_only": "bool",
    "strict": "bool",
    "callback_errors": "one of 'log', 'disable', 'raise'",
    "callback_max_failures": "int >= 1",
    "autoload": "bool",
}
ENTRY_KEYS: tuple[str, ...] = ("name", "args", "enabled", "id")


def _mask_args(args: Mapping[str, Any]) -> str:
    return repr(mask(args))


def _mask_name(name: str) -> str:
    return repr(mask_text(name))  # a name read from a secret variable is a secret


def mask(value: Any, secret_paths: frozenset[str] | set[str] = frozenset(), path: str = "") -> Any:
    """A copy of ``value`` with secrets replaced by ``'***'``.

    Secret: a mapping key that names one (key, token, secret, password...), or a
    key path listed in ``secret_paths`` (values read from secret variables); and in
    every string, the values known to be secret and every URL's userinfo and query
    (:func:`callbridge._secrets.mask_text`).
    """
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            item_path = f"{path}.{key}" if path else str(key)
            secret = (isinstance(key, str) and is_secret_name(key)) or item_path in secret_paths
            out[key] = "***" if secret and item is not None else mask(item, secret_paths, item_path)
        return out
    if isinstance(value, (list, tuple)):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
        return [
            "***" if p in secret_paths and item is not None else mask(item, secret_paths, p)
            for p, item in items
        ]
    return value


@attrs.define
class CallbackSpec:
    """One declared callback.

    Attributes:
        name: a registered name, an entry-point name, or an import path
            (``pkg.mod.Name`` or ``pkg.mod:Name``).
        args: keyword arguments, as written (``${VAR}`` is resolved at build).
        enabled: whether to build it.
        id: a stable identity chosen by the user: the key its saved state is filed
            under, so that a resume finds it whatever the entry's position (None: the
            name, with ``#2``, ``#3``... for later entries of the same name).
        source: the file it came from (not part of equality).
        key_path: where it sits in that file (not part of equality).
    """

    name: str = attrs.field(repr=_mask_name)
    args: dict[str, Any] = attrs.field(factory=dict, repr=_mask_args)
    enabled: bool = True
    source: str = attrs.field(default="<mapping>", eq=False, repr=False)
    key_path: str = attrs.field(default="", eq=False, repr=False)
    id: str | None = attrs.field(default=None, kw_only=True)

    @property
    def label(self) -> str:
        """``early_stopping (custom_callbacks[1])``: how logs and summaries name it."""
        short = self.key_path.rsplit(".", 1)[-1] if self.key_path else ""
        return f"{self.name} ({short})" if short else self.name


@attrs.define
class CallbacksConfig:
    """A whole callbacks section.

    Attributes:
        callbacks: the declared callbacks, in order (disabled ones included).
        custom_callbacks_only: drop the trainer's default progress, printing and
            reporting callbacks (adapters honour it).
        strict: a callback that fails to build stops the run before training.
        callback_errors: what a hook's exception does at run time: ``log`` it
            (once per callback and hook) and go on, ``disable`` the callback after
            ``callback_max_failures`` failures, or ``raise`` it out of the trainer.
        callback_max_failures: failures before ``disable`` turns a callback off.
        autoload: Lightning only: every ``Trainer`` started in this project gets these
            callbacks with no code change (through Lightning's ``callbacks_factory``
            entry point; ``CALLBRIDGE_AUTOLOAD=0`` turns it off for one run).
        source: the file it came from (not part of equality).
        key_prefix: the key path of the section, e.g. ``tool.callbacks``.
    """

    callbacks: list[CallbackSpec] = attrs.Factory(list)
    custom_callbacks_only: bool = False
    strict: bool = False
    callback_errors: OnError = "log"
    callback_max_failures: int = 3
    autoload: bool = False
    source: str = attrs.field(default="<mapping>", eq=False, repr=False)
    key_prefix: str = attrs.field(default="", eq=False, repr=False)
    #: What is not wrong enough to refuse but would surprise (a near miss of a key in a
    #: training YAML without ``strict``); ``load`` logs them, ``check`` and ``show`` print them.
    warnings: tuple[Problem, ...] = attrs.field(default=(), eq=False, repr=False)

    @property
    def enabled(self) -> list[CallbackSpec]:
        """The callbacks that will be built."""
        return [spec for spec in self.callbacks if spec.enabled]

    def key(self, key: str) -> str:
        """The full key path of a key of this section."""
        return f"{self.key_prefix}.{key}" if self.key_prefix else key


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Parser:
    """Collects every problem of a section instead of stopping at the first."""

    def __init__(self, source: str, prefix: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.prefix = prefix
        self.environ = environ
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def problem(self, key_path: str, message: str) -> None:
        self.problems.append(Problem(self.source, key_path, message))

    def text(self, value: Any, key_path: str) -> Any:
        """Interpolate ``value`` if it is a string; None on failure (problem recorded)."""
        if not isinstance(value, str):
            return value
        try:
            return interpolate(value, self.environ)[0]
        except InterpolationError as exc:
            self.problem(key_path, str(exc))
            return None

    def secret(self, raw: Any) -> bool:
        """Whether ``raw`` reads a variable with a secret-looking name.

        The value of such a variable is never shown.
        """
        if not isinstance(raw, str):
            return False
        try:
            return any(is_secret_name(name) for name in interpolate(raw, self.environ)[1])
        except InterpolationError:
            return False

    def boolean(self, value: Any, key_path: str, default: bool) -> bool:
        raw, value = value, self.text(value, key_path)
        if value is None:
            return default
        try:
            return to_bool(value)
        except CoercionError as exc:
            got = describe(value, secret=self.secret(raw))
            self.problem(key_path, f"expected {exc.expected} (got {got})")
            return default

    def section(self, data: Mapping[str, Any], *, loose: bool) -> CallbacksConfig:
        near_misses: list[tuple[str, str]] = []
        for key in data:
            if key in OPTION_KEYS:
                continue
            if not isinstance(key, str):
                if not loose:
                    self.problem(self.prefix, f"keys must be strings (got {describe(key)})")
                continue
            if loose:
                near = near_option(key)
                if near is not None:
                    near_misses.append((key, near))
                continue  # another tool's key in a full training YAML
            near = closest(key, OPTION_KEYS)
            hint = f"Did you mean {near!r}? " if near else ""
            self.problem(
                _join(self.prefix, key),
                f"unknown key {key!r}. {hint}Known keys: {', '.join(OPTION_KEYS)}.",
            )
        config = CallbacksConfig(source=self.source, key_prefix=self.prefix)
        config.custom_callbacks_only = self.boolean(
            data.get("custom_callbacks_only", False),
            _join(self.prefix, "custom_callbacks_only"),
            False,
        )
        config.strict = self.boolean(data.get("strict", False), _join(self.prefix, "strict"), False)
        config.callback_errors = self._on_error(data.get("callback_errors", "log"))
        config.callback_max_failures = self._max_failures(data.get("callback_max_failures", 3))
        config.autoload = self.boolean(
            data.get("autoload", False), _join(self.prefix, "autoload"), False
        )
        config.callbacks = self._entries(data.get("custom_callbacks"))
        # In a training YAML, a near miss of our keys may be another tool's key, or ours
        # misspelt (then its callbacks are silently not loaded): an error under strict.
        for key, near in near_misses:
            message = (
                f"unknown key {key!r}. Did you mean {near!r}? Known keys: {', '.join(OPTION_KEYS)}."
            )
            if config.strict:
                self.problem(_join(self.prefix, key), message)
            else:
                self.warnings.append(
                    Problem(
                        self.source,
                        _join(self.prefix, key),
                        f"{message} It is ignored; rename it, or set strict: true to make "
                        "this an error",
                    )
                )
        config.warnings = tuple(self.warnings)
        self._unique_ids(config.callbacks)
        return config

    def _unique_ids(self, specs: list[CallbackSpec]) -> None:
        """Two entries with one ``id`` would share saved state: a problem naming both."""
        first: dict[str, CallbackSpec] = {}
        for spec in specs:
            if spec.id is None:
                continue
            other = first.setdefault(spec.id, spec)
            if other is not spec:
                self.problem(
                    _join(spec.key_path, "id"),
                    f"id {spec.id!r} is already used by {other.key_path}; "
                    "each entry's id must be unique (it files the entry's saved state)",
                )

    def _on_error(self, value: Any) -> OnError:
        key_path = _join(self.prefix, "callback_errors")
        raw, value = value, self.text(value, key_path)
        if value in ON_ERROR_CHOICES:
            return value  # type: ignore[no-any-return]
        if value is not None:
            got = describe(value, secret=self.secret(raw))
            self.problem(key_path, f"expected one of 'log', 'disable', 'raise' (got {got})")
        return "log"

    def _max_failures(self, value: Any) -> int:
        key_path = _join(self.prefix, "callback_max_failures")
        raw, value = value, self.text(value, key_path)
        # isdecimal(), not isdigit(): isdigit() admits '²', which int() rejects.
        if isinstance(value, str) and value.strip().isdecimal():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if value is not None:
            got = describe(value, secret=self.secret(raw))
            self.problem(key_path, f"expected an int >= 1 (got {got})")
        return 3

    def _entries(self, value: Any) -> list[CallbackSpec]:
        key_path = _join(self.prefix, "custom_callbacks")
        if value is None:
            return []
        if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)):
            self.problem(
                key_path,
                "expected a list of callback names or {name, args} tables "
                f"(got {describe(value)})."
                ' In TOML: custom_callbacks = ["log"]; in YAML: custom_callbacks: [log]',
            )
            return []
        specs = []
        for index, item in enumerate(value):
            spec = self._entry(item, f"{key_path}[{index}]")
            if spec is not None:
                specs.append(spec)
        return specs

    def _entry(self, item: Any, key_path: str) -> CallbackSpec | None:
        if isinstance(item, str):
            name = self.text(item, key_path)
            if name is None:
                return None
            if not name.strip():
                self.problem(key_path, "expected a callback name (got an empty string)")
                return None
            return CallbackSpec(name.strip(), source=self.source, key_path=key_path)
        if not isinstance(item, Mapping):
            self.problem(
                key_path,
                "expected a callback name or a {name, args, enabled} table "
                f"(got {describe(item)})",
            )
            return None
        ok = True
        for key in item:
            if key not in ENTRY_KEYS:
                near = closest(str(key), ENTRY_KEYS)
                hint = f"Did you mean {near!r}? " if near else ""
                self.problem(
                    _join(key_path, str(key)),
                    f"unknown key {key!r}. {hint}An entry has: name, args, enabled"
                    " (callback arguments go under args).",
                )
                ok = False
        raw_args = item.get("args")
        if raw_args is None:
            raw_args = {}
        if not isinstance(raw_args, Mapping):
            self.problem(
                _join(key_path, "args"), f"expected a table of arguments (got {describe(raw_args)})"
            )
            return None
        args = dict(raw_args)
        bad_keys = [k for k in args if not isinstance(k, str) or not k.isidentifier()]
        for key in bad_keys:
            self.problem(
                _join(key_path, f"args.{key}"),
                f"argument names must be identifiers (got {describe(key)})",
            )
            ok = False
        enabled = True
        if "enabled" in args:  # the LLaMA-Factory spelling: enabled among the args
            if "enabled" in item:
                self.problem(
                    _join(key_path, "args.enabled"),
                    "'enabled' is given twice (in the entry and in its args); keep one",
                )
                ok = False
            enabled = self.boolean(args.pop("enabled"), _join(key_path, "args.enabled"), True)
        if "enabled" in item:
            enabled = self.boolean(item["enabled"], _join(key_path, "enabled"), True)
        if "name" not in item:
            self.problem(key_path, "missing 'name': every entry names its callback")
            return None
        name = item["name"]
        if not isinstance(name, str):
            self.problem(_join(key_path, "name"), f"expected a str (got {describe(name)})")
            return None
        resolved_name = self.text(name, _join(key_path, "name")) if enabled else name
        if resolved_name is None:
            return None
        if not resolved_name.strip():
            self.problem(_join(key_path, "name"), "expected a callback name (got an empty string)")
            return None
        entry_id = item.get("id")
        if entry_id is not None and (
            not isinstance(entry_id, str) or not entry_id.strip() or not entry_id.isprintable()
        ):
            self.problem(
                _join(key_path, "id"),
                f"expected a non-empty, printable str (got {describe(entry_id)})",
            )
            ok = False
        if not ok:
            return None
        return CallbackSpec(
            resolved_name.strip(),
            args,
            enabled,
            source=self.source,
            key_path=key_path,
            id=entry_id.strip() if isinstance(entry_id, str) else None,
        )


#: Spellings of our keys that other tools do not use: a training YAML that has one meant ours.
_ALIASES = {
    "callbacks": "custom_callbacks",
    "callback": "custom_callbacks",
    "custom_callback": "custom_callbacks",
    "customcallbacks": "custom_callbacks",
    "custom_callbacks_list": "custom_callbacks",
}


def near_option(key: str) -> str | None:
    """Our key that ``key`` nearly is (case, ``-`` for ``_``, a typo, a known alias), if any."""
    norm = key.strip().lower().replace("-", "_")
    if norm in OPTION_KEYS:
        return norm
    if norm in _ALIASES:
        return _ALIASES[norm]
    return closest(norm, OPTION_KEYS, cutoff=0.8)


def parse_section(
    data: Any,
    *,
    source: str,
    prefix: str,
    environ: Mapping[str, str],
    loose: bool,
) -> CallbacksConfig:
    """Validate one callbacks section (already located in its document).

    Args:
        data: the section's plain data.
        source: the file name for messages.
        prefix: the section's key path (``tool.callbacks`` or empty).
        environ: the variables for ``${VAR}``.
        loose: the section shares its mapping with another tool's keys (a training
            YAML): unrelated keys are ignored, near misses of ours are errors.

    Raises:
        ConfigError: with every problem found.
    """
    if not isinstance(data, Mapping):
        where = prefix or "the top level"
        raise ConfigError.at(source, prefix, f"expected a table at {where} (got {describe(data)})")
    parser = _Parser(source, prefix, environ)
    config = parser.section(data, loose=loose)
    if parser.problems:
        error = ConfigError(parser.problems)
        error.partial = config
        raise error
    return config


def hint_for_missing_keys(data: Mapping[str, Any]) -> str:
    """The message for a document that holds none of our keys."""
    names = [printable(k) for k in data if isinstance(k, str)]
    near = next(
        (closest(k, OPTION_KEYS, cutoff=0.6) for k in names if closest(k, OPTION_KEYS)), None
    )
    found = f" Found keys: {', '.join(names[:10])}." if names else ""
    hint = f" Did you mean {near!r}?" if near else ""
    return (
        f"no callbacks declared: expected a 'custom_callbacks' list (or a [tool.callbacks] table)."
        f"{hint}{found}"
    )
