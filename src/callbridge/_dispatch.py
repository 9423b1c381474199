"""Calling hooks: list order, rank-zero-only, per-callback exception isolation, error summary.

Every adapter calls hooks through :class:`Dispatcher`, so ordering, error policy
and rank filtering cannot drift between frameworks.
"""

import logging
from collections.abc import Sequence
from typing import Any

from ._protocol import HOOKS, Callback, ErrorSummary, Run
from ._spec import ON_ERROR_CHOICES, OnError

logger = logging.getLogger("callbridge")

_BASE_HOOKS = {hook: getattr(Callback, hook) for hook in HOOKS}


class _Slot:
    """One callback's bound hook, with what the dispatcher needs to skip or blame it."""

    __slots__ = ("callback", "label", "method", "rank_zero_only")

    def __init__(self, label: str, callback: Any, method: Any) -> None:
        self.label = label
        self.callback = callback
        self.method = method
        self.rank_zero_only = bool(getattr(callback, "rank_zero_only", False))


class Dispatcher:
    """Calls one hook on every callback that implements it, in list order.

    Args:
        callbacks: ``(label, callback)`` pairs; labels name callbacks in logs.
        on_error: ``log`` (log once per callback and hook, count, go on),
            ``disable`` (as log, and turn a callback off after ``max_failures``),
            or ``raise`` (re-raise out of the trainer).
        max_failures: failures before ``disable`` turns a callback off.
    """

    def __init__(
        self,
        callbacks: Sequence[tuple[str, Any]],
        *,
        on_error: OnError = "log",
        max_failures: int = 3,
    ) -> None:
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES} (got {on_error!r})")
        self.callbacks = list(callbacks)
        self.on_error = on_error
        self.max_failures = max_failures
        self.errors = ErrorSummary()
        self._failures: dict[str, int] = {}
        self._disabled: set[str] = set()
        self._off: set[str] = set()  # turned off by an operator (``control``), kept across runs
        self._slots: dict[str, tuple[_Slot, ...]] = {}
        self._index()

    def _index(self) -> None:
        # Only callbacks that override a hook are called for it: a no-op costs nothing.
        self._table: list[dict[str, _Slot]] = []
        for label, callback in self.callbacks:
            row: dict[str, _Slot] = {}
            if label not in self._disabled and label not in self._off:
                for hook in HOOKS:
                    impl = getattr(type(callback), hook, None)
                    if impl is not None and impl is not _BASE_HOOKS[hook]:
                        row[hook] = _Slot(label, callback, getattr(callback, hook))
            self._table.append(row)
        for hook in HOOKS:
            self._slots[hook] = tuple(row[hook] for row in self._table if hook in row)

    def has(self, hook: str) -> bool:
        """Whether any callback implements ``hook`` (adapters skip building a Run otherwise)."""
        return bool(self._slots[hook])

    def implements(self, index: int, hook: str) -> bool:
        """Whether the callback at ``index`` implements ``hook`` (and is not disabled)."""
        return hook in self._table[index]

    def call(self, hook: str, run: Run, *args: Any) -> None:
        """Call ``hook(run, *args)`` on each callback that implements it."""
        main = run.state.is_main_process
        for slot in self._slots[hook]:
            if slot.rank_zero_only and not main:
                continue
            try:
                slot.method(run, *args)
            except Exception as exc:  # noqa: BLE001 - isolation: the policy in _failed decides
                self._failed(slot, hook, exc)

    def call_range(self, hook: str, run: Run, start: int, stop: int | None, *args: Any) -> None:
        """:meth:`call` restricted to the callbacks at ``start <= index < stop``."""
        for index in range(start, len(self._table) if stop is None else stop):
            self.call_one(index, hook, run, *args)

    def call_one(self, index: int, hook: str, run: Run, *args: Any) -> None:
        """Call ``hook`` on the callback at ``index`` only, under the same policy as :meth:`call`.

        Adapters that give each neutral callback its own native wrapper use this, so
        that neutral and native callbacks keep their places in the configured order.
        """
        slot = self._table[index].get(hook)
        if slot is None or (slot.rank_zero_only and not run.state.is_main_process):
            return
        try:
            slot.method(run, *args)
        except Exception as exc:  # noqa: BLE001 - isolation: the policy in _failed decides
            self._failed(slot, hook, exc)

    def call_fact(self, index: int, hook: str, method: Any, *args: Any) -> None:
        """Call ``method(*args)`` for the callback at ``index`` under the same policy.

        For what an adapter tells one callback beyond the neutral hooks (the Lightning
        adapter's micro-batch and optimizer facts for a foreign callback): a failure is
        blamed on that callback and ``hook``, counted, logged, disabling or raised as
        for a neutral hook; a disabled callback is not called.
        """
        label, callback = self.callbacks[index]
        if label in self._disabled:
            return
        try:
            method(*args)
        except Exception as exc:  # noqa: BLE001 - isolation: the policy in _failed decides
            self._failed(_Slot(label, callback, method), hook, exc)

    def _failed(self, slot: _Slot, hook: str, exc: Exception) -> None:
        key = (slot.label, hook)
        count = self.errors.counts.get(key, 0) + 1
        self.errors.counts[key] = count
        if self.on_error == "raise" and hook != "on_exception":
            raise exc
        if count == 1:
            logger.error(
                "callbridge: callback %s raised in %s (later errors of this hook are counted, "
                "not logged; callback_errors = 'raise' makes them stop training)",
                slot.label,
                hook,
                exc_info=exc,
            )
        failures = self._failures.get(slot.label, 0) + 1
        self._failures[slot.label] = failures
        if self.on_error == "disable" and failures >= self.max_failures:
            if getattr(slot.callback, "in_collectives", False):
                # Off on this rank only, it would leave the other ranks waiting in its
                # collectives for ever: it stays on, its errors counted.
                if failures == self.max_failures:
                    logger.error(
                        "callbridge: callback %s is not disabled after %d failures: its hooks "
                        "take part in collectives across ranks, and disabling it on one rank "
                        "would leave the others waiting; its errors are still counted",
                        slot.label,
                        failures,
                    )
                return
            self._disabled.add(slot.label)
            self.errors.disabled.append(slot.label)
            logger.error(
                "callbridge: disabled callback %s after %d failures; "
                "it is not called again this run",
                slot.label,
                failures,
            )
            self._index()

    def set_enabled(self, label: str, enabled: bool) -> None:
        """Turn the callback labelled ``label`` off or back on (a command to a running run)."""
        if enabled:
            self._off.discard(label)
        else:
            self._off.add(label)
        self._index()

    def reset(self) -> None:
        """Forget failures, disabled callbacks and the summary: a new run starts."""
        self.errors = ErrorSummary()
        self._failures = {}
        if self._disabled:
            self._disabled = set()
            self._index()

    def end(self) -> ErrorSummary:
        """Log the run's error summary (once, at train end) and return it."""
        if self.errors.counts:
            logger.warning("%s", self.errors)
        return self.errors
