"""callbridge: write a training callback once, declare it in config, run it under any trainer."""

from ._build import Built, build, build_entries, check
from ._dispatch import Dispatcher
from ._errors import CallbridgeError, ConfigError, Problem
from ._protocol import HOOKS, Callback, Control, ErrorSummary, Run, TrainState
from ._registry import (
    RegistrationError,
    Registry,
    RegistryEntry,
    callback_plugin,
    default_registry,
    register,
)
from ._session import Binding, Framework, Session, bind, native_framework, register_framework
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

# Tracebacks and reprs show the public name (callbridge.ConfigError), as httpx does.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("callbridge._"):
        _obj.__module__ = "callbridge"
del _name, _obj
