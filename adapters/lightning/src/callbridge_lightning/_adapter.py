"""Neutral callbacks inside the PyTorch Lightning ``Trainer``.

Each neutral callback gets its own Lightning ``Callback`` wrapper (so native and
neutral callbacks keep the configured order) with a ``state_key`` unique per
instance. What Lightning lacks or does differently is handled here:

* steps: Lightning calls its batch hooks on every micro-batch; a step begins at
  the first batch of an accumulation window and ends at the batch after which
  ``trainer.global_step`` moved (the optimizer stepped).
* ``on_log``: Lightning has no log hook; during ``fit`` a tap on the trainer's
  logger connector hands on what the trainer logged, at its cadence, without
  joining ``trainer.loggers`` (user code must keep seeing the loggers it chose).
* evaluation: ``on_validation_epoch_start`` / ``on_validation_end``, never
  during the sanity check; the metrics are those the validation loop logged.
* stop requests: reduced across ranks with the strategy's
  ``reduce_boolean_decision``, as Lightning's own ``EarlyStopping`` does.
* state: Lightning collects ``state_dict()`` before it calls
  ``on_save_checkpoint``; the wrapper stores the state again after ``on_save``,
  so that a checkpoint holds what the callback did for it (as under HF).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar

import callbridge
from callbridge import Session

logger = logging.getLogger("callbridge")

# Lightning hooks a wrapper defines only when its callback needs the neutral hook;
# otherwise Lightning's own no-op stands (as cheap as a native callback's).
_HOOKS_FOR = {
    "on_epoch_begin": ("on_train_epoch_start",),
    "on_epoch_end": ("on_train_epoch_end",),
    "on_step_begin": ("on_train_batch_start", "on_train_batch_end"),
    "on_step_end": ("on_train_batch_start", "on_train_batch_end"),
    "on_evaluate_begin": ("on_validation_epoch_start",),
    "on_evaluate": ("on_validation_epoch_start", "on_validation_end"),
}

# The log taps installed on each trainer's logger connector (see _LogTap).
_TAPS: weakref.WeakKeyDictionary[Any, list[_LogTap]] = weakref.WeakKeyDictionary()


class _LogTap:
    """Hands the trainer's logged metrics to neutral ``on_log`` hooks during a fit.

    Every metric the loops log, at the trainer's cadence, passes through the logger
    connector's ``log_metrics`` on every rank (the loggers themselves only write on
    rank zero), so the tap wraps that method of the trainer's connector for the
    duration of a fit. A ``Logger`` in ``trainer.loggers`` would do the same but be
    seen: ``self.logger`` would no longer be None under ``logger=False``, and code
    that reaches for ``logger.experiment`` would find a logger without one.
    """

    def __init__(self, bridge: _Bridge) -> None:
        self._bridge = bridge
        self.last_eval: dict[str, float] = {}
        self._connector: Any = None

    def install(self, trainer: pl.Trainer) -> None:
        connector: Any = trainer._logger_connector  # private: the door every metric goes through
        taps = _TAPS.get(connector)
        if taps is None:
            # One wrapper per connector, shared by every configuration on this trainer.
            taps = _TAPS[connector] = []
            original = connector.log_metrics

            def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
                # Neutral callbacks first, so that what they add (``metrics``' figures)
                # reaches the trainer's loggers too, as it reaches HF's integrations.
                added: dict[str, float] = {}
                for tap in list(taps):
                    added.update(tap.deliver(trainer, metrics, step))
                original({**metrics, **added} if added else metrics, step)

            connector.log_metrics = log_metrics
        if self not in taps:
            taps.append(self)
        self._connector = connector

    def uninstall(self) -> None:
        connector, self._connector = self._connector, None
        if connector is None:
            return
        taps = _TAPS.get(connector, [])
        if self in taps:
            taps.remove(self)
        if not taps:
            _TAPS.pop(connector, None)
            vars(connector).pop("log_metrics", None)  # the class's method again

    def deliver(
        self, trainer: pl.Trainer, metrics: Mapping[str, Any], step: int | None
    ) -> dict[str, float]:
        """Hand ``metrics`` to the neutral ``on_log`` hooks; what they added to the logs."""
        if not metrics:
            return {}  # Lightning logs nothing either
        logs = {k: float(v) for k, v in metrics.items()}
        # What the loggers receive: Lightning adds "epoch" unless the step is given or logged.
        if step is None and logs.pop("step", None) is None:
            logs.setdefault("epoch", float(trainer.current_epoch))
        if trainer.validating:
            self.last_eval = dict(logs)
        before = set(logs)
        self._bridge.broadcast("on_log", logs)
        return {k: v for k, v in logs.items() if k not in before}


class _Bridge:
    """Per-session glue to one Lightning trainer."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.trainer: pl.Trainer | None = None
        self.tap = _LogTap(self)
        self.distributed = False
        self.reduce_sets = [session.reduce_hooks_of(i) for i in range(len(session.entries))]

    def sync(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule | None,
        global_step: int | None = None,
    ) -> None:
        """Per event what moves; the rest was set at :meth:`start`."""
        run = self.session.run
        st = run.state
        st.global_step = trainer.global_step if global_step is None else global_step
        st.epoch = float(trainer.current_epoch)
        if pl_module is not None and pl_module is not run.model:
            run.model = pl_module
            run.native["pl_module"] = pl_module
        c = run.control
        c.should_stop = trainer.should_stop
        c.should_save = c.should_evaluate = c.should_log = False

    def call(self, index: int, hook: str, *args: Any) -> None:
        session = self.session
        session.dispatcher.call_one(index, hook, session.run, *args)
        if session.run.control.should_stop:
            assert self.trainer is not None
            self.trainer.should_stop = True

    def reduce_stop(self) -> None:
        """A stop requested on any rank is a stop on all, as Lightning's EarlyStopping does it."""
        trainer = self.trainer
        if self.distributed and self.session.training and trainer is not None:
            trainer.should_stop = trainer.strategy.reduce_boolean_decision(
                trainer.should_stop, all=False
            )

    def broadcast(self, hook: str, *args: Any) -> None:
        """One event to every neutral callback in order (no per-callback Lightning hook has it)."""
        trainer = self.trainer
        if trainer is None:
            return
        self.sync(trainer, trainer.lightning_module)
        session = self.session
        for index in range(len(session.entries)):
            if session.implements(index, hook):
                self.call(index, hook, *args)
            if hook in self.reduce_sets[index]:
                self.reduce_stop()

    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Before the first neutral hook of a fit: static run fields, the log tap, a new summary."""
        session = self.session
        if session.training:
            return
        self.trainer = trainer
        self.distributed = trainer.world_size > 1
        run = session.run
        st = run.state
        st.max_steps = (
            trainer.max_steps
            if trainer.max_steps and trainer.max_steps > 0
            else _estimated(trainer)
        )
        st.num_epochs = (
            trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        )
        st.is_main_process = trainer.is_global_zero
        st.rank = trainer.global_rank
        st.world_size = trainer.world_size
        run.model = pl_module
        run.output_dir = Path(trainer.default_root_dir)
        run.native = {"trainer": trainer, "pl_module": pl_module}
        session.begin()
        self.tap.install(trainer)

    def stop(self, trainer: pl.Trainer) -> None:
        if not self.session.training:
            return
        self.tap.uninstall()
        self.session.end()


def _estimated(trainer: pl.Trainer) -> int | None:
    try:
        steps = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - infinite or unknown dataloaders
        return None
    return int(steps) if steps != float("inf") else None


def _callback_list(trainer: pl.Trainer) -> list[Callback]:
    """The trainer's own list of callbacks (set in ``__init__`` by a connector, unseen by mypy)."""
    callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
    return callbacks


class _Disabled(Callback):
    """Stands where a display callback was (``custom_callbacks_only``): index-stable removal."""

    def __init__(self, replaced: Callback) -> None:
        self.replaced = type(replaced).__name__

    @property
    def state_key(self) -> str:
        return f"callbridge-disabled[{self.replaced}]"


def remove_default_display(trainer: pl.Trainer) -> None:
    """Turn off the progress bar and the model summary (``custom_callbacks_only``).

    Callbacks are replaced in place by inert ones, never removed, because Lightning
    may be iterating the list at that moment. The explicit way is
    ``Trainer(enable_progress_bar=False, enable_model_summary=False)``.
    """
    callbacks = _callback_list(trainer)
    for i, cb in enumerate(callbacks):
        if isinstance(cb, (ProgressBar, ModelSummary)):
            callbacks[i] = _Disabled(cb)


class _DisplayOff(Callback):
    """Turns the display off at ``setup`` (``custom_callbacks_only``), whatever the config holds.

    A callback of its own rather than a duty of the neutral wrappers: a config may
    hold native callbacks only.
    """

    @property
    def state_key(self) -> str:
        return "callbridge-display-off"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        remove_default_display(trainer)


class NeutralCallback(Callback):
    """A neutral :class:`callbridge.Callback` as a Lightning ``Callback``."""

    def __init__(self, bridge: _Bridge, index: int) -> None:
        self._bridge = bridge
        self._index = index
        self._hooks = bridge.session.hooks_of(index)
        self._reduce = bridge.reduce_sets[index]
        self._step_open = False
        self._step_from = 0

    def _event(self, hook: str, trainer: pl.Trainer, pl_module: pl.LightningModule | None,
               *args: Any, global_step: int | None = None) -> None:  # fmt: skip
        bridge = self._bridge
        if hook in self._hooks:
            bridge.trainer = trainer
            bridge.sync(trainer, pl_module, global_step)
            bridge.call(self._index, hook, *args)
        if hook in self._reduce:
            # Entered on every rank alike: the sets are fixed at bind time (Session).
            bridge.reduce_stop()

    @property
    def callback(self) -> Any:
        """The neutral callback inside."""
        return self._bridge.session.entries[self._index].callback

    @property
    def state_key(self) -> str:
        return self._bridge.session.state_key(self._index)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._bridge.session.entries[self._index].label}>"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._bridge.trainer = trainer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._bridge.start(trainer, pl_module)
        self._step_open = False
        self._event("on_train_begin", trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._event("on_train_end", trainer, pl_module)
        if self._index == len(self._bridge.session.entries) - 1:
            self._bridge.stop(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._event("on_epoch_begin", trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._event("on_epoch_end", trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        # Micro-batches: only the first one of an optimizer step opens it.
        if self._step_open:
            return
        self._step_open = True
        self._step_from = step = trainer.global_step
        self._event("on_step_begin", trainer, pl_module, global_step=step)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # The optimizer stepped during this batch iff global_step moved.
        if not self._step_open:
            return
        step = trainer.global_step
        if step == self._step_from:
            return
        self._step_open = False
        self._event("on_step_end", trainer, pl_module, global_step=step)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._bridge.tap.last_eval = {}
        self._event("on_evaluate_begin", trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = dict(self._bridge.tap.last_eval) or {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if getattr(v, "numel", lambda: 1)() == 1
        }
        self._event("on_evaluate", trainer, pl_module, metrics)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:  # fmt: skip
        self._event("on_save", trainer, pl_module)
        # Lightning took state_dict() before this hook: take it again, so that the
        # checkpoint holds what the callback did in on_save (HF writes it after on_save).
        state = self.state_dict()
        if state:  # Lightning stores non-empty states only
            checkpoint.setdefault("callbacks", {})[self.state_key] = state

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._event("on_exception", trainer, pl_module, exception)
        if self._index == len(self._bridge.session.entries) - 1:
            self._bridge.stop(trainer)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.callback.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.callback.load_state_dict(state_dict)


def _wrapper_class(callback: Any, needed: frozenset[str]) -> type[NeutralCallback]:
    """One class per wrapper, defining only the Lightning hooks its callback needs."""
    name = f"{type(callback).__name__}Bridge"
    namespace: dict[str, Any] = {"__module__": __name__, "__qualname__": name}
    wanted = {hook for neutral in needed for hook in _HOOKS_FOR.get(neutral, ())}
    for hooks in _HOOKS_FOR.values():
        for hook in hooks:
            if hook not in wanted:
                namespace[hook] = getattr(Callback, hook)
    return type(name, (NeutralCallback,), namespace)


def callbacks(source: Any, *, inject: Mapping[str, Any] | None = None) -> list[Callback]:
    """Build a configuration's callbacks for ``L.Trainer(callbacks=...)``.

    Neutral callbacks are wrapped; native Lightning callbacks (e.g.
    ``lightning.pytorch.callbacks.ModelCheckpoint``) pass through. Under
    ``custom_callbacks_only`` the list starts with a callback that turns the
    progress bar and the model summary off at ``setup``.

    Raises:
        callbridge.ConfigError: the configuration is invalid, or names an HF callback.
    """
    binding = callbridge.bind(source, framework="lightning", inject=inject)
    bridge = _Bridge(binding.session)
    out: list[Callback] = [_DisplayOff()] if binding.session.config.custom_callbacks_only else []
    session = binding.session
    out += [
        built.callback
        if index is None
        else _wrapper_class(
            built.callback, session.hooks_of(index) | session.reduce_hooks_of(index)
        )(bridge, index)
        for built, index in binding.items
    ]
    return out


class FromConfig(Callback):
    """A configuration's callbacks from LightningCLI YAML.

    ``trainer.callbacks: [{class_path: callbridge_lightning.FromConfig,
    init_args: {path: pyproject.toml}}]``

    At ``setup`` the callbacks are inserted right after this one in the trainer's
    list, so they run in its place; this one stays inert.

    Args:
        path: the configuration file (pyproject.toml, TOML, YAML or JSON).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.children: list[Callback] = callbacks(path)  # fail at CLI parse time, not mid-fit
        self._inserted = False

    @property
    def state_key(self) -> str:
        return f"callbridge-from-config[{self.path}]"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._inserted:
            return
        self._inserted = True
        callbacks = _callback_list(trainer)
        position = next(i for i, cb in enumerate(callbacks) if cb is self)
        # Lightning is iterating this list to call setup: what follows us gets setup too.
        callbacks[position + 1 : position + 1] = self.children
