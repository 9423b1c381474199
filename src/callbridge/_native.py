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

import weakref
from collections.abc import Iterable
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


def isolate(obj: Any, label: str, owner: Any) -> list[str]:
    """Shadow each overridden hook of ``obj`` with one that applies the error policy.

    Args:
        obj: the native callback (its class is not changed).
        label: how the summary and the logs name it (its spec's label).
        owner: the session whose ``dispatcher`` applies the policy (read at call time: a
            new run may replace it), or a :class:`~callbridge._dispatch.Dispatcher`.

    Returns:
        The hooks shadowed.
    """
    hooks = overridden_hooks(obj)
    for hook in hooks:
        original = getattr(obj, hook)
        if isinstance(original, Shadow):
            continue  # already isolated (the same object bound twice)
        setattr(obj, hook, Shadow(label, hook, original, owner))
    return hooks


class Shadow:
    """A native hook called under the error policy; picklable, as the callback must stay.

    Lightning's spawn-based strategies pickle the trainer with its callbacks: the shadow
    pickles as its parts (the original is a bound method of the callback, which pickle
    restores as the class's method of the restored callback).

    The shadow is an attribute of the callback, so it holds a bound method of that
    callback weakly: a strong one would put every isolated callback in a reference cycle,
    and through ``owner`` the session and the run's model with it, kept until the cycle
    collector runs instead of going with the trainer.
    """

    __slots__ = ("_original", "hook", "label", "owner")

    def __init__(self, label: str, hook: str, original: Any, owner: Any) -> None:
        self.label = label
        self.hook = hook
        self.owner = owner
        # Not a bound method (a function set on the instance): held as it is.
        is_bound = hasattr(original, "__self__") and hasattr(original, "__func__")
        self._original = weakref.WeakMethod(original) if is_bound else original

    @property
    def __wrapped__(self) -> Any:
        """The hook shadowed (None once its callback is gone)."""
        original = self._original
        return original() if isinstance(original, weakref.WeakMethod) else original

    def _dispatcher(self) -> Dispatcher:
        owner = self.owner
        found: Dispatcher = getattr(owner, "dispatcher", owner)
        return found

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        dispatcher = self._dispatcher()
        if self.label in dispatcher._disabled:
            return None
        original = self.__wrapped__
        try:
            return original(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - isolation: the dispatcher's policy decides
            slot = _Slot(self.label, getattr(original, "__self__", None), original)
            dispatcher._failed(slot, self.hook, exc)  # re-raises under 'raise'
            return None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Shadow, (self.label, self.hook, self.__wrapped__, self.owner))

    def __repr__(self) -> str:
        return f"<callbridge isolated {self.__wrapped__!r}>"


def isolate_natives(natives: Iterable[Built], owner: Any) -> None:
    """Apply the error policy to every native callback of a binding.

    The frameworks' own callbacks (``transformers.EarlyStoppingCallback``...) are
    isolated too: the policy covers every callback of the configuration.

    Args:
        natives: the built native entries.
        owner: the session whose dispatcher applies the policy.
    """
    for built in natives:
        isolate(built.callback, built.label, owner)
