"""From specs to callback objects: resolve, validate, coerce, inject, construct."""

import contextlib
import io
import logging
import os
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePath
from typing import Any

import attrs

from ._coerce import EMPTY, CoercionError, coerce_untyped, is_mapping_type, type_name
from ._errors import ConfigError, Problem, closest, describe, is_secret_name
from ._hooknames import warn_misnamed_hooks
from ._interpolate import interpolate_tree
from ._logging import install_default_handler
from ._record import Record
from ._registry import Registry, RegistryEntry, default_registry, trust_problem
from ._secrets import mask_text
from ._sources import load
from ._spec import ENTRY_KEYS, CallbacksConfig, CallbackSpec, mask

logger = logging.getLogger("callbridge")

#: Names an adapter or integration may inject; ``check`` does not report them missing.
CONTEXT_NAMES: frozenset[str] = frozenset(
    {
        # adapters
        "trainer", "model", "args", "processing_class", "tokenizer", "ref_model",
        "accelerator", "lightning_module",
        # LLaMA-Factory-style integrations
        "model_args", "data_args", "training_args", "finetuning_args", "generating_args",
    }
)  # fmt: skip


class Param(Record):
    """One constructor parameter as configuration sees it."""

    __slots__ = ("annotation", "default", "name", "required", "secret")

    def __init__(
        self,
        name: str,
        annotation: Any,
        required: bool,
        secret: bool,  # attrs field with repr=False, or a secret-looking name
        default: Any = EMPTY,
    ) -> None:
        self.name = name
        self.annotation = annotation
        self.required = required
        self.secret = secret
        self.default = default

    def describe_default(self) -> str:
        """The default as ``list`` shows it (secrets hidden)."""
        if self.required:
            return "required"
        if self.secret and self.default is not None:
            return "***"
        if isinstance(self.default, attrs.Factory):  # type: ignore[arg-type]
            return f"{getattr(self.default.factory, '__name__', 'factory')}()"
        return repr(self.default)


class Signature(Record):
    """What a factory accepts."""

    __slots__ = ("params", "positional_only_required", "var_keyword")

    def __init__(
        self, params: dict[str, Param], var_keyword: bool, positional_only_required: tuple[str, ...]
    ) -> None:
        self.params = params
        self.var_keyword = var_keyword
        self.positional_only_required = positional_only_required

    def describe_accepted(self) -> str:
        if not self.params:
            return "It takes no arguments"
        parts = [
            f"{p.name}: {type_name(p.annotation)}" if p.annotation is not EMPTY else p.name
            for p in self.params.values()
        ]
        return "Accepted: " + ", ".join(parts)


_SIGNATURES: dict[Any, Signature] = {}


def signature_of(factory: Callable[..., Any]) -> Signature:
    """Parameters, resolved annotations and secret flags of a class or callable (cached)."""
    try:
        return _SIGNATURES[factory]
    except (KeyError, TypeError):
        pass
    sig = _signature(factory)
    with contextlib.suppress(TypeError):  # unhashable callables are not cached
        _SIGNATURES[factory] = sig
    return sig


def _signature(factory: Callable[..., Any]) -> Signature:
    fast = _attrs_signature(factory)
    if fast is not None:
        return fast
    import inspect  # only for factories that are not plain attrs classes (about 12 ms to import)

    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature
        return Signature({}, True, ())
    hints = _type_hints(factory)
    hidden = _hidden_fields(factory)
    defaults = _attrs_defaults(factory)
    params: dict[str, Param] = {}
    var_keyword = False
    positional_only: list[str] = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_keyword = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        required = p.default is p.empty
        if p.kind is p.POSITIONAL_ONLY:
            if required:
                positional_only.append(p.name)
            continue
        params[p.name] = Param(
            p.name,
            hints.get(p.name, EMPTY if p.annotation is p.empty else p.annotation),
            required,
            p.name in hidden or is_secret_name(p.name),
            defaults.get(p.name, EMPTY if required else p.default),
        )
    return Signature(params, var_keyword, tuple(positional_only))


def _attrs_signature(factory: Any) -> Signature | None:
    """An attrs class with its generated ``__init__``: the fields say it all, no inspect needed."""
    code = getattr(getattr(factory, "__init__", None), "__code__", None)
    generated = code is not None and code.co_filename.startswith("<attrs generated")
    if not generated or not attrs.has(factory):
        return None
    hints = _type_hints(factory)
    hidden = _hidden_fields(factory)
    params: dict[str, Param] = {}
    for f in attrs.fields(factory):
        if not f.init:
            continue
        required = f.default is attrs.NOTHING
        params[f.alias] = Param(
            f.alias,
            hints.get(f.alias, EMPTY),
            required,
            f.alias in hidden or is_secret_name(f.alias),
            EMPTY if required else f.default,
        )
    return Signature(params, False, ())


def _type_hints(factory: Any) -> dict[str, Any]:
    if attrs.has(factory):
        try:
            attrs.resolve_types(factory)
        except Exception:  # noqa: BLE001 - unresolvable forward refs leave the field untyped
            return {}
        return {f.alias: f.type for f in attrs.fields(factory) if f.init and f.type is not None}
    # A class's hints live on its __init__ (read through getattr: mypy rightly distrusts
    # instance.__init__, but here the object is a class).
    target = getattr(factory, "__init__", factory) if isinstance(factory, type) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - names under TYPE_CHECKING: fall back to raw annotations
        return {}


def _attrs_defaults(factory: Any) -> dict[str, Any]:
    if not attrs.has(factory):
        return {}
    return {
        f.alias: f.default
        for f in attrs.fields(factory)
        if f.init and f.default is not attrs.NOTHING
    }


def _hidden_fields(factory: Any) -> frozenset[str]:
    if not attrs.has(factory):
        return frozenset()
    return frozenset(f.alias for f in attrs.fields(factory) if f.init and f.repr is False)


class Plan(Record):
    """A spec resolved and validated, ready to construct.

    Attributes:
        spec: the spec it came from.
        factory: the class or callable to call.
        entry: where the name pointed.
        kwargs: coerced arguments; nested callbacks are :class:`Plan` values.
        inject: parameter names to fill from the context at construction.
        secret_args: argument names to mask in ``show`` and logs.
    """

    __slots__ = ("entry", "factory", "inject", "kwargs", "secret_args", "spec")

    def __init__(
        self,
        spec: CallbackSpec,
        factory: Callable[..., Any],
        entry: RegistryEntry,
        kwargs: dict[str, Any],
        inject: tuple[str, ...],
        secret_args: frozenset[str],
    ) -> None:
        self.spec = spec
        self.factory = factory
        self.entry = entry
        self.kwargs = kwargs
        self.inject = inject
        self.secret_args = secret_args

    def __repr__(self) -> str:
        # Not Record's: kwargs hold resolved secrets (an api_key read from the environment).
        kwargs = {k: plain_value(v, k in self.secret_args) for k, v in self.kwargs.items()}
        return (
            f"Plan(name={mask_text(self.spec.name)!r}, target={self.entry.import_path!r}, "
            f"kwargs={mask(kwargs)!r}, inject={self.inject!r})"
        )

    def construct(self, context: Mapping[str, Any]) -> Any:
        """Call the factory (nested plans first).

        Raises:
            ConfigError: the factory raised; the message names the spec and the error.
        """
        kwargs = {k: _construct_value(v, context) for k, v in self.kwargs.items()}
        kwargs.update({name: context[name] for name in self.inject})
        try:
            built = self.factory(**kwargs)
        except Exception as exc:
            reason = str(exc)
            # Validators like to quote the value they reject; a secret's value must not be echoed.
            for name in self.secret_args:
                value = self.kwargs.get(name)
                if isinstance(value, str) and value:
                    reason = reason.replace(value, "***")
            error = ConfigError.at(
                self.spec.source,
                self.spec.key_path,
                f"building {self.spec.name!r} failed: {type(exc).__name__}: {reason}",
            )
            if reason != str(exc):  # the original would print the secret in a traceback
                raise error from None
            raise error from exc
        self._warn_if_repr_shows_secrets(built)
        warn_misnamed_hooks(built, f"{self.spec.source}: {self.spec.key_path}")
        return built

    def _warn_if_repr_shows_secrets(self, built: Any) -> None:
        """Say so when the built object's repr prints a secret it was given.

        callbridge masks secrets everywhere it prints, but a callback's own repr is
        its class's: a plain attrs field named ``api_key`` shows its value to whoever
        logs the object. The warning names the field, never the value.
        """
        secrets = [
            (name, value)
            for name in sorted(self.secret_args)
            if isinstance(value := self.kwargs.get(name), str) and len(value) >= 4
        ]
        if not secrets:
            return
        try:
            text = repr(built)
        except Exception:  # noqa: BLE001  # a broken repr is the class's business, not ours
            return
        shown = [name for name, value in secrets if value in text]
        if shown:
            logger.warning(
                "callbridge: %s (%s) shows the value of its secret argument%s %s in its repr; "
                "declare %s with attrs.field(repr=False) (or leave %s out of __repr__)",
                mask_text(self.spec.name),
                f"{self.spec.source}: {self.spec.key_path}",
                "s" if len(shown) > 1 else "",
                ", ".join(repr(n) for n in shown),
                "them" if len(shown) > 1 else "it",
                "them" if len(shown) > 1 else "it",
            )


def _construct_value(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, Plan):
        return value.construct(context)
    if isinstance(value, list):
        return [_construct_value(v, context) for v in value]
    if isinstance(value, tuple):
        return tuple(_construct_value(v, context) for v in value)
    if isinstance(value, dict):
        return {k: _construct_value(v, context) for k, v in value.items()}
    return value


def _looks_like_spec(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("name"), str)
        and all(isinstance(k, str) and k in ENTRY_KEYS for k in value)
    )


class _Planner:
    def __init__(
        self,
        registry: Registry,
        environ: Mapping[str, str],
        context_names: Iterable[str],
        explicit_context: bool,
        quiet: bool = False,
    ) -> None:
        self.registry = registry
        self.environ = environ
        self.context_names = frozenset(context_names)
        self.explicit_context = explicit_context
        self.quiet = quiet

    def _resolve(self, spec: CallbackSpec, expected: Any) -> tuple[Any, RegistryEntry]:
        """The factory, if the trust rule lets a configuration call it; nothing is called."""
        if self.quiet:
            # check and show print reports (JSON too): what a module prints on import
            # (``import this``) must not mix into them.
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                factory, entry = self.registry.resolve(
                    spec.name, source=spec.source, key_path=spec.key_path
                )
            if printed.getvalue():
                logger.debug(
                    "callbridge: importing %s printed %d characters (not shown)",
                    mask_text(spec.name),
                    len(printed.getvalue()),
                )
        else:
            factory, entry = self.registry.resolve(
                spec.name, source=spec.source, key_path=spec.key_path
            )
        refusal = trust_problem(factory, entry, None if expected is EMPTY else expected)
        if refusal is not None:
            raise ConfigError.at(spec.source, spec.key_path, refusal)
        return factory, entry

    def plan(self, spec: CallbackSpec, expected: Any = EMPTY) -> Plan:
        """Resolve one spec. Raises ConfigError with every problem of that spec.

        Args:
            spec: the entry.
            expected: for a nested entry, the annotation of the parameter it fills.
        """
        problems: list[Problem] = []
        factory, entry = self._resolve(spec, expected)
        sig = signature_of(factory)
        args_path = f"{spec.key_path}.args" if spec.key_path else "args"
        args, interp_problems, secret_paths = interpolate_tree(
            spec.args, self.environ, source=spec.source, key_path=args_path
        )
        problems += interp_problems
        # An argument whose variable is missing has been reported; coercing the raw
        # ``${VAR}`` text as well would only add noise.
        unresolved = {p.key_path for p in interp_problems}
        kwargs: dict[str, Any] = {}
        secret_args: set[str] = set()
        for name, raw in args.items():
            key_path = f"{args_path}.{name}"
            param = sig.params.get(name)
            if param is None and not sig.var_keyword:
                near = closest(name, sig.params, contains=True)
                hint = f"Did you mean {near!r}? " if near else ""
                problems.append(
                    Problem(
                        spec.source,
                        key_path,
                        f"unknown argument {name!r} for {spec.name!r}. {hint}"
                        f"{sig.describe_accepted()}.",  # no .capitalize(): it lowercases 'None'
                    )
                )
                continue
            secret = (
                is_secret_name(name)
                or (param is not None and param.secret)
                or any(_within(p, key_path) for p in secret_paths)
            )
            if secret:
                secret_args.add(name)
            if any(_within(p, key_path) for p in unresolved):
                continue
            annotation = param.annotation if param is not None else EMPTY
            try:
                default = param.default if param is not None else EMPTY
                kwargs[name] = self._value(raw, annotation, spec, key_path, secret, default)
            except ConfigError as exc:
                problems += exc.problems
        inject: list[str] = []
        for name, param in sig.params.items():
            if name in kwargs or name in args:
                continue
            if name in self.context_names:
                if self.explicit_context or name not in CONTEXT_NAMES:
                    inject.append(name)
                continue  # check: an adapter will inject it
            if param.required:
                if name in CONTEXT_NAMES:
                    message = (
                        f"{spec.name!r} needs {name!r}, which is injected at build: attach it with "
                        "an adapter (callbridge_hf.attach(trainer, ...)) "
                        f"or pass inject={{{name!r}: ...}}"
                    )
                else:
                    expected = (
                        f" (expected {type_name(param.annotation)})"
                        if param.annotation is not EMPTY
                        else ""
                    )
                    message = (
                        f"missing required argument {name!r}{expected} for {spec.name!r}; "
                        "add it under args"
                    )
                problems.append(Problem(spec.source, args_path, message))
        for name in sig.positional_only_required:
            problems.append(
                Problem(
                    spec.source,
                    spec.key_path,
                    f"{spec.name!r} has a required positional-only parameter {name!r} that a "
                    "config cannot set; wrap it in a factory function with keyword parameters",
                )
            )
        if problems:
            raise ConfigError(problems)
        return Plan(spec, factory, entry, kwargs, tuple(inject), frozenset(secret_args))

    def _value(
        self,
        raw: Any,
        annotation: Any,
        spec: CallbackSpec,
        key_path: str,
        secret: bool,
        default: Any = EMPTY,
    ) -> Any:
        if _looks_like_spec(raw) and not is_mapping_type(annotation):
            nested_args = raw.get("args")
            if nested_args is None:
                nested_args = {}
            if not isinstance(nested_args, Mapping):
                raise ConfigError.at(
                    spec.source,
                    f"{key_path}.args",
                    f"expected a table of arguments (got {describe(nested_args, secret=secret)})",
                )
            bad_keys = [k for k in nested_args if not isinstance(k, str) or not k.isidentifier()]
            if bad_keys:
                raise ConfigError(
                    [
                        Problem(
                            spec.source,
                            f"{key_path}.args.{k}",
                            f"argument names must be identifiers (got {describe(k)})",
                        )
                        for k in bad_keys
                    ]
                )
            nested = CallbackSpec(
                raw["name"],
                dict(nested_args),
                True,
                source=spec.source,
                key_path=key_path,
            )
            return self.plan(nested, annotation)
        try:
            # Without a usable annotation, a string is read as the default's type.
            return coerce_untyped(raw, annotation, default)
        except CoercionError as exc:
            raise ConfigError.at(
                spec.source,
                key_path,
                f"expected {exc.expected} (got {describe(raw, secret=secret)})",
            ) from None


def _within(path: str, key_path: str) -> bool:
    """Whether ``path`` is ``key_path`` or inside it."""
    return path == key_path or path.startswith((key_path + ".", key_path + "["))


class Built(Record):
    """One constructed callback with the spec it came from.

    Attributes:
        spec: the spec it came from.
        callback: the object built.
        key: unique per instance in this config (:func:`state_keys`): what its saved
            state is filed under.
        plan: the resolved spec it was constructed from (None when built otherwise).
    """

    __slots__ = ("callback", "key", "plan", "spec")

    def __init__(
        self, spec: CallbackSpec, callback: Any, key: str, plan: "Plan | None" = None
    ) -> None:
        self.spec = spec
        self.callback = callback
        self.key = key
        self.plan = plan

    @property
    def label(self) -> str:
        return self.spec.label


def state_keys(specs: list[CallbackSpec]) -> list[str]:
    """Each entry's state key: its ``id``, else its name, ``#2``, ``#3``... for repeats.

    Keys do not depend on positions, so that moving an entry keeps its saved state;
    repeats of one name are counted over every entry (disabled ones too), so that
    turning one off does not rename the others.
    """
    taken = {spec.id for spec in specs if spec.id is not None}
    seen: dict[str, int] = {}
    keys: list[str] = []
    for spec in specs:
        if spec.id is not None:
            keys.append(spec.id)
            continue
        while True:
            n = seen[spec.name] = seen.get(spec.name, 0) + 1
            key = spec.name if n == 1 else f"{spec.name}#{n}"
            if key not in taken:
                break
        keys.append(key)
    return keys


def _planner(
    inject: Mapping[str, Any] | None,
    registry: Registry | None,
    environ: Mapping[str, str] | None,
    *,
    check: bool,
) -> _Planner:
    context = CONTEXT_NAMES | set(inject or ()) if check else set(inject or ())
    return _Planner(
        registry or default_registry(),
        os.environ if environ is None else environ,
        context,
        explicit_context=not check,
        quiet=check,
    )


def build_entries(
    source: Any,
    *,
    inject: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    strict: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Built]:
    """Build every enabled callback, keeping its spec (what adapters need).

    Raises:
        ConfigError: the source cannot be loaded; or, when strict, any callback
            fails (one error listing every problem).
    """
    install_default_handler()  # visible even where the application set up no logging
    config = load(source, environ=environ)
    is_strict = config.strict if strict is None else strict
    planner = _planner(inject, registry, environ, check=False)
    context = dict(inject or {})
    built: list[Built] = []
    problems: list[Problem] = []
    disabled = 0
    keys = state_keys(config.callbacks)
    for index, spec in enumerate(config.callbacks):
        if not spec.enabled:
            disabled += 1
            continue
        try:
            plan = planner.plan(spec)
            callback = plan.construct(context)
        except ConfigError as exc:
            problems += exc.problems
            if not is_strict:
                logger.error(
                    "callbridge: skipped callback %r at %s: %s",
                    mask_text(spec.name),
                    f"{spec.source}: {spec.key_path}",
                    "; ".join(_relative(p, spec.key_path) for p in exc.problems),
                )
            continue
        built.append(Built(spec, callback, keys[index], plan))
    if problems and is_strict:
        raise ConfigError(problems)
    failed = len(config.enabled) - len(built)
    logger.log(
        logging.WARNING if failed else logging.INFO,
        "callbridge: %d callbacks loaded, %d disabled, %d failed (%s)%s",
        len(built),
        disabled,
        failed,
        config.source,
        "; set strict = true to stop before training instead" if failed else "",
    )
    return built


def _relative(problem: Problem, key_path: str) -> str:
    """``args.update_freq: expected int ...``: a problem inside a spec, named from that spec."""
    if problem.key_path.startswith(key_path + "."):
        return f"{problem.key_path[len(key_path) + 1 :]}: {problem.message}"
    return problem.message


def build(
    source: Any,
    *,
    inject: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    strict: bool | None = None,
) -> list[Any]:
    """Load if needed, then construct every enabled callback, in order.

    Args:
        source: anything :func:`callbridge.load` takes, or a loaded config.
        inject: context objects, passed to constructor parameters of the same name
            that the config does not set (``trainer``, ``model``, ``model_args``...).
        registry: the registry to resolve names in; the default one otherwise.
        strict: override the config's ``strict``.

    Returns:
        The callbacks: neutral :class:`callbridge.Callback` objects and native ones alike.

    Raises:
        ConfigError: the source is invalid, or (strict) a callback cannot be built.
    """
    return [
        b.callback for b in build_entries(source, inject=inject, registry=registry, strict=strict)
    ]


def plan_all(
    config: CallbacksConfig,
    *,
    inject_names: Iterable[str] = (),
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[Plan | None], list[Problem]]:
    """Resolve and validate every enabled spec without constructing anything (``check``, ``show``).

    Returns:
        A plan per spec (None where disabled or invalid), and every problem found.
    """
    planner = _planner(dict.fromkeys(inject_names), registry, environ, check=True)
    plans: list[Plan | None] = []
    problems: list[Problem] = []
    for spec in config.callbacks:
        if not spec.enabled:
            plans.append(None)
            continue
        try:
            plans.append(planner.plan(spec))
        except ConfigError as exc:
            plans.append(None)
            problems += exc.problems
    return plans, problems


def check(
    source: Any,
    *,
    inject_names: Iterable[str] = (),
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Every problem in a configuration, found without constructing or training."""
    return check_config(source, inject_names=inject_names, registry=registry, environ=environ)[1]


def check_config(
    source: Any,
    *,
    inject_names: Iterable[str] = (),
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[CallbacksConfig | None, list[Problem]]:
    """What :func:`check` does, reading the file once; also the configuration read (if any).

    Nothing named is called but neutral callbacks' constructors (cheap by contract, and
    only for names the trust rule admits).
    """
    structural: list[Problem] = []
    try:
        config = load(source, environ=environ)
    except ConfigError as exc:
        if not isinstance(exc.partial, CallbacksConfig):
            return None, list(exc.problems)
        # Go on with the entries that could be read: check reports every problem at once.
        structural, config = list(exc.problems), exc.partial
    plans, problems = plan_all(
        config, inject_names=inject_names, registry=registry, environ=environ
    )
    problems = structural + problems
    # Neutral callbacks promise a cheap constructor free of side effects, so check builds
    # them to run their own validation; other callbacks (native ones) are only validated.
    for plan in plans:
        if plan is not None and not plan.inject and _is_neutral(plan) and _complete(plan):
            try:
                plan.construct({})
            except ConfigError as exc:
                problems += exc.problems
    return config, problems


def _complete(plan: Plan) -> bool:
    """Whether config alone fills every required parameter (none is left to an adapter)."""
    params = signature_of(plan.factory).params
    return all(name in plan.kwargs for name, param in params.items() if param.required)


def _is_neutral(plan: Plan) -> bool:
    from ._protocol import Callback

    factory = plan.factory
    nested = any(isinstance(v, Plan) for v in plan.kwargs.values())
    return isinstance(factory, type) and issubclass(factory, Callback) and not nested


def plain_value(value: Any, hide: bool = False) -> Any:
    """A JSON-ready view of a resolved argument, secrets masked."""
    if hide and value is not None:
        return "***"
    if isinstance(value, Plan):
        return spec_view(value.spec, value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {
            k: plain_value(v, isinstance(k, str) and is_secret_name(k)) for k, v in value.items()
        }
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def spec_view(spec: CallbackSpec, plan: Plan | None) -> dict[str, Any]:
    """One entry as ``show`` and reports print it: resolved where planned, secrets masked."""
    view: dict[str, Any] = {"name": spec.name, "key_path": spec.key_path, "enabled": spec.enabled}
    if plan is not None:
        view["origin"] = plan.entry.origin
        view["target"] = plan.entry.import_path
        view["args"] = {k: plain_value(v, k in plan.secret_args) for k, v in plan.kwargs.items()}
        if plan.inject:
            view["injected"] = list(plan.inject)
    else:
        view["args"] = spec.args  # unresolved: masked below by name, variables left unread
    # Every string, by value too: a name read from a secret variable, a URL's credentials.
    masked: dict[str, Any] = mask(view)
    return masked


def options_view(config: CallbacksConfig) -> dict[str, Any]:
    """The configuration's options (everything but the callbacks), as plain data."""
    return {
        "custom_callbacks_only": config.custom_callbacks_only,
        "strict": config.strict,
        "callback_errors": config.callback_errors,
        "callback_max_failures": config.callback_max_failures,
        "autoload": config.autoload,
    }


def config_view(config: CallbacksConfig, built: Iterable[Built]) -> dict[str, Any]:
    """The resolved configuration of a run, secrets masked: what ``Run.config`` holds.

    Each entry says its ``status``: ``loaded`` (with its resolved arguments),
    ``disabled`` or ``failed`` (skipped by a non-strict configuration).
    """
    plans = {id(b.spec): b.plan for b in built}
    callbacks = []
    for spec in config.callbacks:
        view = spec_view(spec, plans.get(id(spec)))
        if id(spec) in plans:
            view["status"] = "loaded"
        else:
            view["status"] = "disabled" if not spec.enabled else "failed"
        callbacks.append(view)
    return {
        "source": str(config.source),
        "options": options_view(config),
        "callbacks": callbacks,
    }
