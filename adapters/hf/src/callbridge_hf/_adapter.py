"""Neutral callbacks inside the Hugging Face ``Trainer`` (and TRL's trainers).

Each run of consecutive neutral callbacks in the configuration (a segment) gets
one ``TrainerCallback``, so native and neutral callbacks keep the configured
order. What HF lacks is supplied here:

* ``on_evaluate_begin``: HF has no pre-evaluation hook, so the bridge wraps the
  trainer's ``evaluate`` method (found at ``on_init_end``, or given to ``attach``).
* ``on_exception``: HF has none either; the bridge wraps ``train``.
* stop requests across ranks: HF never reduces control flags, so after the last
  neutral callback of a hook the bridge all-reduces ``should_training_stop``.
* state: the neutral callbacks' ``state_dict()``s go to one file per rank in the
  checkpoint folder, filed by stable keys, and are loaded on resume (HF's own
  stateful-callback mechanism keys state by class name, which two instances of
  one class share).

Event order and state definitions are the core's (:class:`callbridge.Session`'s
contract): the first segment reports each HF hook as a fact, every segment
delivers the resulting neutral events to its callbacks.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import weakref
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import callbridge
from callbridge import Session

logger = logging.getLogger("callbridge")

STATE_DIR = "callbridge"


class _Bridge:
    """Per-session glue to one trainer: wrapped methods, facts for the contract, state files."""

    def __init__(self, session: Session) -> None:
        self.session = session
        # Weakly: the trainer holds its callbacks, and so this bridge (see ``trainer``).
        self._trainer: weakref.ref[Trainer] | None = None
        self.resume_from: str | None = None
        self.distributed = False
        # Native callbacks the config itself declared: custom_callbacks_only never drops them.
        self.native: list[Any] = []
        # The events of the latest fact per HF hook, delivered by every segment in turn.
        self.events: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
        # What sync() refreshes only when HF hands over new objects (new run, new state).
        self._seen: tuple[Any, Any, Any] = (None, None, None)

    # -- finding and wrapping the trainer ---------------------------------------------------

    @property
    def trainer(self) -> Trainer | None:
        """The trainer these callbacks are on, held weakly: it holds them (see :func:`_route`)."""
        return None if self._trainer is None else self._trainer()

    def install(self, trainer: Trainer) -> None:
        """Route ``trainer.train`` and ``trainer.evaluate`` through this bridge; apply
        ``custom_callbacks_only``.

        See :func:`_route` for how, and why not with wrappers stored on the trainer.
        """
        if self.trainer is trainer:
            return
        self._trainer = weakref.ref(trainer)
        _route(trainer).append(self)
        if self.session.config.custom_callbacks_only:
            remove_default_display(trainer, keep=self.native)

    def around_evaluate(
        self, trainer: Trainer, evaluate: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """``trainer.evaluate``: ``evaluate_begin`` first; a standalone one's failure reported."""
        dataset = kwargs.get("eval_dataset", args[0] if args else None)
        if isinstance(trainer.eval_dataset if dataset is None else dataset, dict):
            # HF evaluates a dict of datasets by calling self.evaluate (this again) once
            # per dataset; each of those calls fires the begin hook before its on_evaluate.
            return evaluate(*args, **kwargs)
        contract = self.session.contract
        self.sync(trainer.args, trainer.state, trainer.control, trainer.model)
        # An evaluation an epoch ends with: HF runs it after on_epoch_end.
        contract.evaluate_begin()
        self.deliver_all("evaluate_begin", trainer.args, trainer.state, trainer.control)
        if contract.training:
            return evaluate(*args, **kwargs)
        try:
            return evaluate(*args, **kwargs)
        except BaseException as exc:
            # A standalone evaluation fails: on_exception, as under Lightning's validate().
            self.sync(trainer.args, trainer.state, trainer.control, trainer.model)
            contract.exception(exc)
            self.deliver_all("exception", trainer.args, trainer.state, trainer.control)
            raise

    def around_train(
        self, trainer: Trainer, train: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """``trainer.train``: the checkpoint it resumes from known; a failure reported."""
        resume = kwargs.get("resume_from_checkpoint", args[0] if args else None)
        self.resume_from = _resolve_resume(resume, trainer.args)
        try:
            return train(*args, **kwargs)
        except BaseException as exc:
            contract = self.session.contract
            if contract.training:
                self.sync(trainer.args, trainer.state, trainer.control, trainer.model)
                contract.exception(exc)
                self.deliver_all("exception", trainer.args, trainer.state, trainer.control)
                self.session.end()
            raise

    def find_trainer(self) -> None:
        """Find the Trainer calling us up the call stack (``Trainer(callbacks=...)``)."""
        if self.trainer is not None:
            return
        trainer = calling_trainer()
        if trainer is not None:
            self.install(trainer)

    # -- facts and delivery ---------------------------------------------------------------

    def sync(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any
    ) -> None:
        """What the contract does not own: the run's objects, and a native stop request.

        Outside training (a standalone evaluation) the step and epoch come from HF too.
        """
        run = self.session.run
        contract = self.session.contract
        if self._seen[0] is not state or self._seen[1] is not args or self._seen[2] is not control:
            self._seen = (state, args, control)
            run.output_dir = Path(args.output_dir) if args.output_dir else None
            # The trainer weakly (see ``trainer``): read back, it is the trainer.
            run.native = callbridge.NativeObjects(
                trainer=self._trainer, args=args, state=state, control=control
            )
            if not contract.training:
                st = run.state
                st.global_step = state.global_step
                st.epoch = float(state.epoch or 0.0)
                st.is_main_process = state.is_world_process_zero
                st.rank = args.process_index
                st.world_size = args.world_size
        if model is not None and model is not run.model:
            run.model = model
        # HF's own flow sets should_training_stop at max_steps: that is no one's request.
        if control.should_training_stop and state.global_step < (state.max_steps or 0):
            contract.request_stop()

    def deliver(
        self,
        segment: NeutralCallback,
        channel: str,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
    ) -> None:
        """Deliver the latest events of ``channel`` to one segment; reduce after the last."""
        events = self.events.get(channel)
        if not events:
            return
        requests = self.session.deliver(events, segment.start, segment.stop)
        _request(requests, control)
        if segment.last:
            self.reduce_stop(events, args, state, control)

    def deliver_all(
        self, channel: str, args: TrainingArguments, state: TrainerState, control: TrainerControl
    ) -> None:
        """Deliver a fact's events to every neutral callback at once (no native hook between)."""
        events = self.session.take()
        if events:
            _request(self.session.deliver(events), control)
            self.reduce_stop(events, args, state, control)

    def reduce_stop(
        self,
        events: list[tuple[str, tuple[Any, ...]]],
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
    ) -> None:
        """Make a stop request on any rank a stop on all (HF never reduces control flags)."""
        if self.distributed and self.session.must_reduce(events):
            control.should_training_stop = _any_rank(control.should_training_stop, args)
            if control.should_training_stop and state.global_step < (state.max_steps or 0):
                self.session.contract.request_stop()

    # -- state ------------------------------------------------------------------------------

    def state_path(self, checkpoint: str | os.PathLike[str], rank: int) -> Path:
        return Path(checkpoint) / STATE_DIR / f"rank{rank}-{self.session.tag}.pt"

    def save_state(self, args: TrainingArguments, state: TrainerState) -> None:
        data = self.session.state_dict()
        if not data:
            return
        checkpoint = _checkpoint_dir(args, state.global_step)
        path = self.state_path(checkpoint, args.process_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        os.replace(tmp, path)  # never a half-written state file

    def load_state(self, args: TrainingArguments, state: TrainerState) -> None:
        checkpoint = self.resume_from
        if checkpoint is None and state.global_step > 0:
            # Trainer(callbacks=...) without a wrapped train(): the resumed checkpoint is the
            # one whose step HF just restored.
            guess = _checkpoint_dir(args, state.global_step)
            checkpoint = str(guess) if guess.is_dir() else None
        if checkpoint is None:
            return
        path = self.state_path(checkpoint, args.process_index)
        if not path.exists():
            path = self.state_path(checkpoint, 0)  # world size changed: rank 0's state
        if path.exists():
            data = torch.load(path, map_location="cpu", weights_only=True)
            self.session.load_state_dict(data, where=str(path))


def calling_trainer() -> Trainer | None:
    """The ``Trainer`` up the call stack (its ``__init__`` calling ``on_init_end``), if any.

    The walk starts at the caller's frame: reading a frame's ``f_locals`` caches a dict
    of its variables on it, and this function's own would hold the frame variable, a
    reference cycle keeping every frame above, and the trainer in them, alive.
    """
    frame = inspect.currentframe()
    frame = frame.f_back if frame is not None else None
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer):
                return candidate
            frame = frame.f_back
    finally:
        del frame
    return None


#: Where a routed trainer keeps its bridges (and any ``train``/``evaluate`` it had on itself).
_ROUTE = "_callbridge_route"
#: The routed subclass of each trainer class, made once.
_ROUTED: dict[type[Trainer], type[Trainer]] = {}


def _route(trainer: Trainer) -> list[_Bridge]:
    """Make ``trainer.train`` and ``trainer.evaluate`` call its bridges; its list of them.

    The trainer's class becomes a subclass of its own, made once per class, of the same
    name, module and qualified name, whose ``train`` and ``evaluate`` call every bridge
    of the trainer around the class's own (the bridge attached first innermost), then
    HF's. ``isinstance`` and the class's name hold as before.

    Not wrappers stored on the trainer: one on the trainer must hold the trainer, for
    ``attach(Trainer(...), config).train()`` to find it alive, which puts the trainer in
    a reference cycle; a method of the class is bound at each call instead. The bridges
    hold the trainer weakly, so a trainer goes, with its model, optimizer and process
    group, when the script lets go of it, as without callbridge, and not with the next
    run of the cycle collector, which in a torchrun worker may be interpreter exit,
    where a gloo process group released late aborts the process ("terminate called
    without an active exception"). A ``train`` or ``evaluate`` set on the trainer itself
    before (another library's wrapper) is kept and called innermost.
    """
    route: dict[str, Any] | None = trainer.__dict__.get(_ROUTE)
    if route is None:
        route = {"bridges": [], "own": {}}
        for name in ("train", "evaluate"):
            if name in trainer.__dict__:
                route["own"][name] = trainer.__dict__.pop(name)
        trainer.__dict__[_ROUTE] = route
        trainer.__class__ = _routed(type(trainer))
    bridges: list[_Bridge] = route["bridges"]
    return bridges


def _routed(klass: type[Trainer]) -> type[Trainer]:
    if klass in _ROUTED.values():
        return klass
    if klass not in _ROUTED:

        @functools.wraps(klass.train)
        def train(self: Trainer, *args: Any, **kwargs: Any) -> Any:
            return _through(self, "train", klass, args, kwargs)

        @functools.wraps(klass.evaluate)
        def evaluate(self: Trainer, *args: Any, **kwargs: Any) -> Any:
            return _through(self, "evaluate", klass, args, kwargs)

        namespace = {
            "train": train,
            "evaluate": evaluate,
            "__module__": klass.__module__,
            "__qualname__": klass.__qualname__,
            "__doc__": klass.__doc__,
        }
        _ROUTED[klass] = type(klass.__name__, (klass,), namespace)
    return _ROUTED[klass]


def _through(
    trainer: Trainer,
    name: str,
    klass: type[Trainer],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    # No route: a trainer made from the routed class itself (``type(trainer)(...)``).
    route = trainer.__dict__.get(_ROUTE, {"bridges": [], "own": {}})
    call = route["own"].get(name) or functools.partial(getattr(klass, name), trainer)
    for bridge in route["bridges"]:
        call = functools.partial(getattr(bridge, f"around_{name}"), trainer, call)
    return call(*args, **kwargs)


def _request(requests: callbridge.Control, control: TrainerControl) -> None:
    """Requests only add to the trainer's plan: a callback cannot veto HF's own flow."""
    if requests.should_stop:
        control.should_training_stop = True
    if requests.should_save:
        control.should_save = True
    if requests.should_evaluate:
        control.should_evaluate = True
    if requests.should_log:
        control.should_log = True


def _checkpoint_dir(args: TrainingArguments, step: int) -> Path:
    # HF's own naming (PREFIX_CHECKPOINT_DIR); output_dir is never None after __post_init__.
    return Path(str(args.output_dir)) / f"checkpoint-{step}"


def _resolve_resume(resume: Any, args: TrainingArguments) -> str | None:
    """The checkpoint ``Trainer.train(resume_from_checkpoint=resume)`` resumes from, as HF decides.

    ``args.resume_from_checkpoint`` is not consulted: HF documents it as unused by the
    Trainer, so restoring callback state from it would resume the callbacks alone.
    """
    if resume is True:
        from transformers.trainer_utils import get_last_checkpoint

        last: str | None = get_last_checkpoint(args.output_dir)  # type: ignore[no-untyped-call]
        return last
    return os.fspath(resume) if resume else None


def _any_rank(flag: bool, args: TrainingArguments) -> bool:
    if (
        args.world_size <= 1
        or not torch.distributed.is_available()
        or not torch.distributed.is_initialized()
    ):
        return flag
    value = torch.tensor([1 if flag else 0], device=args.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def remove_default_display(trainer: Trainer, *, keep: Collection[Any] = ()) -> None:
    """Drop HF's progress, printer and reporting callbacks (``custom_callbacks_only``).

    Flow control (``DefaultFlowCallback``) and every other callback stay.

    Args:
        trainer: the trainer whose callback list to prune.
        keep: callback objects to spare even if they are of those kinds (the ones a
            config declares, e.g. ``transformers.PrinterCallback`` in place of tqdm).
    """
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    display = (PrinterCallback, ProgressCallback, *INTEGRATION_TO_CALLBACK.values())
    handler = trainer.callback_handler
    # A new list, not in-place removal: HF may be iterating the old one right now.
    # NotebookProgressCallback is matched by name: importing it needs IPython.
    handler.callbacks = [
        cb
        for cb in handler.callbacks
        if any(cb is kept for kept in keep)
        or (not isinstance(cb, display) and type(cb).__name__ != "NotebookProgressCallback")
    ]


class NeutralCallback(TrainerCallback):
    """A segment of the configuration (consecutive neutral callbacks) as one ``TrainerCallback``.

    The first segment reports each HF hook to the session's contract; every segment
    delivers the resulting neutral events to its own callbacks, in HF's callback
    order, so native callbacks keep their configured places between segments.
    """

    def __init__(self, bridge: _Bridge, span: range, *, first: bool, last: bool) -> None:
        self._bridge = bridge
        self.start = span.start
        self.stop = span.stop
        self.first = first
        self.last = last

    @property
    def callbacks(self) -> list[Any]:
        """The neutral callbacks inside."""
        return [b.callback for b in self._bridge.session.entries[self.start : self.stop]]

    @property
    def callback(self) -> Any:
        """The first neutral callback inside."""
        return self._bridge.session.entries[self.start].callback

    def __repr__(self) -> str:
        labels = ", ".join(b.label for b in self._bridge.session.entries[self.start : self.stop])
        return f"<{type(self).__name__} {labels}>"

    def _hook(
        self,
        channel: str,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        kwargs: Mapping[str, Any],
        fact: Any = None,
        *facts: Any,
    ) -> None:
        bridge = self._bridge
        if self.first:
            bridge.sync(args, state, control, kwargs.get("model"))
            fact(*facts)
            bridge.events[channel] = bridge.session.take()
        bridge.deliver(self, channel, args, state, control)

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._bridge.find_trainer()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        bridge = self._bridge
        if self.first:
            bridge.find_trainer()
            session = bridge.session
            session.begin()
            bridge.distributed = args.world_size > 1 and torch.distributed.is_initialized()
            bridge.load_state(args, state)
            bridge.sync(args, state, control, kwargs.get("model"))
            session.contract.train_begin(
                global_step=state.global_step,
                epoch=float(state.epoch or 0.0),
                max_steps=state.max_steps or None,
                num_epochs=int(state.num_train_epochs) if state.num_train_epochs else None,
                rank=args.process_index,
                world_size=args.world_size,
                is_main_process=state.is_world_process_zero,
            )
            bridge.events["train_begin"] = session.take()
        bridge.deliver(self, "train_begin", args, state, control)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        contract = self._bridge.session.contract
        self._hook("train_end", args, state, control, kwargs, contract.train_end)
        if self.last:
            self._bridge.session.end()

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        contract = self._bridge.session.contract
        self._hook("epoch_begin", args, state, control, kwargs, contract.epoch_begin)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        contract = self._bridge.session.contract
        self._hook("epoch_end", args, state, control, kwargs, contract.epoch_end)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        contract = self._bridge.session.contract
        self._hook("step_begin", args, state, control, kwargs, contract.step_begin)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # HF has already counted the step: state.global_step is the step that just ended.
        contract = self._bridge.session.contract
        self._hook(
            "step_end", args, state, control, kwargs, contract.step_end,
            state.global_step, float(state.epoch or 0.0),
        )  # fmt: skip

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:  # fmt: skip
        contract = self._bridge.session.contract
        self._hook(
            "log", args, state, control, kwargs, contract.log, logs if logs is not None else {}
        )

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:  # fmt: skip
        contract = self._bridge.session.contract
        self._hook("evaluate", args, state, control, kwargs, contract.evaluate, metrics or {})

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # HF calls on_save after writing checkpoint-<global_step>: the state joins it there.
        contract = self._bridge.session.contract
        self._hook("save", args, state, control, kwargs, contract.save)
        if self.last:
            self._bridge.save_state(args, state)


def _wrap(source: Any, inject: Mapping[str, Any] | None) -> tuple[list[Any], _Bridge]:
    binding = callbridge.bind(source, framework="hf", inject=inject)
    bridge = _Bridge(binding.session)
    layout = binding.layout()
    spans = [item for item in layout if isinstance(item, range)]
    out: list[Any] = []
    for item in layout:
        if isinstance(item, range):
            # A class per later segment: HF warns about two callbacks of one class.
            k = spans.index(item)
            klass = (
                NeutralCallback
                if k == 0
                else type(f"NeutralCallback{k + 1}", (NeutralCallback,), {})
            )
            out.append(klass(bridge, item, first=k == 0, last=item is spans[-1]))
        else:
            bridge.native.append(item.callback)
            out.append(item.callback)
    return out, bridge


def callbacks(source: Any, *, inject: Mapping[str, Any] | None = None) -> list[TrainerCallback]:
    """Build a configuration's callbacks for ``Trainer(callbacks=...)``.

    Neutral callbacks are wrapped; native ``TrainerCallback`` objects (e.g.
    ``transformers.EarlyStoppingCallback``, ``trl.RichProgressCallback``) pass
    through. The trainer is found when it initialises, so evaluation-begin,
    exception and ``custom_callbacks_only`` work as with :func:`attach`; use
    :func:`attach` to inject the trainer or its model into callbacks.

    Raises:
        callbridge.ConfigError: the configuration is invalid, or names a Lightning callback.
    """
    items, bridge = _wrap(source, inject)
    if bridge.session.config.custom_callbacks_only and not bridge.session.entries:
        # No neutral wrapper to find the trainer at on_init_end: one that does only that.
        items.append(_TrainerFinder(bridge))
    return items


class _TrainerFinder(TrainerCallback):
    """Finds the trainer at ``on_init_end`` for a config of native callbacks only."""

    def __init__(self, bridge: _Bridge) -> None:
        self._bridge = bridge

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._bridge.find_trainer()


def attach(trainer: Trainer, source: Any, *, inject: Mapping[str, Any] | None = None) -> Trainer:
    """Build a configuration's callbacks with the trainer known, and add them to it.

    Injectable by parameter name: ``trainer``, ``model``, ``args``,
    ``processing_class``, ``ref_model`` and ``accelerator`` where the trainer has
    them, plus anything in ``inject`` (which wins).

    Returns:
        The same trainer, for chaining: ``attach(SFTTrainer(...), "pyproject.toml").train()``.

    Raises:
        callbridge.ConfigError: the configuration is invalid, or names a Lightning callback.
    """
    context: dict[str, Any] = {"trainer": trainer, "args": trainer.args}
    for name in ("model", "processing_class", "ref_model", "accelerator"):
        value = getattr(trainer, name, None)
        if value is not None:
            context[name] = value
    context.update(inject or {})
    items, bridge = _wrap(source, context)
    bridge.install(trainer)
    handler = trainer.callback_handler
    before = len(handler.callbacks)
    for item in items:
        if isinstance(item, NeutralCallback):
            # Straight onto the handler: add_callback would warn about repeated classes.
            handler.callbacks.append(item)
        else:
            trainer.add_callback(item)
    _before_integrations(handler.callbacks, before)
    return trainer


def _before_integrations(callbacks: list[Any], start: int) -> None:
    """Move ``callbacks[start:]`` (the config's, in order) ahead of the reporting integrations.

    HF puts the ``report_to`` integrations (TensorBoard, W&B...) before the user's
    callbacks, so they would log each step before a configured callback (``metrics``)
    has added its figures to the shared ``logs``. Flow, printing and progress callbacks
    keep their places ahead of both.
    """
    first = next(
        (
            i
            for i, cb in enumerate(callbacks[:start])
            if type(cb).__module__.startswith("transformers.integrations")
        ),
        None,
    )
    if first is not None:
        callbacks[:] = callbacks[:first] + callbacks[start:] + callbacks[first:start]


def unwrap(callbacks: Any) -> list[Any]:
    """The neutral callbacks inside a trainer's callback list, in configured order.

    Args:
        callbacks: a list of callbacks (``trainer.callbacks``, what :func:`callbacks`
            returned, ...).
    """
    return [c for cb in callbacks if isinstance(cb, NeutralCallback) for c in cb.callbacks]
