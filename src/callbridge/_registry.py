"""Names to callback factories: built-ins, registrations, entry points and import paths."""

import importlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from ._errors import CallbridgeError, ConfigError, describe, did_you_mean
from ._record import Record

logger = logging.getLogger("callbridge")

ENTRY_POINT_GROUP = "callbridge.callbacks"

#: Built-in callbacks, by import string so that importing callbridge imports none of them.
BUILTINS: dict[str, str] = {
    "bema": "callbridge.callbacks.bema:BEMACallback",
    "control": "callbridge.callbacks.control:ControlCallback",
    "early_stopping": "callbridge.callbacks.early_stopping:EarlyStoppingCallback",
    "evaluation": "callbridge.callbacks.evaluation:EvaluationCallback",
    "guard": "callbridge.callbacks.guard:GuardCallback",
    "log": "callbridge.callbacks.log:LogCallback",
    "monitor": "callbridge.callbacks.monitor:MonitorCallback",
    "metrics": "callbridge.callbacks.metrics:MetricsCallback",
    "prediction": "callbridge.callbacks.prediction:PredictionCallback",
    "preemption": "callbridge.callbacks.preemption:PreemptionCallback",
    "progress": "callbridge.callbacks.progress:ProgressCallback",
    "reporter": "callbridge.callbacks.reporter:ReporterCallback",
    "sync_ref_model": "callbridge.callbacks.sync_ref_model:SyncRefModelCallback",
    "training_stage": "callbridge.callbacks.training_stage:TrainingStageCallback",
}

T = TypeVar("T")


class RegistrationError(CallbridgeError, ValueError):
    """A name registered twice, or something that cannot be a callback factory."""


class RegistryEntry(Record):
    """Where a name points.

    Attributes:
        name: the name a config uses.
        target: the factory, or its import string (``pkg.mod:Name``) until first use.
        origin: ``built-in``, ``registered``, ``entry point from <distribution> <version>``
            or ``import path``.
    """

    __slots__ = ("name", "origin", "target")

    def __init__(self, name: str, target: Any, origin: str) -> None:
        self.name = name
        self.target = target
        self.origin = origin

    def load(self) -> Callable[..., Any]:
        """The factory itself, importing it if needed."""
        # `target` is Any by nature (whatever was registered, or what an import found);
        # this is where it is declared a factory.
        factory: Callable[..., Any] = (
            import_object(self.target) if isinstance(self.target, str) else self.target
        )
        return factory

    @property
    def import_path(self) -> str:
        """``module:qualname`` of the factory, for ``list`` and ``show``."""
        if isinstance(self.target, str):
            return self.target
        module = getattr(self.target, "__module__", "?")
        return f"{module}:{getattr(self.target, '__qualname__', repr(self.target))}"


class ImportPathError(Exception):
    """An import path that does not lead to an object; the message says why."""


def import_object(path: str) -> Any:
    """Import ``pkg.mod:Name``, ``pkg.mod:Outer.Inner`` or ``pkg.mod.Name``.

    Raises:
        ImportPathError: nothing importable at that path (the message names the
            module tried and the underlying error, without a traceback).
    """
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        candidates = [(module_name, attr_path)]
    else:
        parts = path.split(".")
        # The longest importable module prefix wins: pkg.mod.Name, then pkg.mod / Name...
        candidates = [
            (".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)
        ]
    if not candidates or not all(candidates[0]):
        raise ImportPathError(f"{path!r} is not an import path (expected pkg.module.Name)")
    first_error: str | None = None
    for module_name, attr_path in candidates:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only "this very module is missing" lets us try a shorter prefix.
            if exc.name is not None and (
                module_name == exc.name or module_name.startswith(exc.name + ".")
            ):
                first_error = first_error or f"no module named {exc.name!r}"
                continue
            raise ImportPathError(f"importing {module_name!r} failed: {_exc_line(exc)}") from None
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import-time error, and a
            # module that calls sys.exit() when imported, becomes one sentence
            raise ImportPathError(f"importing {module_name!r} failed: {_exc_line(exc)}") from None
        obj: Any = module
        for attr in attr_path.split("."):
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                raise ImportPathError(
                    f"module {module_name!r} has no attribute {attr_path!r}"
                ) from None
        return obj
    raise ImportPathError(first_error or f"cannot import {path!r}")


def _exc_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _check_factory(name: str, obj: Any) -> None:
    if not isinstance(name, str) or not name.strip():
        raise RegistrationError(f"a callback name must be a non-empty str (got {describe(name)})")
    if not callable(obj) and not isinstance(obj, str):
        raise RegistrationError(
            f"cannot register {name!r}: expected a class or a factory callable "
            f"(got {describe(obj)})"
        )


class Registry:
    """Names to factories. Entry points are read on the first lookup that needs them."""

    def __init__(
        self,
        builtins: Mapping[str, str] | None = None,
        *,
        entry_point_group: str | None = ENTRY_POINT_GROUP,
    ) -> None:
        self._entries: dict[str, RegistryEntry] = {
            name: RegistryEntry(name, target, "built-in")
            for name, target in (builtins or {}).items()
        }
        self._group = entry_point_group
        self._entry_points_read = entry_point_group is None

    def register(self, name: str, obj: Any, *, replace: bool = False) -> None:
        """Register ``obj`` (a class or factory, or its import string) under ``name``.

        Raises:
            RegistrationError: the name is taken and ``replace`` is false, or ``obj``
                cannot be a factory.
        """
        _check_factory(name, obj)
        existing = self._entries.get(name)
        if existing is not None and not replace and existing.target is not obj:
            raise RegistrationError(
                f"callback name {name!r} is already registered ({existing.origin}: "
                f"{existing.import_path}); pass replace=True to override it, or choose another name"
            )
        self._entries[name] = RegistryEntry(name, obj, "registered")

    def callback_plugin(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Class or function decorator: ``@callback_plugin("acme.monitor")``."""

        def decorate(obj: T) -> T:
            self.register(name, obj, replace=replace)
            return obj

        return decorate

    def unregister(self, name: str) -> None:
        """Forget a name (tests, plugins replacing one another)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> RegistryEntry | None:
        """The entry for an exact name, reading entry points if the name is not known yet."""
        entry = self._entries.get(name)
        if entry is None and not self._entry_points_read:
            self._read_entry_points()
            entry = self._entries.get(name)
        return entry

    def entries(self) -> dict[str, RegistryEntry]:
        """A copy of every known name (entry points included)."""
        if not self._entry_points_read:
            self._read_entry_points()
        return dict(sorted(self._entries.items()))

    def copy(self) -> "Registry":
        """An independent registry with the same names."""
        clone = Registry(entry_point_group=self._group)
        clone._entries = dict(self._entries)
        clone._entry_points_read = self._entry_points_read
        return clone

    def resolve(
        self, name: str, *, source: str = "<mapping>", key_path: str = ""
    ) -> tuple[Any, RegistryEntry]:
        """The factory for a configured name.

        Raises:
            ConfigError: unknown name (with the closest names), or an import that failed.
        """
        entry = self.get(name)
        if entry is None:
            if "." not in name and ":" not in name:
                raise ConfigError.at(
                    source,
                    key_path,
                    f"unknown callback {name!r}. {did_you_mean(name, self.entries())}",
                )
            entry = RegistryEntry(name, name, "import path")
        try:
            return entry.load(), entry
        except ImportPathError as exc:
            if entry.origin == "import path":
                near = did_you_mean(name, self.entries(), noun="Registered names")
                message = f"unknown callback {name!r}: not a registered name, and {exc}. {near}"
            else:
                message = (
                    f"callback {name!r} ({entry.origin}: {entry.import_path}) "
                    f"cannot be imported: {exc}"
                )
            raise ConfigError.at(source, key_path, message) from None

    def _read_entry_points(self) -> None:
        self._entry_points_read = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self._group or ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            origin = "entry point"
            if dist is not None:
                origin = f"entry point from {dist.metadata['Name']} {dist.version}"
            existing = self._entries.get(ep.name)
            if existing is not None:
                logger.warning(
                    "callbridge: the entry point %r (%s) is ignored: the name is already taken "
                    "(%s: %s). Rename the entry point, or unregister the other name first.",
                    ep.name,
                    origin,
                    existing.origin,
                    existing.import_path,
                )
                continue
            self._entries[ep.name] = RegistryEntry(ep.name, ep.value, origin)


_default = Registry(BUILTINS)


def default_registry() -> Registry:
    """The registry that ``register``, ``callback_plugin``, ``build`` and the CLI use."""
    return _default


@contextmanager
def use_registry(registry: Registry | None = None) -> Iterator[Registry]:
    """Swap the default registry for a copy (or ``registry``) within a ``with`` block."""
    global _default
    previous = _default
    _default = registry if registry is not None else previous.copy()
    try:
        yield _default
    finally:
        _default = previous


def register(name: str, obj: Any, *, replace: bool = False) -> None:
    """Register a callback class or factory under ``name`` in the default registry.

    Raises:
        RegistrationError: the name is taken (pass ``replace=True``) or ``obj`` is not callable.
    """
    _default.register(name, obj, replace=replace)


def callback_plugin(name: str, *, replace: bool = False) -> Callable[[T], T]:
    """Decorator registering a class or factory under ``name`` in the default registry."""

    def decorate(obj: T) -> T:
        _default.register(name, obj, replace=replace)
        return obj

    return decorate


# Trust: a configuration names code, and callbridge calls what it names. A file may come from
# a pull request, a shared training recipe or a hub repository, so an import path is trusted
# only when what it leads to says, by its type, that calling it makes a callback.


def is_callback_class(obj: Any) -> bool:
    """A ``callbridge.Callback`` subclass, or a framework's native callback class.

    A native class is judged without importing any framework: some class in its MRO is
    named ``...Callback`` and defined in a registered framework's package (``transformers``,
    ``trl``, ``lightning``, ``pytorch_lightning``; see ``register_framework``).
    """
    if not isinstance(obj, type):
        return False
    from ._protocol import Callback

    if issubclass(obj, Callback):
        return True
    from ._session import _FRAMEWORKS  # registered frameworks (imported late: no cycle)

    roots = {root for framework in _FRAMEWORKS.values() for root in framework.module_roots}
    return any(
        klass.__name__.endswith("Callback")
        and str(getattr(klass, "__module__", "")).partition(".")[0] in roots
        for klass in obj.__mro__
    )


def _is_callback_type(annotation: Any, expected: Any) -> bool:
    """Whether a return annotation promises a callback (or what the parameter expects)."""
    import types
    import typing

    if annotation is None or annotation is type(None):
        return False
    args = typing.get_args(annotation)
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        return bool(members) and all(_is_callback_type(a, expected) for a in members)
    return is_callback_class(annotation) or _is_expected(annotation, expected)


def _is_expected(obj: Any, expected: Any) -> bool:
    """Whether the class ``obj`` is what a parameter annotated ``expected`` takes."""
    import types
    import typing

    if typing.get_origin(expected) in (typing.Union, types.UnionType):  # Optional[X], X | Y
        return any(_is_expected(obj, member) for member in typing.get_args(expected))
    return (
        isinstance(obj, type)
        and isinstance(expected, type)
        and expected not in (object, type(None))
        and issubclass(obj, expected)
    )


def _return_annotation(func: Any) -> Any:
    import typing

    try:
        return typing.get_type_hints(func).get("return")
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved promises nothing
        return None


def _what(obj: Any) -> str:
    import inspect

    if inspect.ismodule(obj):
        return "a module"
    if isinstance(obj, type):
        return "a class that is not a callback class"
    if inspect.isbuiltin(obj):
        return "a built-in function"
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return "a function whose return annotation names no callback class"
    return describe(obj)


def trust_problem(obj: Any, entry: RegistryEntry, expected: Any = None) -> str | None:
    """Why ``obj``, found for ``entry``, must not be called from a configuration (None: it may).

    The rule: a name registered in code (``register``, ``@callback_plugin``), a built-in or a
    package's entry point is trusted as its author declared it. An import path must lead to a
    callback class (a ``callbridge.Callback`` subclass or a framework's native callback class),
    or to a function whose return annotation is one; a nested entry may also lead to a
    subclass of the type its parameter is annotated with (``expected``). Anything else
    (``os.system``, ``sys.exit``, ``subprocess.Popen``, a constant) is refused, and nothing
    of it has been called: only its module was imported.
    """
    if entry.origin != "import path":
        return None
    import inspect

    if is_callback_class(obj) or _is_expected(obj, expected):
        return None
    if (inspect.isfunction(obj) or inspect.ismethod(obj)) and _is_callback_type(
        _return_annotation(obj), expected
    ):
        return None
    return (
        f"{entry.name!r} is {_what(obj)}; callbridge calls from a configuration only callback "
        "classes (callbridge.Callback subclasses, Hugging Face or Lightning callbacks) and "
        "functions annotated to return one. Name such a class, annotate the factory's return "
        "type, or register the factory in code with callbridge.register(name, factory)"
    )
