"""Binding a configuration's callbacks to one trainer: what every adapter shares.

An adapter calls :func:`bind`, puts one native callback per segment (a run of
consecutive neutral callbacks) where the configuration lists them, reports what
its trainer did to the session's :class:`~callbridge._contract.Contract`, and
delivers the resulting neutral events with :meth:`Session.deliver`. Event order,
state definitions, error policy, rank filtering, the error summary, stable state
keys and the point at which a stop request is reduced across ranks all live
here, so that they cannot drift between frameworks. A new adapter (Keras,
Accelerate loops, Composer) registers its framework with
:func:`register_framework` and needs nothing else from the core.
"""

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ._build import Built, build_entries, config_view
from ._contract import Contract
from ._dispatch import Dispatcher
from ._errors import ConfigError, Problem
from ._native import isolate_natives
from ._protocol import HOOKS, Callback, Control, ErrorSummary, Run
from ._record import Record
from ._registry import Registry
from ._sources import load
from ._spec import CallbacksConfig

logger = logging.getLogger("callbridge")


class Framework(Record):
    """A trainer framework an adapter serves.

    Attributes:
        name: the short name (``run.framework``).
        title: how messages name it.
        module_roots: top-level packages whose classes are its native callbacks.
        adapter: the adapter's import name, for hints.
    """

    __slots__ = ("adapter", "module_roots", "name", "title")

    def __init__(self, name: str, title: str, module_roots: tuple[str, ...], adapter: str) -> None:
        self.name = name
        self.title = title
        self.module_roots = module_roots
        self.adapter = adapter


_FRAMEWORKS: dict[str, Framework] = {}


def register_framework(framework: Framework) -> None:
    """Make a framework known, so that its native callbacks are recognised everywhere."""
    _FRAMEWORKS[framework.name] = framework


register_framework(
    Framework(
        "hf", "Hugging Face Trainer (transformers / TRL)", ("transformers", "trl"), "callbridge_hf"
    )
)
register_framework(
    Framework(
        "lightning", "PyTorch Lightning", ("lightning", "pytorch_lightning"), "callbridge_lightning"
    )
)


def native_framework(obj: Any) -> Framework | None:
    """The framework whose callback ``obj`` is, judged by its classes' modules.

    Nothing is imported to judge.
    """
    for klass in type(obj).__mro__:
        root = klass.__module__.partition(".")[0]
        for framework in _FRAMEWORKS.values():
            if root in framework.module_roots:
                return framework
    return None


#: Hooks after which no stop request needs to reach the other ranks.
NO_REDUCE: frozenset[str] = frozenset({"on_train_end", "on_exception"})

#: Version of the state a session saves (``Session.state_dict``).
STATE_VERSION = 2


class Session:
    """The neutral callbacks of one configuration, bound to one trainer.

    The contract with an adapter: it reports what its trainer did through
    :attr:`contract` (``session.contract.step_end(...)``), then calls
    :meth:`deliver` for each segment (a run of consecutive neutral callbacks in
    the configuration, one native callback each, so that native callbacks keep
    their configured places); after the last segment, where :meth:`must_reduce`
    says so and the run is distributed, it reduces the stop flag across ranks and
    reports a stop with ``contract.request_stop()``. The events and the hooks
    that need a reduction are the same on every rank, whatever fails on one, so
    a collective placed there is entered by all ranks or by none.

    Attributes:
        framework: the adapter's framework name.
        config: the configuration they came from.
        entries: the neutral callbacks, in order.
        run: the one :class:`Run` every hook receives; ``run.config`` is the
            resolved configuration of every built entry, natives included.
        contract: orders the events and owns ``run.state``.
        dispatcher: calls hooks under the configured error policy.
        tag: names this session's saved state (the same for the same entries).
    """

    def __init__(
        self,
        framework: str,
        config: CallbacksConfig,
        entries: list[Built],
        view: dict[str, Any],
    ) -> None:
        self.framework = framework
        self.config = config
        self.entries = entries
        self.dispatcher = Dispatcher(
            [(b.label, b.callback) for b in entries],
            on_error=config.callback_errors,
            max_failures=config.callback_max_failures,
        )
        self.run = Run(framework, config=view, errors=self.dispatcher.errors)
        self.contract = Contract(self.run)
        # Fixed at bind time, identical on every rank whatever fails later.
        self._reduce = frozenset(
            hook
            for hook in HOOKS
            if hook not in NO_REDUCE
            and any(self.dispatcher.implements(i, hook) for i in range(len(entries)))
        )
        self.requests = Control()
        self._ended = False
        self.tag = _digest(",".join(b.key for b in entries))
        # A callback that operates the run itself (the ``control`` built-in) gets the session.
        for built in entries:
            bind_session = getattr(built.callback, "bind_session", None)
            if callable(bind_session):
                bind_session(self)

    @property
    def training(self) -> bool:
        """Between train begin and train end (or an exception)."""
        return self.contract.training

    def take(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The events the last fact queued; the contract starts a new list."""
        events = self.contract.events
        self.contract.events = []
        return events

    def deliver(
        self, events: list[tuple[str, tuple[Any, ...]]], start: int = 0, stop: int | None = None
    ) -> Control:
        """Call ``events`` on the callbacks ``entries[start:stop]``, in order.

        Each event starts with the save/evaluate/log requests cleared and
        ``should_stop`` showing whether a stop was requested in this run.

        Returns:
            The requests the callbacks made (``should_stop`` included), for the
            adapter to map onto its trainer.
        """
        return deliver(self.contract, self.dispatcher, events, self.requests, start, stop)

    def must_reduce(self, events: list[tuple[str, tuple[Any, ...]]]) -> bool:
        """Whether the adapter reduces the stop flag across ranks after these events."""
        return self.contract.training and any(hook in self._reduce for hook, _ in events)

    def begin(self) -> None:
        """A run starts (each ``train``/``fit``): failures, disabled callbacks and summary reset."""
        self._ended = False
        self.dispatcher.reset()
        self.run.errors = self.dispatcher.errors

    def end(self) -> ErrorSummary:
        """The run ended: log the error summary once (after the last train-end or exception)."""
        if not self._ended:
            self._ended = True
            self.dispatcher.end()
        return self.dispatcher.errors

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Every neutral callback's state, filed under its stable key with its arguments' digest."""
        entries: dict[str, Any] = {}
        for built in self.entries:
            state = built.callback.state_dict()
            if state:
                entries[built.key] = {
                    "name": built.spec.name,
                    "args": _args_digest(built),
                    "state": state,
                }
        return {"version": STATE_VERSION, "entries": entries} if entries else {}

    def load_state_dict(self, data: Mapping[str, Any], *, where: str = "the checkpoint") -> None:
        """Give each neutral callback the state saved for it.

        An entry finds its state under its key (its ``id``, or its name); when the
        arguments saved with that state differ and another saved entry of the same
        name has this entry's arguments (the configuration was reordered), that one
        is used, and a message names both. A state that no entry takes is reported.
        """
        saved: dict[str, Any] = dict(data.get("entries", {})) if data else {}
        if not saved:
            return
        pending: list[Built] = []
        used: set[str] = set()
        for built in self.entries:
            record = saved.get(built.key)
            if record is not None and record.get("args") == _args_digest(built):
                built.callback.load_state_dict(record["state"])
                used.add(built.key)
            else:
                pending.append(built)
        for built in pending:
            digest = _args_digest(built)
            moved = [
                key
                for key, record in saved.items()
                if key not in used
                and record.get("name") == built.spec.name
                and record.get("args") == digest
            ]
            if len(moved) == 1:
                key = moved[0]
                logger.warning(
                    "callbridge: %s takes the state saved under %r in %s (same arguments; the "
                    "entries were reordered). Give entries an 'id' to file their state.",
                    built.label,
                    key,
                    where,
                )
            elif built.key in saved and built.key not in used:
                key = built.key
                logger.warning(
                    "callbridge: %s takes the state saved under %r in %s, which was saved by "
                    "an entry with other arguments. Give entries an 'id' to file their state.",
                    built.label,
                    key,
                    where,
                )
            else:
                if type(built.callback).state_dict is not Callback.state_dict:
                    logger.warning(
                        "callbridge: no saved state for %s in %s (found: %s); it starts afresh.",
                        built.label,
                        where,
                        ", ".join(sorted(set(saved) - used)) or "none left",
                    )
                continue
            built.callback.load_state_dict(saved[key]["state"])
            used.add(key)
        left = sorted(set(saved) - used)
        if left:
            logger.warning(
                "callbridge: %s holds state for %s, which no entry of this configuration "
                "takes; it is ignored.",
                where,
                ", ".join(repr(key) for key in left),
            )


def deliver(
    contract: Contract,
    dispatcher: Dispatcher,
    events: list[tuple[str, tuple[Any, ...]]],
    requests: Control,
    start: int = 0,
    stop: int | None = None,
) -> Control:
    """Call ``events`` on the dispatcher's callbacks ``[start:stop]``; the requests they made.

    Each event starts with the save/evaluate/log requests cleared and ``should_stop``
    showing whether a stop was requested in this run; a stop request is recorded in
    ``contract`` at once, so that the next event shows it.
    """
    run = contract.run
    control = run.control
    requests.should_stop = requests.should_save = False
    requests.should_evaluate = requests.should_log = False
    whole = start == 0 and (stop is None or stop >= len(dispatcher.callbacks))
    for hook, args in events:
        if not dispatcher.has(hook):
            continue
        control.should_stop = contract.stop_requested
        control.should_save = control.should_evaluate = control.should_log = False
        if whole:
            dispatcher.call(hook, run, *args)
        else:
            dispatcher.call_range(hook, run, start, stop, *args)
        if control.should_stop:
            contract.stop_requested = requests.should_stop = True
        requests.should_save |= control.should_save
        requests.should_evaluate |= control.should_evaluate
        requests.should_log |= control.should_log
    return requests


def _digest(text: str) -> str:
    import hashlib  # at use: not on the import path of the core

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _args_digest(built: Built) -> str:
    """A digest of an entry's arguments as written (``${VAR}`` unresolved: no secret inside)."""
    import json

    return _digest(json.dumps([built.spec.name, built.spec.args], sort_keys=True, default=repr))


class Binding(Record):
    """What :func:`bind` returns: the session and every callback in configured order.

    ``items`` pairs each built object with its neutral index (None for a native
    callback that passes straight through).
    """

    __slots__ = ("items", "session")

    def __init__(self, session: Session, items: list[tuple[Built, int | None]]) -> None:
        self.session = session
        self.items = items

    __hash__ = None  # type: ignore[assignment]  # holds a list

    def layout(self) -> list[Built | range]:
        """The configuration in order: native callbacks, and runs of neutral ones as ranges.

        An adapter places one native callback per range (a segment), which
        delivers the session's events to ``session.entries[range]``.
        """
        out: list[Built | range] = []
        for built, index in self.items:
            if index is None:
                out.append(built)
            elif out and isinstance(out[-1], range) and out[-1].stop == index:
                out[-1] = range(out[-1].start, index + 1)
            else:
                out.append(range(index, index + 1))
        return out


def bind(
    source: Any,
    *,
    framework: str,
    inject: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    adopt: Callable[[Built], Callback | None] | None = None,
) -> Binding:
    """Build a configuration for one framework and split neutral from native callbacks.

    Args:
        source: anything :func:`callbridge.load` takes.
        framework: the adapter's framework name.
        inject: context objects for the constructors, by parameter name.
        registry: where names resolve (the default registry when None).
        adopt: the adapter's way to run a native callback of another framework: it
            returns a neutral callback that drives it (which then takes the entry's
            place, state key and error policy), or None to refuse it as usual. The
            core stays framework-free: the adapter knows the other framework.

    Raises:
        ConfigError: the configuration is invalid (or, when strict, a callback fails
            to build), or it holds a native callback of another framework, or an
            object that is no callback at all.
    """
    target = _FRAMEWORKS[framework]
    config = load(source)
    built = build_entries(config, inject=inject, registry=registry)
    neutral: list[Built] = []
    items: list[tuple[Built, int | None]] = []
    problems: list[Problem] = []
    for entry in built:
        obj = entry.callback
        if isinstance(obj, Callback):
            items.append((entry, len(neutral)))
            neutral.append(entry)
            continue
        owner = native_framework(obj)
        if owner is not None and owner.name == target.name:
            items.append((entry, None))
            continue
        adopted = adopt(entry) if owner is not None and adopt is not None else None
        if adopted is not None:
            entry = Built(entry.spec, adopted, entry.key, entry.plan)
            items.append((entry, len(neutral)))
            neutral.append(entry)
            continue
        if owner is not None:
            message = (
                f"{entry.spec.name!r} is a {owner.title} callback, but this config is being "
                f"attached to {target.title}. Use it with {owner.adapter}, or declare a "
                "neutral callbridge callback that runs under both"
            )
        else:
            message = (
                f"{entry.spec.name!r} built "
                f"{type(obj).__module__}.{type(obj).__qualname__}, which is "
                f"neither a callbridge.Callback nor a {target.title} callback"
            )
        problems.append(Problem(entry.spec.source, entry.spec.key_path, message))
    if problems:
        raise ConfigError(problems)
    # Natives and neutral callbacks alike: the run's view of its configuration is whole.
    view = config_view(config, built)
    session = Session(framework, config, neutral, view)
    # The error policy covers native callbacks too, without changing their type.
    isolate_natives([b for b, index in items if index is None], session)
    return Binding(session, items)
