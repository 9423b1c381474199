"""callbridge: write a training callback once, declare it in config, run it under any trainer.

The facade loads its implementation modules on first use (PEP 562): ``import callbridge``
costs a few milliseconds, and a command such as ``callbridge --version`` never pays for
attrs. ``from callbridge import Callback`` and ``callbridge.Callback`` work as always.
"""

import typing as _typing

from ._errors import CallbridgeError, ConfigError, Problem

if _typing.TYPE_CHECKING:
    from ._build import Built, build, build_entries, check
    from ._dispatch import Dispatcher
    from ._protocol import HOOKS, Callback, Control, ErrorSummary, NativeObjects, Run, TrainState
    from ._registry import (
        RegistrationError,
        Registry,
        RegistryEntry,
        callback_plugin,
        default_registry,
        register,
    )
    from ._session import (
        Binding,
        Framework,
        Session,
        bind,
        native_framework,
        register_framework,
    )
    from ._sources import load
    from ._spec import CallbacksConfig, CallbackSpec

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 - plain sorted() order, asserted by tests/core/test_facade.py
    "Binding",
    "Built",
    "Callback",
    "CallbackSpec",
    "CallbacksConfig",
    "CallbridgeError",
    "ConfigError",
    "Control",
    "Dispatcher",
    "ErrorSummary",
    "Framework",
    "HOOKS",
    "NativeObjects",
    "Problem",
    "RegistrationError",
    "Registry",
    "RegistryEntry",
    "Run",
    "Session",
    "TrainState",
    "__version__",
    "bind",
    "build",
    "build_entries",
    "callback_plugin",
    "check",
    "default_registry",
    "load",
    "native_framework",
    "register",
    "register_framework",
]

# Where each lazily loaded public name lives (the module inside this package).
_LAZY = {
    "Binding": "_session",
    "Built": "_build",
    "Callback": "_protocol",
    "CallbackSpec": "_spec",
    "CallbacksConfig": "_spec",
    "Control": "_protocol",
    "Dispatcher": "_dispatch",
    "ErrorSummary": "_protocol",
    "Framework": "_session",
    "HOOKS": "_protocol",
    "NativeObjects": "_protocol",
    "RegistrationError": "_registry",
    "Registry": "_registry",
    "RegistryEntry": "_registry",
    "Run": "_protocol",
    "Session": "_session",
    "TrainState": "_protocol",
    "bind": "_session",
    "build": "_build",
    "build_entries": "_build",
    "callback_plugin": "_registry",
    "check": "_build",
    "default_registry": "_registry",
    "load": "_sources",
    "native_framework": "_session",
    "register": "_registry",
    "register_framework": "_session",
}


def _public(obj: _typing.Any) -> _typing.Any:
    """Tracebacks and reprs show the public name (callbridge.ConfigError), as httpx does."""
    if getattr(obj, "__module__", "").startswith("callbridge._"):
        obj.__module__ = "callbridge"
    return obj


def __getattr__(name: str) -> _typing.Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'callbridge' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{module_name}", __name__)
    # Every public name of that module at once: later lookups are plain attribute reads.
    for public, home in _LAZY.items():
        if home == module_name:
            globals()[public] = _public(getattr(module, public))
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


for _obj in (CallbridgeError, ConfigError, Problem):
    _public(_obj)
del _obj
