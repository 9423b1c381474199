"""Per-event cost of the adapters, against native callbacks, measured side by side.

For each framework: a no-op native callback and a no-op neutral callback
(through the adapter) receive the same hook calls; the ratio is the adapter's
overhead per event. Then a tiny real training run gives the time of one
optimizer step, and the adapter's share of it (per-step events x extra cost per
event / step time).

Run: ``nox -s bench`` or ``python benchmarks/dispatch.py`` with both adapters installed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import callbridge
import callbridge.testing


class NoOp(callbridge.Callback):
    """A neutral callback that implements the step hooks and does nothing."""

    def on_step_begin(self, run: callbridge.Run) -> None:
        pass

    def on_step_end(self, run: callbridge.Run) -> None:
        pass


def per_call(fn: Callable[[], None], *, calls: int, repeats: int) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` timed loops."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def interleaved(
    fns: dict[str, Callable[[], None]], *, calls: int, repeats: int
) -> dict[str, float]:
    """Time several functions in alternation, so drift hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(per_call(fn, calls=calls, repeats=1))
    return {name: statistics.median(values) for name, values in samples.items()}


# -- Hugging Face --------------------------------------------------------------------------


def hf_events(calls: int, repeats: int) -> dict[str, float]:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import CallbackHandler

    import callbridge_hf

    class NativeNoOp(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            pass

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            pass

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, use_cpu=True, report_to=[])
    state, control = TrainerState(), TrainerControl()
    with callbridge.testing.use_registry() as registry:
        registry.register("noop", NoOp)
        (neutral,) = callbridge_hf.callbacks({"custom_callbacks": ["noop"]})
    native = NativeNoOp()
    handlers = {
        name: CallbackHandler([cb], None, None, None, None)
        for name, cb in (("native", native), ("neutral", neutral))
    }

    def pair(handler: CallbackHandler) -> Callable[[], None]:
        def step() -> None:
            handler.on_step_begin(args, state, control)
            state.global_step += 1
            handler.on_step_end(args, state, control)

        return step

    results = interleaved({k: pair(h) for k, h in handlers.items()}, calls=calls, repeats=repeats)
    return {k: v / 2 for k, v in results.items()}  # two events per step


def hf_step_time(steps: int) -> float:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    )
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (steps * 4, 16))]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=4, logging_steps=10**6,
            save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=data)
        out = trainer.train()
    return float(out.metrics["train_runtime"]) / steps


# -- Lightning -----------------------------------------------------------------------------


def lightning_events(calls: int, repeats: int) -> dict[str, float]:
    import lightning.pytorch as pl
    import torch

    import callbridge_lightning

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

    class NativeNoOp(pl.Callback):
        def on_train_batch_start(
            self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
        ) -> None:
            pass

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            pass

    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False,
    )  # fmt: skip
    module = Module()
    trainer.strategy.connect(module)
    # Drive global_step by hand: it is what tells the adapter that the optimizer stepped.
    progress = (
        trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total
    )
    with callbridge.testing.use_registry() as registry:
        registry.register("noop", NoOp)
        (neutral,) = callbridge_lightning.callbacks({"custom_callbacks": ["noop"]})
    native = NativeNoOp()

    from lightning.pytorch.trainer import call

    def pair(cb: Any) -> Callable[[], None]:
        # Through Lightning's own hook caller, as the trainer pays it per event.
        def step() -> None:
            trainer.callbacks = [cb]
            call._call_callback_hooks(trainer, "on_train_batch_start", None, 0)
            progress.completed += 1
            call._call_callback_hooks(trainer, "on_train_batch_end", None, None, 0)

        return step

    results = interleaved(
        {"native": pair(native), "neutral": pair(neutral)}, calls=calls, repeats=repeats
    )
    return {k: v / 2 for k, v in results.items()}


def lightning_step_time(steps: int) -> float:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Sequential(
                torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
            )

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = DataLoader(
        TensorDataset(torch.randn(steps * 8, 32), torch.randn(steps * 8, 1)), batch_size=8
    )
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(Module(), data)
    return (time.perf_counter() - start) / steps


def report(name: str, events: dict[str, float], step: float, events_per_step: int) -> None:
    native, neutral = events["native"], events["neutral"]
    extra = max(neutral - native, 0.0) * events_per_step
    print(f"{name}: per event  native {native * 1e6:7.2f} us   neutral {neutral * 1e6:7.2f} us   "
          f"ratio {neutral / native:5.2f}x (aim <= 1.5x)")  # fmt: skip
    print(f"{name}: tiny-model step {step * 1e3:7.2f} ms; adapter overhead per step "
          f"{extra * 1e6:6.2f} us = {100 * extra / step:.3f}% of a step (aim < 1%)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--only", choices=["hf", "lightning"])
    ns = parser.parse_args()
    import logging

    logging.getLogger("callbridge").setLevel(logging.WARNING)
    if ns.only in (None, "hf"):
        report("hf", hf_events(ns.calls, ns.repeats), hf_step_time(ns.steps), events_per_step=2)
    if ns.only in (None, "lightning"):
        report(
            "lightning",
            lightning_events(ns.calls, ns.repeats),
            lightning_step_time(ns.steps),
            events_per_step=2,
        )


if __name__ == "__main__":
    main()
