"""Neutral callbacks inside the Hugging Face ``Trainer`` (and TRL's trainers).

Each neutral callback gets its own ``TrainerCallback`` wrapper, so native and
neutral callbacks keep the configured order. What HF lacks is supplied here:

* ``on_evaluate_begin``: HF has no pre-evaluation hook, so the bridge wraps the
  trainer's ``evaluate`` method (found at ``on_init_end``, or given to ``attach``).
* ``on_exception``: HF has none either; the bridge wraps ``train``.
* stop requests across ranks: HF never reduces control flags, so after the last
  neutral callback of a hook the bridge all-reduces ``should_training_stop``.
* state: each neutral callback's ``state_dict()`` goes to its own file in the
  checkpoint folder and is loaded on resume (HF's own stateful-callback
  mechanism keys state by class name, which two instances of one class share).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import callbridge
from callbridge import Session

logger = logging.getLogger("callbridge")

STATE_DIR = "callbridge"

# Neutral hooks that are HF hooks of the same name and signature shape; a wrapper
# defines only those its callback needs, the others are TrainerCallback's no-ops.
_PLAIN_HOOKS = (
    "on_epoch_begin",
    "on_epoch_end",
    "on_step_begin",
    "on_step_end",
    "on_log",
    "on_evaluate",
)


class _Bridge:
    """Per-session glue to one trainer: wrapped methods, resume path, distributed stop."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.trainer: Trainer | None = None
        self.resume_from: str | None = None
        self.distributed = False
        # Native callbacks the config itself declared: custom_callbacks_only never drops them.
        self.native: list[Any] = []
        # What sync() refreshes only when HF hands over new objects (new run, new state).
        self._seen: tuple[Any, Any, Any] = (None, None, None)

    # -- finding and wrapping the trainer ---------------------------------------------------

    def install(self, trainer: Trainer) -> None:
        """Wrap ``trainer.evaluate`` and ``trainer.train`` once; apply ``custom_callbacks_only``."""
        if self.trainer is trainer:
            return
        self.trainer = trainer
        evaluate = trainer.evaluate
        train = trainer.train

        @functools.wraps(evaluate)
        def evaluate_with_begin(*args: Any, **kwargs: Any) -> Any:
            dataset = kwargs.get("eval_dataset", args[0] if args else None)
            if isinstance(trainer.eval_dataset if dataset is None else dataset, dict):
                # HF evaluates a dict of datasets by calling self.evaluate (this wrapper) once
                # per dataset; each of those calls fires the begin hook before its on_evaluate.
                return evaluate(*args, **kwargs)
            self.sync(trainer.args, trainer.state, trainer.control, trainer.model)
            session = self.session
            for index in range(len(session.entries)):
                if session.implements(index, "on_evaluate_begin"):
                    self.call(index, "on_evaluate_begin", trainer.args, trainer.control)
                if "on_evaluate_begin" in session.reduce_hooks_of(index):
                    self.reduce_stop(trainer.args, trainer.control)
            return evaluate(*args, **kwargs)

        @functools.wraps(train)
        def train_with_exception(*args: Any, **kwargs: Any) -> Any:
            resume = kwargs.get("resume_from_checkpoint", args[0] if args else None)
            self.resume_from = _resolve_resume(resume, trainer.args)
            try:
                return train(*args, **kwargs)
            except BaseException as exc:
                self.sync(trainer.args, trainer.state, trainer.control, trainer.model)
                for index in range(len(self.session.entries)):
                    self.session.call(index, "on_exception", exc)
                self.session.end()
                raise

        trainer.evaluate = evaluate_with_begin  # type: ignore[method-assign]
        trainer.train = train_with_exception  # type: ignore[method-assign]
        if self.session.config.custom_callbacks_only:
            remove_default_display(trainer, keep=self.native)

    def find_trainer(self) -> None:
        """Find the Trainer calling us up the call stack (``Trainer(callbacks=...)``)."""
        if self.trainer is not None:
            return
        frame = inspect.currentframe()
        try:
            while frame is not None:
                candidate = frame.f_locals.get("self")
                if isinstance(candidate, Trainer):
                    self.install(candidate)
                    return
                frame = frame.f_back
        finally:
            del frame

    # -- per-hook work --------------------------------------------------------------------

    def sync(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any
    ) -> None:
        """Bring the shared Run up to date.

        Per event what moves; the rest only when HF hands over new objects.
        """
        run = self.session.run
        st = run.state
        st.global_step = state.global_step
        st.epoch = float(state.epoch or 0.0)
        if self._seen[0] is not state or self._seen[1] is not args or self._seen[2] is not control:
            self._seen = (state, args, control)
            st.max_steps = state.max_steps or None
            st.num_epochs = int(state.num_train_epochs) if state.num_train_epochs else None
            st.is_main_process = state.is_world_process_zero
            st.rank = args.process_index
            st.world_size = args.world_size
            run.output_dir = Path(args.output_dir) if args.output_dir else None
            run.native = {"trainer": self.trainer, "args": args, "state": state, "control": control}
        if model is not None and model is not run.model:
            run.model = model
        c = run.control
        c.should_stop = control.should_training_stop
        c.should_save = c.should_evaluate = c.should_log = False

    def fire(self, index: int, hook: str, args: TrainingArguments, state: TrainerState,
             control: TrainerControl, model: Any, *extra: Any) -> None:  # fmt: skip
        """:meth:`sync` then :meth:`call`, in one frame: the per-event path of every hook."""
        run = self.session.run
        st = run.state
        st.global_step = state.global_step
        st.epoch = state.epoch or 0.0
        if self._seen[0] is not state or self._seen[1] is not args or self._seen[2] is not control:
            self.sync(args, state, control, model)
        elif model is not None and model is not run.model:
            run.model = model
        c = run.control
        c.should_stop = control.should_training_stop
        c.should_save = c.should_evaluate = c.should_log = False
        self.session.dispatcher.call_one(index, hook, run, *extra)
        if c.should_stop:
            control.should_training_stop = True
        if c.should_save:
            control.should_save = True
        if c.should_evaluate:
            control.should_evaluate = True
        if c.should_log:
            control.should_log = True

    def call(
        self, index: int, hook: str, args: TrainingArguments, control: TrainerControl, *extra: Any
    ) -> None:
        session = self.session
        session.dispatcher.call_one(index, hook, session.run, *extra)
        # Requests only add to the trainer's plan; a callback cannot veto HF's own flow.
        c = session.run.control
        if c.should_stop:
            control.should_training_stop = True
        if c.should_save:
            control.should_save = True
        if c.should_evaluate:
            control.should_evaluate = True
        if c.should_log:
            control.should_log = True

    def reduce_stop(self, args: TrainingArguments, control: TrainerControl) -> None:
        """Make a stop request on any rank a stop on all (HF never reduces control flags)."""
        if self.distributed and self.session.training:
            control.should_training_stop = _any_rank(control.should_training_stop, args)

    # -- state ------------------------------------------------------------------------------

    def state_path(self, index: int, checkpoint: str | os.PathLike[str], rank: int) -> Path:
        key = self.session.entries[index].key  # "<index>:<name>", unique in the config
        return Path(checkpoint) / STATE_DIR / f"rank{rank}" / f"{_safe(key)}.pt"

    def save_state(self, index: int, args: TrainingArguments, state: TrainerState) -> None:
        callback = self.session.entries[index].callback
        data = callback.state_dict()
        if not data:
            return
        checkpoint = _checkpoint_dir(args, state.global_step)
        path = self.state_path(index, checkpoint, args.process_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        os.replace(tmp, path)  # never a half-written state file

    def load_state(self, index: int, args: TrainingArguments, state: TrainerState) -> None:
        checkpoint = self.resume_from
        if checkpoint is None and state.global_step > 0:
            # Trainer(callbacks=...) without a wrapped train(): the resumed checkpoint is the
            # one whose step HF just restored.
            guess = _checkpoint_dir(args, state.global_step)
            checkpoint = str(guess) if guess.is_dir() else None
        if checkpoint is None:
            return
        path = self.state_path(index, checkpoint, args.process_index)
        if not path.exists():
            path = self.state_path(index, checkpoint, 0)  # world size changed: rank 0's state
        entry = self.session.entries[index]
        if path.exists():
            data = torch.load(path, map_location="cpu", weights_only=True)
            entry.callback.load_state_dict(data)
            return
        saved = sorted(p.name for p in (Path(checkpoint) / STATE_DIR).glob("rank*/*.pt"))
        stateful = type(entry.callback).state_dict is not callbridge.Callback.state_dict
        if saved and stateful:
            # Keys are "<position>:<name>": a config reordered since the checkpoint finds
            # nothing under its keys, and the callback would silently start over.
            logger.warning(
                "callbridge: no saved state for %s in %s (found: %s); it starts afresh. "
                "Keep the config's order and names when resuming.",
                entry.label,
                checkpoint,
                ", ".join(sorted(set(saved))),
            )


def _safe(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_." else "-" for ch in key)


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
    """A neutral :class:`callbridge.Callback` as an HF ``TrainerCallback``."""

    def __init__(self, bridge: _Bridge, index: int) -> None:
        self._bridge = bridge
        self._index = index
        self._hooks = bridge.session.hooks_of(index)
        self._reduce = bridge.session.reduce_hooks_of(index)

    @property
    def callback(self) -> Any:
        """The neutral callback inside."""
        return self._bridge.session.entries[self._index].callback

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._bridge.session.entries[self._index].label}>"

    def _event(
        self,
        hook: str,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        kwargs: Mapping[str, Any],
        *extra: Any,
    ) -> None:
        bridge = self._bridge
        if hook in self._hooks:
            bridge.fire(self._index, hook, args, state, control, kwargs.get("model"), *extra)
        if hook in self._reduce:
            # Entered on every rank alike: the sets are fixed at bind time (Session).
            bridge.reduce_stop(args, control)

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._bridge.find_trainer()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        bridge = self._bridge
        bridge.find_trainer()
        if not bridge.session.training:
            bridge.session.begin()  # the first wrapper of this run
            bridge.distributed = args.world_size > 1 and torch.distributed.is_initialized()
        bridge.load_state(self._index, args, state)
        self._event("on_train_begin", args, state, control, kwargs)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._event("on_train_end", args, state, control, kwargs)
        if self._index == len(self._bridge.session.entries) - 1:
            self._bridge.session.end()

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._event("on_epoch_begin", args, state, control, kwargs)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._event("on_epoch_end", args, state, control, kwargs)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._event("on_step_begin", args, state, control, kwargs)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # HF has already counted the step: state.global_step is the step that just ended.
        self._event("on_step_end", args, state, control, kwargs)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:  # fmt: skip
        self._event("on_log", args, state, control, kwargs, logs or {})

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:  # fmt: skip
        self._event("on_evaluate", args, state, control, kwargs, metrics or {})

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # HF calls on_save after writing checkpoint-<global_step>: the state joins it there.
        self._event("on_save", args, state, control, kwargs)
        self._bridge.save_state(self._index, args, state)


def _wrapper_class(
    callback: Any, needed: frozenset[str], reduce: frozenset[str] = frozenset()
) -> type[NeutralCallback]:
    """One class per wrapper, with only the hooks its callback needs.

    HF calls every hook of every callback: a hook the neutral callback neither
    implements nor reduces at stays TrainerCallback's no-op, as cheap as a native
    callback's. One class per wrapper also keeps HF from warning about two callbacks
    of one class, and makes its callback list name the neutral callback.
    """
    name = f"{type(callback).__name__}Bridge"
    namespace: dict[str, Any] = {"__module__": __name__, "__qualname__": name}
    for hook in _PLAIN_HOOKS:
        if hook not in needed:
            namespace[hook] = getattr(TrainerCallback, hook)
        elif hook in _STEP_HOOKS:
            namespace[hook] = _step_hook(hook, reduce=hook in reduce)
    return type(name, (NeutralCallback,), namespace)


_STEP_HOOKS = ("on_step_begin", "on_step_end")


def _step_hook(hook: str, *, reduce: bool) -> Any:
    """The hottest hooks (every optimizer step) as direct methods: no dispatch on the hook name."""
    if reduce:

        def method(self: NeutralCallback, args: TrainingArguments, state: TrainerState,
                   control: TrainerControl, **kwargs: Any) -> None:  # fmt: skip
            bridge = self._bridge
            if hook in self._hooks:
                bridge.fire(self._index, hook, args, state, control, kwargs.get("model"))
            bridge.reduce_stop(args, control)

    else:

        def method(self: NeutralCallback, args: TrainingArguments, state: TrainerState,
                   control: TrainerControl, **kwargs: Any) -> None:  # fmt: skip
            self._bridge.fire(self._index, hook, args, state, control, kwargs.get("model"))

    method.__name__ = method.__qualname__ = hook
    return method


def _wrap(source: Any, inject: Mapping[str, Any] | None) -> tuple[list[Any], _Bridge]:
    binding = callbridge.bind(source, framework="hf", inject=inject)
    bridge = _Bridge(binding.session)
    out: list[Any] = []
    for built, index in binding.items:
        if index is None:
            bridge.native.append(built.callback)
            out.append(built.callback)
        else:
            session = binding.session
            reduce = session.reduce_hooks_of(index)
            needed = session.hooks_of(index) | reduce
            out.append(_wrapper_class(built.callback, needed, reduce)(bridge, index))
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
