"""``my_company.callbacks``: native HF callbacks in the reference document's style.

Each writes what it saw as JSON lines into the run's output directory, so that a test
of a ``callbridge-lf`` process can read it afterwards.
"""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import TrainerCallback


def _append(args: Any, filename: str, record: dict[str, Any]) -> None:
    if not args.should_save:  # the main process only, as the reference's callbacks would
        return
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, filename), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


class MonitorCallback(TrainerCallback):
    """Records every log (named alone in the reference's mixed example: defaults only)."""

    def __init__(self, interval=1):
        self.interval = interval
        self.seen: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step % self.interval == 0:
            self.seen.append(dict(logs or {}))
            _append(args, "monitor_callback.jsonl", {"step": state.global_step, **(logs or {})})


class AlertCallback(TrainerCallback):
    """Alerts when the training loss exceeds ``alert_threshold``."""

    def __init__(self, alert_threshold=1.0):
        self.alert_threshold = alert_threshold
        self.alerts: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and loss > self.alert_threshold:
            self.alerts.append(loss)
            _append(args, "alerts.jsonl", {"step": state.global_step, "loss": loss})


class FlakyCallback(TrainerCallback):
    """Raises in every ``on_log``: the kind of bug the reference says is isolated."""

    def __init__(self):
        self.calls = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.calls += 1
        raise ConnectionError("metrics backend unreachable")


class ContextProbe(TrainerCallback):
    """Takes every object callbridge-lf injects, and keeps them for the test to compare."""

    def __init__(
        self,
        model_args,
        data_args,
        training_args,
        finetuning_args,
        generating_args,
        trainer,
        model,
        tokenizer,
        dataset_module,
        debug=False,
    ):
        self.injected = {
            "model_args": model_args,
            "data_args": data_args,
            "training_args": training_args,
            "finetuning_args": finetuning_args,
            "generating_args": generating_args,
            "trainer": trainer,
            "model": model,
            "tokenizer": tokenizer,
            "dataset_module": dataset_module,
        }
        self.debug = debug
