"""Binding a configuration's callbacks to one trainer: what every adapter shares.

An adapter calls :func:`bind`, wraps each neutral callback in one native
callback (so native and neutral callbacks keep the configured order), and
forwards each framework hook to :meth:`Session.call`. Ordering, error policy,
rank filtering, the error summary, the per-instance state keys and the point at
which a stop request is reduced across ranks all live here, so that they cannot
drift between frameworks. A new adapter (Keras, Accelerate loops, Composer)
registers its framework with :func:`register_framework` and needs nothing else
from the core.
"""

from collections.abc import Mapping
from typing import Any

from ._build import Built, build_entries, config_view
from ._dispatch import Dispatcher
from ._native import isolate_natives
from ._errors import ConfigError, Problem
from ._protocol import HOOKS, Callback, ErrorSummary, Run
from ._record import Record
from ._registry import Registry
from ._sources import load
from ._spec import CallbacksConfig


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


class Session:
    """The neutral callbacks of one configuration, bound to one trainer run.

    The contract with an adapter: for the callback at ``index``, the adapter acts on
    the hooks in :meth:`hooks_of` (and may skip every other one at no cost); after
    calling one, it maps ``run.control`` back, and where the hook is in
    :meth:`reduce_hooks_of` and the run is distributed, it reduces the stop flag
    across ranks. Both sets are fixed at bind time, identical on every rank, so that
    a callback that fails (or is disabled) on one rank only cannot leave the others
    waiting in a collective.

    Attributes:
        framework: the adapter's framework name.
        config: the configuration they came from.
        entries: the neutral callbacks, in order; adapters refer to them by index.
        run: the one :class:`Run` every hook receives (adapters update its state);
            ``run.config`` is the ``view`` it was given: the resolved configuration of
            every built entry, natives included.
        dispatcher: calls hooks under the configured error policy.
        training: between :meth:`begin` and :meth:`end`.
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
        self.run = Run(
            framework,
            config=view,
            errors=self.dispatcher.errors,
        )
        # Fixed at bind time, identical on every rank whatever fails later, so that a
        # collective reduction placed here is entered by all ranks or by none.
        self._hooks = [
            frozenset(h for h in HOOKS if self.dispatcher.implements(i, h))
            for i in range(len(entries))
        ]
        self._last: dict[str, int] = {}
        for index, hooks in enumerate(self._hooks):
            for hook in hooks:
                self._last[hook] = index
        self.training = False
        self._ended = False

    def call(self, index: int, hook: str, *args: Any) -> None:
        """Call ``hook`` on the neutral callback at ``index`` with the shared run."""
        self.dispatcher.call_one(index, hook, self.run, *args)

    def implements(self, index: int, hook: str) -> bool:
        """Whether the callback at ``index`` implements ``hook`` (as bound at bind time)."""
        return hook in self._hooks[index]

    def hooks_of(self, index: int) -> frozenset[str]:
        """The hooks the callback at ``index`` implements: the only ones its adapter must act on."""
        return self._hooks[index]

    def reduce_hooks_of(self, index: int) -> frozenset[str]:
        """The hooks after which the adapter reduces the stop flag across ranks, for ``index``."""
        return frozenset(
            hook for hook, last in self._last.items() if last == index and hook not in NO_REDUCE
        )

    def is_reduce_point(self, index: int, hook: str) -> bool:
        """Whether the adapter should reduce ``control.should_stop`` across ranks after this call.

        True for the last neutral callback implementing ``hook``: one collective per
        hook, after every neutral callback had its say, and on every rank alike.
        """
        return self._last.get(hook) == index

    def state_key(self, index: int) -> str:
        """A key unique per callback instance in this configuration, stable across runs."""
        return f"callbridge[{self.entries[index].key}]"

    def begin(self) -> None:
        """A run starts (each ``train``/``fit``): failures, disabled callbacks and summary reset."""
        self.training = True
        self._ended = False
        self.dispatcher.reset()
        self.run.errors = self.dispatcher.errors

    def end(self) -> ErrorSummary:
        """The run ended: log the error summary once (after the last train-end or exception)."""
        self.training = False
        if not self._ended:
            self._ended = True
            self.dispatcher.end()
        return self.dispatcher.errors


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


def bind(
    source: Any,
    *,
    framework: str,
    inject: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
) -> Binding:
    """Build a configuration for one framework and split neutral from native callbacks.

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
    isolate_natives([b for b, index in items if index is None], lambda: session.dispatcher)
    return Binding(session, items)
