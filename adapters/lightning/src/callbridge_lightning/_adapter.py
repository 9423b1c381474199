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

_NO_REDUCE = frozenset({"on_train_end", "on_exception"})

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
                original(metrics, step)
                for tap in list(taps):
                    tap.deliver(trainer, metrics, step)

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

    def deliver(self, trainer: pl.Trainer, metrics: Mapping[str, Any], step: int | None) -> None:
        if not metrics:
            return  # Lightning logs nothing either
        logs = {k: float(v) for k, v in metrics.items()}
        # What the loggers receive: Lightning adds "epoch" unless the step is given or logged.
        if step is None and logs.pop("step", None) is None:
            logs.setdefault("epoch", float(trainer.current_epoch))
        if trainer.validating:
            self.last_eval = dict(logs)
        self._bridge.broadcast("on_log", logs)


class _Bridge:
    """Per-session glue to one Lightning trainer."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.trainer: pl.Trainer | None = None
        self.tap = _LogTap(self)
        self.training = False

    def sync(self, trainer: pl.Trainer, pl_module: pl.LightningModule | None) -> None:
        run = self.session.run
        st = run.state
        st.global_step = trainer.global_step
        st.max_steps = (
            trainer.max_steps
            if trainer.max_steps and trainer.max_steps > 0
            else _estimated(trainer)
        )
        st.epoch = float(trainer.current_epoch)
        st.num_epochs = (
            trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        )
        st.is_main_process = trainer.is_global_zero
        st.rank = trainer.global_rank
        st.world_size = trainer.world_size
        if pl_module is not None:
            run.model = pl_module
        run.output_dir = Path(trainer.default_root_dir)
        run.native = {"trainer": trainer, "pl_module": pl_module}
        c = run.control
        c.should_stop = trainer.should_stop
        c.should_save = c.should_evaluate = c.should_log = False

    def call(self, index: int, hook: str, *args: Any) -> None:
        session = self.session
        trainer = self.trainer
        assert trainer is not None
        # A callback disabled (or skipped) on one rank only must not skip the collective
        # there: the reduce point is fixed at bind time and entered on every rank alike.
        if session.implements(index, hook):
            session.call(index, hook, *args)
            if session.run.control.should_stop:
                trainer.should_stop = True
        if hook not in _NO_REDUCE and self.training and session.is_reduce_point(index, hook):
            trainer.should_stop = trainer.strategy.reduce_boolean_decision(
                trainer.should_stop, all=False
            )

    def event(
        self,
        index: int,
        hook: str,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule | None,
        *args: Any,
    ) -> None:
        session = self.session
        if not session.implements(index, hook) and not (
            self.training and session.is_reduce_point(index, hook)
        ):
            return  # the per-event cost of a hook the callback does not implement
        self.trainer = trainer
        self.sync(trainer, pl_module)
        self.call(index, hook, *args)

    def broadcast(self, hook: str, *args: Any) -> None:
        """One event to every neutral callback in order (no per-callback Lightning hook has it)."""
        trainer = self.trainer
        if trainer is None:
            return
        self.sync(trainer, trainer.lightning_module)
        for index in range(len(self.session.entries)):
            self.call(index, hook, *args)

    def start(self, trainer: pl.Trainer) -> None:
        """Before the first neutral hook of a fit: a new error summary, the log tap in place."""
        if self.training:
            return
        self.trainer = trainer
        self.training = True
        self.session.reset()
        self.tap.install(trainer)

    def stop(self, trainer: pl.Trainer) -> None:
        if not self.training:
            return
        self.training = False
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
        self._step_open = False
        self._step_from = 0

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
        self._bridge.start(trainer)
        self._step_open = False
        self._bridge.event(self._index, "on_train_begin", trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._bridge.event(self._index, "on_train_end", trainer, pl_module)
        if self._index == len(self._bridge.session.entries) - 1:
            self._bridge.stop(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._bridge.event(self._index, "on_epoch_begin", trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._bridge.event(self._index, "on_epoch_end", trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        # Micro-batches: only the first one of an optimizer step opens it.
        if self._step_open:
            return
        self._step_open = True
        self._step_from = trainer.global_step
        self._bridge.event(self._index, "on_step_begin", trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # The optimizer stepped during this batch iff global_step moved.
        if not self._step_open or trainer.global_step == self._step_from:
            return
        self._step_open = False
        self._bridge.event(self._index, "on_step_end", trainer, pl_module)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._bridge.tap.last_eval = {}
        self._bridge.event(self._index, "on_evaluate_begin", trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = dict(self._bridge.tap.last_eval) or {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if getattr(v, "numel", lambda: 1)() == 1
        }
        self._bridge.event(self._index, "on_evaluate", trainer, pl_module, metrics)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:  # fmt: skip
        self._bridge.event(self._index, "on_save", trainer, pl_module)
        # Lightning took state_dict() before this hook: take it again, so that the
        # checkpoint holds what the callback did in on_save (HF writes it after on_save).
        state = self.state_dict()
        if state:  # Lightning stores non-empty states only
            checkpoint.setdefault("callbacks", {})[self.state_key] = state

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._bridge.event(self._index, "on_exception", trainer, pl_module, exception)
        if self._index == len(self._bridge.session.entries) - 1:
            self._bridge.stop(trainer)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.callback.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.callback.load_state_dict(state_dict)


def _wrapper_class(callback: Any) -> type[NeutralCallback]:
    name = f"{type(callback).__name__}Bridge"
    return type(name, (NeutralCallback,), {"__module__": __name__, "__qualname__": name})


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
    out += [
        built.callback if index is None else _wrapper_class(built.callback)(bridge, index)
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
