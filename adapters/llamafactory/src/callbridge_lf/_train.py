"""Training through LLaMA-Factory's own ``run_exp``, the configuration's callbacks built inside it.

LLaMA-Factory builds its argument objects, model, tokenizer and trainer inside
``run_exp``. The callbacks are therefore built at the end of the trainer's
initialisation (``on_init_end``), by a callback handed to ``run_exp``: by then the
trainer exists, and so do the argument objects it uses. They are injected as they are,
never parsed a second time: ``training_args`` is the trainer's ``args``, and
``model_args``, ``data_args``, ``finetuning_args`` and ``generating_args`` are the
objects LLaMA-Factory handed its ``ReporterCallback`` (0.9.5 builds them once, in
``_training_function``, and hands the same objects to the stage's workflow).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import callbridge_hf
from callbridge import CallbridgeError, ConfigError
from callbridge_hf._adapter import calling_trainer

from ._config import LFConfig, callback_problems, read, unknown_keys

logger = logging.getLogger("callbridge")


class Injector(TrainerCallback):
    """Builds the configuration's callbacks once LLaMA-Factory's trainer exists, in its own place.

    At ``on_init_end`` the callbacks are built with the trainer, its model, its
    tokenizer and LLaMA-Factory's argument objects injected, attached to the trainer
    (``callbridge_hf.attach``: HF's display callbacks dropped under
    ``custom_callbacks_only``), and this callback leaves the list. Under
    ``custom_callbacks_only`` LLaMA-Factory's own display and reporting callbacks
    (``LogCallback``, ``ReporterCallback``) go too; flow control stays (HF's
    ``DefaultFlowCallback``, LLaMA-Factory's early stopping and PiSSA conversion).

    Attributes:
        context: what was injected (None until the trainer initialised).
        added: what the configuration put on the trainer's list, in order (HF wrappers
            of the neutral callbacks, native callbacks as they are).
    """

    def __init__(self, config: LFConfig, inject: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.inject = dict(inject or {})
        self.context: dict[str, Any] | None = None
        self.added: list[Any] = []

    @property
    def callbacks(self) -> list[Any]:
        """The configuration's callbacks on the trainer, in order: neutral ones unwrapped."""
        out: list[Any] = []
        for item in self.added:
            if isinstance(item, callbridge_hf.NeutralCallback):
                out += callbridge_hf.unwrap([item])
            else:
                out.append(item)
        return out

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.context is not None:
            return
        trainer = _calling_trainer()
        handler = trainer.callback_handler
        context: dict[str, Any] = {
            **lf_arguments(handler.callbacks),
            "trainer": trainer,
            "training_args": args,
            "tokenizer": trainer.processing_class,
            "dataset_module": {
                "train_dataset": trainer.train_dataset,
                "eval_dataset": trainer.eval_dataset,
            },
            **self.inject,
        }
        self.context = context
        before = [cb for cb in handler.callbacks if cb is not self]
        # A new list: HF is iterating the current one to call on_init_end right now.
        handler.callbacks = list(before)
        callbridge_hf.attach(trainer, self.config.callbacks, inject=context)
        self.added = [cb for cb in handler.callbacks if not any(cb is b for b in before)]
        if self.config.callbacks.custom_callbacks_only:
            from llamafactory.train.callbacks import LogCallback, ReporterCallback

            display = (LogCallback, ReporterCallback)
            handler.callbacks = [
                cb
                for cb in handler.callbacks
                if not isinstance(cb, display) or any(cb is a for a in self.added)
            ]
        # What HF would have given them, had they been in the list from the start.
        for callback in self.added:
            callback.on_init_end(args, state, control, **kwargs)


def lf_arguments(callbacks: Sequence[Any]) -> dict[str, Any]:
    """LLaMA-Factory's argument objects, taken from the ``ReporterCallback`` it built with them.

    Raises:
        CallbridgeError: no such callback (a LLaMA-Factory that builds its trainer otherwise).
    """
    from llamafactory.train.callbacks import ReporterCallback

    for callback in callbacks:
        if isinstance(callback, ReporterCallback):
            return {
                "model_args": callback.model_args,
                "data_args": callback.data_args,
                "finetuning_args": callback.finetuning_args,
                "generating_args": callback.generating_args,
            }
    raise CallbridgeError(
        "callbridge-lf: LLaMA-Factory's ReporterCallback is not among the trainer's callbacks, "
        "so its argument objects cannot be found; this LLaMA-Factory builds its trainer "
        "differently from 0.9.5, the version callbridge-lf is tested with"
    )


def _calling_trainer() -> Trainer:
    """The Trainer whose ``__init__`` is calling ``on_init_end`` (up the call stack)."""
    trainer = calling_trainer()
    if trainer is None:
        raise CallbridgeError("callbridge-lf: on_init_end was not called by a Trainer")
    return trainer


def prepare(args: Any = None, overrides: Sequence[str] = ()) -> LFConfig:
    """Read and split the configuration; raise every problem found before anything loads.

    Always reported: keys neither LLaMA-Factory nor callbridge knows, and malformed
    callbridge keys. With ``strict: true`` also every problem of a callback entry (an
    unknown name, a misspelt argument, a missing variable); otherwise such a callback
    is skipped with an error when the trainer is built, as the reference document
    promises ("failed callback loading won't stop training").

    Raises:
        callbridge.ConfigError: with every problem.
    """
    config = args if isinstance(args, LFConfig) else read(args, overrides)
    problems = unknown_keys(config)
    if config.callbacks.strict:
        problems += callback_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def run_exp(
    args: Any = None,
    callbacks: list[TrainerCallback] | None = None,
    *,
    overrides: Sequence[str] = (),
    inject: Mapping[str, Any] | None = None,
) -> Injector:
    """Train as ``llamafactory.train.tuner.run_exp`` does, with the configuration's callbacks.

    Args:
        args: the training YAML (path), a mapping of its keys, ``[file, "key=value", ...]``,
            or None for ``sys.argv[1:]``; callbridge's keys may sit among LLaMA-Factory's.
        callbacks: further ``TrainerCallback`` objects, as LLaMA-Factory's ``run_exp`` takes.
        overrides: ``key=value`` strings merged over the file, as on the command line.
        inject: further objects to inject by parameter name (they win).

    Returns:
        The injector: ``.context`` holds what was injected, ``.added`` the callbacks.

    Raises:
        callbridge.ConfigError: a problem found before training (nothing was loaded).
    """
    config = prepare(args, overrides)
    from llamafactory.train.tuner import run_exp as lf_run_exp

    injector = Injector(config, inject)
    lf_run_exp(args=dict(config.lf_args), callbacks=[*(callbacks or []), injector])
    return injector
