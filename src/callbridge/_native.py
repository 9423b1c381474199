"""The error policy for native callbacks: a raising ``TrainerCallback`` or Lightning ``Callback``.

A native callback of the configuration passes straight through to its trainer, which
calls its hooks itself. To isolate its exceptions like a neutral callback's, each
hook its class overrides is shadowed by an instance attribute that calls the
original under the session's :class:`~callbridge._dispatch.Dispatcher` policy: the
failure is logged once per hook, counted in the run's error summary, the callback is
disabled after ``callback_max_failures`` under ``disable``, and re-raised under
``raise``. The object keeps its class, so code that finds callbacks by type
(``trainer.pop_callback(EarlyStoppingCallback)``, ``isinstance``) keeps working, and
both trainers look hooks up on the instance (``getattr(callback, event)``), so they
call the shadow. Nothing of the frameworks is imported here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._dispatch import _Slot

if TYPE_CHECKING:
    from ._build import Built
    from ._dispatch import Dispatcher

#: The frameworks' callback base classes, by module and name: a hook a class inherits
#: from one of them unchanged is a no-op, and is left alone.
BASES: frozenset[tuple[str, str]] = frozenset(
    {
        ("transformers.trainer_callback", "TrainerCallback"),
        ("lightning.pytorch.callbacks.callback", "Callback"),
        ("pytorch_lightning.callbacks.callback", "Callback"),
    }
)

#: The attribute a shadowed hook carries: the original bound method.
ORIGINAL = "__callbridge_original__"


def _base(obj: Any) -> type | None:
    for klass in type(obj).__mro__:
        if (klass.__module__, klass.__qualname__) in BASES:
            return klass
    return None


def overridden_hooks(obj: Any) -> list[str]:
    """The framework hooks (``on_*``) that ``obj``'s class overrides, in the base's order."""
    base = _base(obj)
    if base is None:
        return []
    klass = type(obj)
    return [
        name
        for name, noop in vars(base).items()
        if name.startswith("on_") and callable(noop) and getattr(klass, name, noop) is not noop
    ]


def isolate(obj: Any, label: str, dispatcher: Callable[[], Dispatcher]) -> list[str]:
    """Shadow each overridden hook of ``obj`` with one that applies the error policy.

    Args:
        obj: the native callback (its class is not changed).
        label: how the summary and the logs name it (its spec's label).
        dispatcher: returns the session's dispatcher at call time (a new run may reset it).

    Returns:
        The hooks shadowed.
    """
    hooks = overridden_hooks(obj)
    for hook in hooks:
        original = getattr(obj, hook)
        if getattr(original, ORIGINAL, None) is not None:
            continue  # already isolated (the same object bound twice)
        setattr(obj, hook, _shadow(obj, label, hook, original, dispatcher))
    return hooks


def _shadow(
    obj: Any, label: str, hook: str, original: Any, dispatcher: Callable[[], Dispatcher]
) -> Any:
    slot = _Slot(label, obj, original)

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        current = dispatcher()
        if label in current._disabled:
            return None
        try:
            return original(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - isolation: the dispatcher's policy decides
            current._failed(slot, hook, exc)  # re-raises under callback_errors = 'raise'
            return None

    setattr(guarded, ORIGINAL, original)
    return guarded


def isolate_natives(natives: Iterable[Built], dispatcher: Callable[[], Dispatcher]) -> None:
    """Apply the error policy to every native callback of a binding.

    The frameworks' own callbacks (``transformers.EarlyStoppingCallback``...) are
    isolated too: the policy covers every callback of the configuration.

    Args:
        natives: the built native entries.
        dispatcher: returns the session's dispatcher at call time.
    """
    for built in natives:
        isolate(built.callback, built.label, dispatcher)
