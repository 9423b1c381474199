"""Neutral callbacks inside the PyTorch Lightning ``Trainer``.

Each run of consecutive neutral callbacks in the configuration (a segment) gets
one Lightning ``Callback``, so native and neutral callbacks keep the configured
order. The first segment reports what Lightning did to the session's contract
(the core orders the neutral events and defines the state); every segment
delivers the events to its callbacks. What Lightning lacks or does differently
is translated here:

* steps: Lightning calls its batch hooks on every micro-batch; a step begins at
  the first batch of an accumulation window and ends at the batch after which
  ``trainer.global_step`` moved (the optimizer stepped). ``epoch`` is
  ``current_epoch + (batch_idx + 1) / num_training_batches``, HF's formula.
* epoch end: Lightning ends an epoch after its last validation; the contract puts
  ``epoch_end`` before an epoch's own validation (as HF does), so the last
  step's end is reported as the epoch's last step.
* ``on_log``: Lightning has no log hook; a tap on the trainer's logger connector
  hands on what the trainer logged, at its cadence, without joining
  ``trainer.loggers`` (user code must keep seeing the loggers it chose).
* evaluation: ``on_validation_epoch_start`` / ``on_validation_end``, never
  during the sanity check; the metrics are those the validation loop logged.
* stop requests: reduced across ranks with the strategy's
  ``reduce_boolean_decision``, as Lightning's own ``EarlyStopping`` does.
* state: the first segment's ``state_dict`` holds the session's (every neutral
  callback's, under stable keys); Lightning collects it before it calls
  ``on_save_checkpoint``, so the last segment stores it again after ``on_save``.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar

import callbridge
from callbridge import Session

from ._foreign import HFCallbackOnLightning, adopt

logger = logging.getLogger("callbridge")

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
        self._bridge.log(logs)
        return {k: v for k, v in logs.items() if k not in before}


class _Bridge:
    """Per-session glue to one Lightning trainer: facts for the contract, delivery, state."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.trainer: pl.Trainer | None = None
        self.tap = _LogTap(self)
        self.distributed = False
        # The events of the latest fact per Lightning hook, delivered by every segment.
        self.events: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
        self.segments: list[NeutralCallback] = []
        self.step_open = False
        self.step_from = 0
        self.epoch_evaluation = False
        # A checkpoint a callback asked for (should_save), written once its step's events end.
        self.save_requested = False
        # Foreign (HF) callbacks: their indices, the micro-batch/optimizer fact of each
        # Lightning hook (the contract does not carry them), work deferred past delivery.
        self.foreign: list[int] = []
        self.facts: dict[str, str | None] = {}
        self.deferred: list[Any] = []

    def sync(self, trainer: pl.Trainer, pl_module: pl.LightningModule | None) -> None:
        """What the contract does not own: the model, and a stop asked for by anyone else."""
        self.trainer = trainer
        run = self.session.run
        if pl_module is not None and pl_module is not run.model:
            run.model = pl_module
            run.native["pl_module"] = pl_module
        if trainer.should_stop:
            self.session.contract.request_stop()
        if not self.session.contract.training:
            st = run.state
            st.global_step = trainer.global_step
            st.epoch = float(trainer.current_epoch)
            st.is_main_process = trainer.is_global_zero
            st.rank = trainer.global_rank
            st.world_size = trainer.world_size

    def deliver(self, segment: NeutralCallback, channel: str) -> None:
        """Deliver the latest events of ``channel`` to one segment; reduce after the last."""
        if self.foreign:
            self.deliver_fact(segment, self.facts.get(channel))
        events = self.events.get(channel)
        if not events:
            return
        requests = self.session.deliver(events, segment.start, segment.stop)
        self.save_requested |= requests.should_save and self.session.contract.training
        if requests.should_stop and self.trainer is not None:
            self.trainer.should_stop = True
        if segment.last:
            self.reduce_stop(events)
            self.run_deferred()

    def deliver_fact(self, segment: NeutralCallback, hook: str | None) -> None:
        """Tell a segment's foreign callbacks a fact the contract does not carry (``hook``)."""
        if hook is None:
            return
        session = self.session
        run = session.run
        for index in self.foreign:
            if segment.start <= index < segment.stop:
                run.control.should_stop = session.contract.stop_requested
                callback = session.entries[index].callback
                session.dispatcher.call_fact(index, hook, callback.fact, run, hook)
                if run.control.should_stop:
                    session.contract.request_stop()
                    if self.trainer is not None:
                        self.trainer.should_stop = True

    def defer(self, work: Any) -> None:
        """Run ``work()`` once the current Lightning hook's events are delivered (a save)."""
        self.deferred.append(work)

    def run_deferred(self) -> None:
        while self.deferred:
            self.deferred.pop(0)()

    def deliver_all(self) -> None:
        """Deliver a fact's events to every neutral callback at once (no native hook between)."""
        events = self.session.take()
        if events:
            requests = self.session.deliver(events)
            self.save_requested |= requests.should_save and self.session.contract.training
            if requests.should_stop and self.trainer is not None:
                self.trainer.should_stop = True
            self.reduce_stop(events)
            self.run_deferred()

    def reduce_stop(self, events: list[tuple[str, tuple[Any, ...]]]) -> None:
        """A stop requested on any rank is a stop on all, as Lightning's EarlyStopping does it."""
        trainer = self.trainer
        if self.distributed and trainer is not None and self.session.must_reduce(events):
            trainer.should_stop = trainer.strategy.reduce_boolean_decision(
                trainer.should_stop, all=False
            )
            if trainer.should_stop:
                self.session.contract.request_stop()

    def log(self, logs: dict[str, float]) -> None:
        """The trainer logged: the tap's fact."""
        trainer = self.trainer
        if trainer is None:
            return
        self.sync(trainer, trainer.lightning_module)
        self.session.contract.log(logs)
        self.deliver_all()
        if not trainer.validating:
            self.save_if_requested()

    def save_if_requested(self) -> None:
        """Write the checkpoint a callback asked for: ``checkpoints/step=N.ckpt`` in the root dir.

        Lightning has no save request: the bridge saves when the requesting step's events
        are over (after the step's log, where the trainer logs it; always when a stop was
        asked too), or else at the next hook, before the next step or the evaluation.
        """
        trainer = self.trainer
        if not self.save_requested or trainer is None:
            return
        self.save_requested = False
        trainer.save_checkpoint(requested_checkpoint(trainer))

    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Training starts: static run fields, a new summary, the contract's train begin."""
        session = self.session
        self.trainer = trainer
        self.distributed = trainer.world_size > 1
        self.step_open = False
        run = session.run
        run.model = pl_module
        run.output_dir = Path(trainer.default_root_dir)
        run.native = {"trainer": trainer, "pl_module": pl_module}
        # Lightning's validation at an epoch's last batch is the epoch's own evaluation when
        # its cadence is a fraction of the epoch (the default, 1.0), not a count of batches.
        self.epoch_evaluation = trainer.check_val_every_n_epoch is not None and isinstance(
            trainer.val_check_interval, float
        )
        session.begin()
        session.contract.train_begin(
            global_step=trainer.global_step,
            epoch=_epoch(trainer, _batches_done(trainer)),
            max_steps=_estimated(trainer),
            num_epochs=_num_epochs(trainer),
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            is_main_process=trainer.is_global_zero,
        )

    def stop(self) -> None:
        self.session.end()


def requested_checkpoint(trainer: pl.Trainer) -> Path:
    """Where a checkpoint a callback asked for goes: ``checkpoints/step=N.ckpt`` in the root dir.

    One name for every request (a neutral ``should_save``, an HF callback's), so that a
    resume finds them in one place.
    """
    return Path(trainer.default_root_dir) / "checkpoints" / f"step={trainer.global_step}.ckpt"


def _batches_done(trainer: pl.Trainer) -> int:
    """Batches of the current epoch already trained (a mid-epoch resume restores them)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    return int(progress.completed)


def _epoch(trainer: pl.Trainer, batches: int) -> float:
    """Fractional epochs completed, HF's formula: ``epoch + batches / batches_per_epoch``."""
    total = trainer.num_training_batches
    if not batches or total in (0, float("inf")):
        return float(trainer.current_epoch)
    return trainer.current_epoch + batches / total


def _num_epochs(trainer: pl.Trainer) -> int | None:
    """The epochs this fit plans, also when it is bounded by ``max_steps`` (as HF computes it)."""
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    batches = trainer.num_training_batches
    if trainer.max_steps and trainer.max_steps > 0 and batches not in (0, float("inf")):
        per_epoch = math.ceil(int(batches) / trainer.accumulate_grad_batches)
        by_steps = math.ceil(trainer.max_steps / per_epoch)
        return by_steps if epochs is None else min(by_steps, epochs)
    return epochs


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
    """A segment of the configuration (consecutive neutral callbacks) as one Lightning ``Callback``.

    The first segment reports each Lightning hook to the session's contract; every
    segment delivers the resulting neutral events to its own callbacks.
    """

    def __init__(self, bridge: _Bridge, span: range, *, first: bool, last: bool) -> None:
        self._bridge = bridge
        self.start = span.start
        self.stop = span.stop
        self.first = first
        self.last = last
        bridge.segments.append(self)

    @property
    def callbacks(self) -> list[Any]:
        """The neutral callbacks inside."""
        return [b.callback for b in self._bridge.session.entries[self.start : self.stop]]

    @property
    def callback(self) -> Any:
        """The first neutral callback inside."""
        return self._bridge.session.entries[self.start].callback

    @property
    def state_key(self) -> str:
        session = self._bridge.session
        suffix = "" if self.first else f"/{self.start}"
        return f"callbridge[{session.tag}]{suffix}"

    def __repr__(self) -> str:
        labels = ", ".join(b.label for b in self._bridge.session.entries[self.start : self.stop])
        return f"<{type(self).__name__} {labels}>"

    def _hook(self, channel: str, trainer: pl.Trainer, pl_module: pl.LightningModule | None,
              fact: Any, *facts: Any) -> None:  # fmt: skip
        bridge = self._bridge
        if self.first:
            if channel not in ("batch_end", "save", "exception"):
                bridge.save_if_requested()  # a save asked for in the previous step
            bridge.sync(trainer, pl_module)
            fact(*facts)
            bridge.events[channel] = bridge.session.take()
        bridge.deliver(self, channel)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        bridge = self._bridge
        bridge.trainer = trainer
        if self.first:
            # The tap reads what the trainer logs, in fit and in a standalone validate.
            bridge.tap.install(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.first:
            self._bridge.tap.uninstall()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bridge = self._bridge
        if self.first:
            bridge.start(trainer, pl_module)
            bridge.events["train_start"] = bridge.session.take()
        bridge.deliver(self, "train_start")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hook("train_end", trainer, pl_module, self._bridge.session.contract.train_end)
        if self.last:
            self._bridge.stop()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hook("epoch_start", trainer, pl_module, self._bridge.session.contract.epoch_begin)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hook("epoch_end", trainer, pl_module, self._bridge.session.contract.epoch_end)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        self._hook("batch_start", trainer, pl_module, self._batch_start, trainer)

    def _batch_start(self, trainer: pl.Trainer) -> None:
        bridge = self._bridge
        # Micro-batches: only the first one of an optimizer step opens it.
        if not bridge.step_open:
            bridge.step_open = True
            bridge.step_from = trainer.global_step
            bridge.session.contract.step_begin()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._hook("batch_end", trainer, pl_module, self._batch_end, trainer, batch_idx)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        bridge = self._bridge
        if bridge.foreign:
            bridge.deliver_fact(self, "on_pre_optimizer_step")

    def _batch_end(self, trainer: pl.Trainer, batch_idx: int) -> None:
        bridge = self._bridge
        # The optimizer stepped during this batch iff global_step moved.
        stepped = bridge.step_open and trainer.global_step != bridge.step_from
        if bridge.foreign:
            fact = "on_optimizer_step" if stepped else "on_substep_end"
            bridge.facts["batch_end"] = fact if bridge.step_open else None
        if not stepped:
            return
        bridge.step_open = False
        contract = bridge.session.contract
        contract.step_end(trainer.global_step, _epoch(trainer, batch_idx + 1))
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            contract.epoch_last_step()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        bridge = self._bridge
        if self.first:
            bridge.tap.last_eval = {}
        self._hook("validation_start", trainer, pl_module, self._validation_start, trainer)

    def _validation_start(self, trainer: pl.Trainer) -> None:
        bridge = self._bridge
        contract = bridge.session.contract
        if contract.training and trainer.should_stop and bridge.epoch_evaluation:
            # Stopping mid-epoch: this validation is the last of the epoch, the one HF runs
            # after on_epoch_end under a per-epoch eval_strategy.
            contract.epoch_last_step()
        contract.evaluate_begin(epoch_evaluation=bridge.epoch_evaluation)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        bridge = self._bridge
        if bridge.foreign and not trainer.sanity_checking:
            bridge.deliver_fact(self, "on_prediction_step")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = dict(self._bridge.tap.last_eval) or {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if getattr(v, "numel", lambda: 1)() == 1
        }
        self._hook("validation_end", trainer, pl_module, self._bridge.session.contract.evaluate,
                   metrics)  # fmt: skip

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:  # fmt: skip
        self._hook("save", trainer, pl_module, self._bridge.session.contract.save)
        if self.last:
            # Lightning took state_dict() before this hook: take it again, so that the
            # checkpoint holds what the callbacks did in on_save (HF writes it after on_save).
            state = self._bridge.session.state_dict()
            if state:  # Lightning stores non-empty states only
                first = self._bridge.segments[0]
                checkpoint.setdefault("callbacks", {})[first.state_key] = state

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._hook("exception", trainer, pl_module, self._bridge.session.contract.exception,
                   exception)  # fmt: skip
        if self.last:
            self._bridge.stop()

    def state_dict(self) -> dict[str, Any]:
        return self._bridge.session.state_dict() if self.first else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.first:
            self._bridge.session.load_state_dict(state_dict)


def callbacks(source: Any, *, inject: Mapping[str, Any] | None = None) -> list[Callback]:
    """Build a configuration's callbacks for ``L.Trainer(callbacks=...)``.

    Neutral callbacks are wrapped, one Lightning callback per run of consecutive
    ones; native Lightning callbacks (e.g. ``lightning.pytorch.callbacks.ModelCheckpoint``)
    pass through. Under ``custom_callbacks_only`` the list starts with a callback
    that turns the progress bar and the model summary off at ``setup``.

    Raises:
        callbridge.ConfigError: the configuration is invalid, or names a native callback
            that is neither Lightning's nor a ``transformers.TrainerCallback``
            (which runs through :class:`HFCallbackOnLightning`).
    """
    binding = callbridge.bind(source, framework="lightning", inject=inject, adopt=adopt)
    bridge = _Bridge(binding.session)
    for index, built in enumerate(binding.session.entries):
        if isinstance(built.callback, HFCallbackOnLightning):
            bridge.foreign.append(index)
            built.callback.defer = bridge.defer
    out: list[Callback] = [_DisplayOff()] if binding.session.config.custom_callbacks_only else []
    layout = binding.layout()
    spans = [item for item in layout if isinstance(item, range)]
    for item in layout:
        if isinstance(item, range):
            out.append(
                NeutralCallback(bridge, item, first=item is spans[0], last=item is spans[-1])
            )
        else:
            out.append(item.callback)
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


def unwrap(callbacks: Any) -> list[Any]:
    """The neutral callbacks inside a trainer's callback list, in configured order.

    Args:
        callbacks: a list of callbacks (``trainer.callbacks``, what :func:`callbacks`
            returned, ...).
    """
    return [c for cb in callbacks if isinstance(cb, NeutralCallback) for c in cb.callbacks]
