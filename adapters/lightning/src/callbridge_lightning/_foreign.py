"""Unmodified Hugging Face ``TrainerCallback``s under the Lightning ``Trainer``.

A configuration entry that builds a ``transformers.TrainerCallback`` (``transformers.
EarlyStoppingCallback``, ``trl.BEMACallback``, a company's own) is adopted at bind time
(:func:`adopt`): it becomes a neutral callback, :class:`HFCallbackOnLightning`, that holds
the unmodified HF callback and hands it what the HF ``Trainer`` would:

* ``args``: :class:`LightningTrainingArguments`, the ``TrainingArguments`` fields that
  callbacks read, taken from the Lightning trainer (``training_args`` of the entry sets
  what Lightning does not know, such as ``metric_for_best_model``);
* ``state``: a real ``transformers.TrainerState``, kept as HF keeps it (``global_step``,
  fractional ``epoch``, ``log_history``, ``best_metric``, ``stateful_callbacks``...);
* ``control``: a real ``transformers.TrainerControl``, mapped back
  (``should_training_stop`` stops Lightning on every rank; ``should_save`` writes a
  Lightning checkpoint);
* the keyword arguments of ``CallbackHandler.call_event``: ``model`` (the HF model inside
  the LightningModule, else the module), ``processing_class``, ``optimizer``,
  ``lr_scheduler``, ``train_dataloader``, ``eval_dataloader``.

The events are the neutral contract's, so they come in HF's order with HF's meaning
(the core orders them); what the contract does not carry (micro-batches, the optimizer
step) the Lightning adapter tells the wrapper through :meth:`HFCallbackOnLightning.fact`.
``transformers`` is imported only when such an entry exists.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import callbridge
from callbridge import Built, Run

logger = logging.getLogger("callbridge")

#: The keyword arguments HF's ``CallbackHandler.call_event`` passes to every hook.
KWARGS: tuple[str, ...] = (
    "model",
    "processing_class",
    "optimizer",
    "lr_scheduler",
    "train_dataloader",
    "eval_dataloader",
)

#: Lightning's usual logged names and HF's names for them (an entry's ``metric_names`` adds
#: to and overrides this). In an evaluation every other name gets HF's ``eval_`` prefix
#: (``val_`` is replaced by it: ``val_loss`` -> ``eval_loss``).
DEFAULT_METRIC_NAMES: dict[str, str] = {
    "train_loss": "loss",
    "lr": "learning_rate",
    "val_loss": "eval_loss",
}

#: What callbacks reach for in kwargs that HF's Trainer does not pass either but a
#: subclass or an integration may (``kwargs["trainer"]``), and what to use instead. A
#: ``KeyError`` for one of these names is reported as such; any other ``KeyError`` (a
#: missing metric, say) is the callback's own and passes unchanged.
NOT_PASSED: dict[str, str] = {
    "trainer": "the HF Trainer itself (run.native['trainer'] is the Lightning trainer)",
    "accelerator": "the Trainer's Accelerator (Lightning's strategy is "
    "run.native['trainer'].strategy)",
    "model_wrapped": "the wrapped model (run.native['trainer'].strategy.model under Lightning)",
    "tokenizer": "the tokenizer (HF passes it as processing_class)",
}


class NotEmulatedError(callbridge.CallbridgeError, AttributeError):
    """An HF callback reached for something the Lightning emulation does not provide."""


class LightningTrainingArguments:
    """What a ``TrainerCallback`` reads of ``args``, taken from the Lightning trainer.

    The ``TrainingArguments`` fields listed in :meth:`fields` are set; reading any
    other raises :class:`NotEmulatedError` (an ``AttributeError``, so that
    ``getattr(args, name, default)`` still works) naming the callback, the field and
    how to set it.
    """

    def __init__(self, owner: str, values: Mapping[str, Any]) -> None:
        self.__dict__["_owner"] = owner
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        owner = self.__dict__["_owner"]
        raise NotEmulatedError(
            f"{owner} reads args.{name}, which the HF emulation under Lightning does not "
            f"set (it sets: {', '.join(self.fields())}). Set it for this entry with "
            f"callbridge_lightning.HFCallbackOnLightning(callback=..., training_args="
            f"{{{name!r}: ...}}), or write a neutral callbridge.Callback "
            "(run.native['trainer'] is the Lightning trainer)"
        )

    def fields(self) -> list[str]:
        """The fields set, sorted."""
        return sorted(k for k in self.__dict__ if not k.startswith("_"))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (``TrainingArguments.to_dict``)."""
        return {k: self.__dict__[k] for k in self.fields()}

    def __repr__(self) -> str:
        return f"LightningTrainingArguments({self.to_dict()})"


def training_arguments(owner: str, trainer: Any, overrides: Mapping[str, Any]) -> Any:
    """The ``args`` an HF callback gets under this Lightning trainer (``overrides`` win)."""
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy

    accumulate = int(trainer.accumulate_grad_batches)
    interval = trainer.val_check_interval
    if not trainer.enable_validation:
        eval_strategy, eval_steps = IntervalStrategy.NO, None
    elif isinstance(interval, int):
        # val_check_interval counts batches; HF's eval_steps counts optimizer steps.
        eval_strategy, eval_steps = IntervalStrategy.STEPS, max(1, interval // accumulate)
    else:
        eval_strategy, eval_steps = IntervalStrategy.EPOCH, None
    save_strategy, save_steps = SaveStrategy.NO, None
    for ckpt in trainer.checkpoint_callbacks:
        every = getattr(ckpt, "_every_n_train_steps", 0)
        if every:
            save_strategy, save_steps = SaveStrategy.STEPS, int(every)
            break
        save_strategy = SaveStrategy.EPOCH
    train_loader = trainer.train_dataloader
    val_loaders = trainer.val_dataloaders
    val_loader = val_loaders[0] if isinstance(val_loaders, (list, tuple)) else val_loaders
    optimizers = trainer.optimizers
    lr = float(optimizers[0].param_groups[0]["lr"]) if optimizers else None
    seed = os.environ.get("PL_GLOBAL_SEED")  # set by lightning.seed_everything
    values: dict[str, Any] = {
        "output_dir": str(trainer.default_root_dir),
        "logging_dir": str(trainer.log_dir or trainer.default_root_dir),
        "logging_strategy": IntervalStrategy.STEPS,
        "logging_steps": int(trainer.log_every_n_steps),
        "logging_first_step": False,
        "eval_strategy": eval_strategy,
        "eval_steps": eval_steps,
        "save_strategy": save_strategy,
        "save_steps": save_steps,
        "gradient_accumulation_steps": accumulate,
        "max_steps": int(trainer.max_steps),
        "num_train_epochs": trainer.max_epochs if trainer.max_epochs is not None else -1,
        "per_device_train_batch_size": getattr(train_loader, "batch_size", None),
        "per_device_eval_batch_size": getattr(val_loader, "batch_size", None),
        "learning_rate": lr,
        "max_grad_norm": trainer.gradient_clip_val,
        "process_index": int(trainer.global_rank),
        "local_process_index": int(trainer.local_rank),
        "local_rank": int(trainer.local_rank),
        "world_size": int(trainer.world_size),
        "n_gpu": 0,
        "seed": int(seed) if seed is not None else 42,
        "metric_for_best_model": None,
        "greater_is_better": None,
        "load_best_model_at_end": False,
        "report_to": [],
        "run_name": None,
        "disable_tqdm": not trainer.progress_bar_callback,
        "should_save": bool(trainer.is_global_zero),
        "should_log": bool(trainer.is_global_zero),
        "restore_callback_states_from_checkpoint": True,
        "include_num_input_tokens_seen": "no",
    }
    values.update(overrides)
    # TrainingArguments.__post_init__'s rules for the best-model fields.
    if values["load_best_model_at_end"] and values["metric_for_best_model"] is None:
        values["metric_for_best_model"] = "loss"
    metric = values["metric_for_best_model"]
    if values["greater_is_better"] is None and metric is not None:
        values["greater_is_better"] = not str(metric).endswith("loss")
    for key, enum in (
        ("eval_strategy", IntervalStrategy),
        ("save_strategy", SaveStrategy),
        ("logging_strategy", IntervalStrategy),
    ):
        if isinstance(values[key], str):
            values[key] = enum(values[key])
    return LightningTrainingArguments(owner, values)


def hf_model(module: Any) -> Any:
    """The HF model a LightningModule holds as an attribute (``model``), else the module."""
    from transformers import PreTrainedModel

    if isinstance(module, PreTrainedModel):
        return module
    for child in module.children():
        if isinstance(child, PreTrainedModel):
            return child
    return module


def hf_names(
    logs: Mapping[str, float], names: Mapping[str, str], *, evaluation: bool
) -> dict[str, float]:
    """Lightning's logged names as HF's (``names`` first, then ``eval_`` in an evaluation)."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        if key == "step":
            continue  # HF's step is in log_history, not in the logs a callback gets
        name = names.get(key)
        if name is None:
            if evaluation and key != "epoch" and not key.startswith("eval_"):
                name = "eval_" + key.removeprefix("val_").removeprefix("val/")
            else:
                name = key
        out[name] = value
    return out


class HFCallbackOnLightning(callbridge.Callback):
    """An unmodified ``transformers.TrainerCallback`` under the Lightning ``Trainer``.

    A configuration entry that names a ``TrainerCallback`` is wrapped in this with the
    defaults; name this class instead to set the entry's emulation::

        { name = "callbridge_lightning.HFCallbackOnLightning", args = {
            callback = { name = "transformers.EarlyStoppingCallback",
                         args = { early_stopping_patience = 2 } },
            training_args = { metric_for_best_model = "eval_loss" },
            metric_names = { "val/acc" = "eval_accuracy" } } }

    Args:
        callback: the ``TrainerCallback`` (an instance, or a nested entry that builds one).
        training_args: ``TrainingArguments`` fields that Lightning does not know
            (``metric_for_best_model``, ``greater_is_better``, ``load_best_model_at_end``,
            ``report_to``, ...) or that should differ from what it says.
        metric_names: Lightning's logged names to HF's, added to
            :data:`DEFAULT_METRIC_NAMES` (``{"val_acc": "eval_accuracy"}``).
    """

    def __init__(
        self,
        callback: Any,
        training_args: dict[str, Any] | None = None,
        metric_names: dict[str, str] | None = None,
    ) -> None:
        from transformers import TrainerCallback

        if isinstance(callback, type):
            callback = callback()
        if not isinstance(callback, TrainerCallback):
            raise TypeError(
                "HFCallbackOnLightning(callback=...): expected a transformers.TrainerCallback "
                f"(got {type(callback).__module__}.{type(callback).__qualname__})"
            )
        self.callback = callback
        self.training_args = dict(training_args or {})
        self.metric_names = {**DEFAULT_METRIC_NAMES, **(metric_names or {})}
        self.name = f"{type(callback).__module__}.{type(callback).__qualname__}"
        self.args: Any = None
        self.state: Any = None
        self.control: Any = None
        self.kwargs: dict[str, Any] = {}
        self._init_done = False
        self._evaluating = False
        self._eval_logs: dict[str, float] | None = None
        self._saved_at: int | None = None
        self._restored: dict[str, Any] | None = None
        self._saving: str | None = None
        #: Set by the Lightning adapter: runs work once the current hook's events are delivered.
        self.defer: Callable[[Callable[[], None]], None] | None = None

    def __repr__(self) -> str:
        return f"HFCallbackOnLightning({self.callback!r})"

    # -- the emulated HF objects --------------------------------------------------------------

    def _native(self, run: Run) -> tuple[Any, Any]:
        trainer = run.native.get("trainer")
        if run.framework != "lightning" or trainer is None:
            raise NotEmulatedError(
                f"HFCallbackOnLightning({self.name}) runs under the Lightning Trainer only; "
                "under the HF Trainer name the TrainerCallback itself in the configuration"
            )
        return trainer, run.native.get("pl_module", run.model)

    def _begin(self, run: Run) -> None:
        """At train begin: ``args``, ``state``, ``control`` and kwargs, as HF sets them up."""
        from transformers import TrainerControl, TrainerState

        trainer, module = self._native(run)
        self.args = training_arguments(self.name, trainer, self.training_args)
        restored = self._restored or {}
        st = TrainerState()
        for key, value in restored.get("trainer_state", {}).items():
            setattr(st, key, value)
        st.max_steps = run.state.max_steps or 0
        st.num_train_epochs = run.state.num_epochs or 0
        st.logging_steps = self.args.logging_steps
        st.eval_steps = self.args.eval_steps or st.eval_steps
        st.save_steps = self.args.save_steps or st.save_steps
        st.train_batch_size = self.args.per_device_train_batch_size
        st.is_world_process_zero = bool(run.state.is_main_process)
        st.is_local_process_zero = int(trainer.local_rank) == 0
        self.state = st
        self.control = TrainerControl()
        control_state = restored.get("control")
        if control_state:
            for key, value in control_state.get("args", {}).items():
                setattr(self.control, key, value)
        schedulers = trainer.lr_scheduler_configs
        processing_class = getattr(module, "processing_class", None)
        if processing_class is None:
            processing_class = getattr(module, "tokenizer", None)
        self.kwargs = {
            "model": hf_model(module),
            "processing_class": processing_class,
            "optimizer": trainer.optimizers[0] if trainer.optimizers else None,
            "lr_scheduler": schedulers[0].scheduler if schedulers else None,
            "train_dataloader": trainer.train_dataloader,
            "eval_dataloader": trainer.val_dataloaders,
        }
        self._sync(run)

    def _sync(self, run: Run) -> None:
        st = self.state
        st.global_step = run.state.global_step
        st.epoch = run.state.epoch
        st.is_world_process_zero = bool(run.state.is_main_process)
        # A stop asked for by anyone (another callback, another rank) is HF's too.
        if run.control.should_stop:
            self.control.should_training_stop = True

    def _call(self, run: Run, hook: str, *, sync: bool = True, **extra: Any) -> None:
        """Call the HF hook with HF's arguments; map ``control`` back."""
        if self.state is None:
            return  # not training (a standalone validate): HF has no trainer state either
        if sync:
            self._sync(run)
        elif run.control.should_stop:
            self.control.should_training_stop = True
        method = getattr(self.callback, hook)
        try:
            result = method(self.args, self.state, self.control, **self.kwargs, **extra)
        except KeyError as exc:
            key = exc.args[0] if exc.args else None
            if key in NOT_PASSED:
                what = NOT_PASSED[key]
                raise NotEmulatedError(
                    f"{self.name}.{hook} reads kwargs[{key!r}] ({what}), which the HF "
                    f"emulation under Lightning does not pass (it passes: "
                    f"{', '.join([*self.kwargs, *extra])}). Write it as a neutral "
                    "callbridge.Callback: run.native['trainer'] and run.native['pl_module'] "
                    "are Lightning's objects"
                ) from exc
            raise
        except Exception as exc:
            # Re-raised as is, or with the unset args field it names and how to set it.
            unset = [
                name
                for name in self.args.fields()
                if getattr(self.args, name) is None and name in str(exc)
            ]
            if not unset:
                raise
            raise NotEmulatedError(
                f"{self.name}.{hook} failed: {exc} (args.{unset[0]} is None: the Lightning "
                "trainer has no such setting. Set it for this entry with "
                "callbridge_lightning.HFCallbackOnLightning(callback=..., training_args="
                f"{{{unset[0]!r}: ...}}))"
            ) from exc
        if result is not None:
            self.control = result
        if self.control.should_training_stop:
            run.control.should_stop = True
        if self.control.should_save and hook in ("on_step_end", "on_log", "on_evaluate"):
            self._request_save(run)

    def _request_save(self, run: Run) -> None:
        step = run.state.global_step
        if self._saved_at == step or self.defer is None:
            return
        self._saved_at = step
        from ._adapter import requested_checkpoint  # the adapter imports this module

        trainer, _ = self._native(run)
        path = requested_checkpoint(trainer)
        self.defer(lambda: trainer.save_checkpoint(path))
        self._saving = str(path)

    # -- neutral hooks, HF's events ----------------------------------------------------------

    def on_train_begin(self, run: Run) -> None:
        self._begin(run)
        if not self._init_done:
            self._init_done = True
            self._call(run, "on_init_end")
        self.control.should_training_stop = False  # CallbackHandler.on_train_begin
        self._call(run, "on_train_begin")

    def on_epoch_begin(self, run: Run) -> None:
        if self.control is not None:
            self.control.should_epoch_stop = False
        self._call(run, "on_epoch_begin")

    def on_step_begin(self, run: Run) -> None:
        if self.control is not None:
            self.control.should_log = self.control.should_evaluate = False
            self.control.should_save = False
        self._call(run, "on_step_begin")

    def fact(self, run: Run, hook: str) -> None:
        """What the contract does not carry, told by the Lightning adapter.

        ``hook`` is ``on_substep_end`` (a micro-batch ended inside an optimizer step),
        ``on_pre_optimizer_step`` (Lightning's ``on_before_optimizer_step``),
        ``on_optimizer_step`` (the optimizer stepped; before ``on_step_end``) or
        ``on_prediction_step`` (an evaluation batch ended). The state is the one of the
        last event: HF counts the step (``global_step += 1``) after ``on_optimizer_step``.
        """
        self._call(run, hook, sync=False)

    def on_step_end(self, run: Run) -> None:
        self._call(run, "on_step_end")

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        if self.state is None:
            return
        hf_logs = hf_names(logs, self.metric_names, evaluation=self._evaluating)
        hf_logs.pop("epoch", None)
        hf_logs["epoch"] = run.state.epoch  # Trainer.log adds it last
        self.state.log_history.append({**hf_logs, "step": run.state.global_step})
        if self._evaluating:
            self._eval_logs = hf_logs
        if self.control is not None:
            self.control.should_log = False
        self._call(run, "on_log", logs=dict(hf_logs))

    def on_evaluate_begin(self, run: Run) -> None:
        self._evaluating = True
        self._eval_logs = None

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self._evaluating = False
        if self.state is None:
            return
        # HF logs the evaluation's metrics (epoch added) and hands the same dict on.
        hf_metrics = self._eval_logs
        if hf_metrics is None:
            hf_metrics = hf_names(metrics, self.metric_names, evaluation=True)
            hf_metrics.pop("epoch", None)
            hf_metrics["epoch"] = run.state.epoch
        self._eval_logs = None
        self.control.should_evaluate = False
        self._call(run, "on_evaluate", metrics=hf_metrics)
        self._best_metric(hf_metrics, run)

    def _best_metric(self, metrics: Mapping[str, float], run: Run) -> None:
        """``Trainer._determine_best_metric``, after ``on_evaluate`` as HF calls it."""
        import numpy as np
        from transformers.trainer_utils import SaveStrategy

        args, st = self.args, self.state
        metric = args.metric_for_best_model
        if metric is None:
            return
        if not metric.startswith("eval_"):
            metric = f"eval_{metric}"
        if metric not in metrics:
            logger.warning(
                "callbridge: %s: metric_for_best_model %r is not among the evaluation's "
                "metrics %s; map Lightning's name to it with metric_names",
                self.name,
                metric,
                sorted(metrics),
            )
            return
        operator = np.greater if args.greater_is_better else np.less
        if st.best_metric is None:
            st.best_metric = float("-inf") if args.greater_is_better else float("inf")
        if operator(metrics[metric], st.best_metric):
            st.best_metric = metrics[metric]
            if args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST):
                st.best_global_step = st.global_step

    def on_save(self, run: Run) -> None:
        if self.state is None:
            return
        from transformers.trainer_callback import ExportableState

        st = self.state
        saving = self._saving
        if saving is not None and st.best_global_step == run.state.global_step:
            st.best_model_checkpoint = saving
        self._saving = None
        st.stateful_callbacks = {
            type(cb).__name__: cb.state()
            for cb in (self.callback, self.control)
            if isinstance(cb, ExportableState)
        }
        self.control.should_save = False
        self._call(run, "on_save")

    def on_epoch_end(self, run: Run) -> None:
        self._call(run, "on_epoch_end")

    def on_train_end(self, run: Run) -> None:
        self._call(run, "on_train_end")

    # -- state across a Lightning checkpoint ---------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The HF callback's ``ExportableState`` and the ``TrainerState`` fields HF restores."""
        from transformers.trainer_callback import ExportableState

        out: dict[str, Any] = {}
        if isinstance(self.callback, ExportableState):
            out["callback"] = self.callback.state()
        if self.state is not None:
            st = self.state
            out["trainer_state"] = {
                "log_history": list(st.log_history),
                "best_metric": st.best_metric,
                "best_global_step": st.best_global_step,
                "best_model_checkpoint": st.best_model_checkpoint,
                "total_flos": st.total_flos,
                "num_input_tokens_seen": st.num_input_tokens_seen,
            }
            out["control"] = self.control.state()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """As ``Trainer._load_callback_state``: a new callback from the saved ``args``, then
        the saved attributes; the ``TrainerState`` fields at the next train begin."""
        saved = state.get("callback")
        if saved is not None:
            restored = type(self.callback)(**saved.get("args", {}))
            for key, value in saved.get("attributes", {}).items():
                setattr(restored, key, value)
            self.callback = restored
        self._restored = {k: v for k, v in state.items() if k != "callback"}


def adopt(built: Built) -> callbridge.Callback | None:
    """The neutral callback that runs a configuration's HF callback under Lightning.

    None (the usual error) for anything that is not a ``transformers.TrainerCallback``.
    """
    obj = built.callback
    roots = {klass.__module__.partition(".")[0] for klass in type(obj).__mro__}
    if not roots & {"transformers", "trl"}:
        return None
    from transformers import TrainerCallback

    if not isinstance(obj, TrainerCallback):
        return None
    return HFCallbackOnLightning(obj)
