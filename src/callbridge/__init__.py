"""callbridge: write a training callback once, declare it in config, run it under any trainer."""

from ._build import Built, build, build_entries, check
from ._dispatch import Dispatcher, ErrorSummary
from ._errors import CallbridgeError, ConfigError, Problem
from ._protocol import HOOKS, Callback, Control, Run, TrainState
from ._registry import (
    Registry,
    RegistrationError,
    RegistryEntry,
    callback_plugin,
    default_registry,
    register,
)
from ._sources import load
from ._spec import CallbacksConfig, CallbackSpec

__version__ = "0.1.0"

__all__ = [
    "HOOKS",
    "Built",
    "CallbacksConfig",
    "CallbackSpec",
    "Callback",
    "CallbridgeError",
    "ConfigError",
    "Control",
    "Dispatcher",
    "ErrorSummary",
    "Problem",
    "RegistrationError",
    "Registry",
    "RegistryEntry",
    "Run",
    "TrainState",
    "__version__",
    "build",
    "build_entries",
    "callback_plugin",
    "check",
    "default_registry",
    "load",
    "register",
]

# Tracebacks and reprs show the public name (callbridge.ConfigError), as httpx does.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("callbridge._"):
        _obj.__module__ = "callbridge"
del _name, _obj
