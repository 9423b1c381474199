"""Per-event cost of a neutral callback against a native no-op callback, in a real training.

Under each trainer, a real HF ``Trainer`` and a real Lightning ``Trainer`` on tiny
models built in code (no hub), the same training runs with 0, 1, 10 and 50
callbacks of each kind:

* **neutral**: a :class:`callbridge.Callback` overriding every neutral hook (body
  ``pass``), declared N times in a config given to ``callbridge_hf.attach`` /
  ``callbridge_lightning.callbacks``. The adapter makes them one native callback (a
  segment) that reports each trainer hook to the core's contract and calls the N
  callbacks through the dispatcher.
* **native**: N no-op ``TrainerCallback`` / Lightning ``Callback`` objects, each
  overriding every hook of its framework.

The seven trainings of a round (no callback; 1, 10, 50 of each kind) run side by
side in lock step: each in a thread of its own, taking turns one optimizer step at a
time (a baton passed at the step's first hook), so that whatever else the machine
is doing hits every configuration alike, step by step. A timing callback placed
first takes each step's time, from its first hook to the next step's. In a round,
a configuration's figure is the median over steps of its step time minus the
no-callback training's time for the same step; the rounds alternate the turn order,
and each figure is the median over rounds. The per-callback cost is the
least-squares slope of that added time against N (0 at N = 0; the intercept, a
segment's fixed cost, is free), and the verdict is ``slope_neutral / slope_native``
(aim: <= 1.5). The linearity check is the residual at N = 50 against that line.
The hook calls one callback of each kind receives per step are counted in a
separate run, for a per-event figure.

Run: ``nox -s bench -- benchmarks/dispatch.py`` or ``python benchmarks/dispatch.py``
with both adapters installed; ``--quick`` (2 rounds of fewer steps) or ``--rounds``
for a shorter, noisier run.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import callbridge
import callbridge.testing
from callbridge._protocol import HOOKS

# The tiny Lightning model, its data and its quiet trainer are the test suites' (tests/support).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

COUNTS = (0, 1, 10, 50)
KINDS = ("native", "neutral")
Config = tuple[str, int]  # (kind, N); N = 0 is one configuration shared by both kinds
BASE: Config = ("native", 0)


class NoOp(callbridge.Callback):
    """A neutral callback that overrides every neutral hook and does nothing."""

    def on_train_begin(self, run: callbridge.Run) -> None:
        pass

    def on_train_end(self, run: callbridge.Run) -> None:
        pass

    def on_epoch_begin(self, run: callbridge.Run) -> None:
        pass

    def on_epoch_end(self, run: callbridge.Run) -> None:
        pass

    def on_step_begin(self, run: callbridge.Run) -> None:
        pass

    def on_step_end(self, run: callbridge.Run) -> None:
        pass

    def on_log(self, run: callbridge.Run, logs: dict[str, float]) -> None:
        pass

    def on_evaluate_begin(self, run: callbridge.Run) -> None:
        pass

    def on_evaluate(self, run: callbridge.Run, metrics: dict[str, float]) -> None:
        pass

    def on_save(self, run: callbridge.Run) -> None:
        pass

    def on_exception(self, run: callbridge.Run, exc: BaseException) -> None:
        pass


_MISSING = [hook for hook in HOOKS if getattr(NoOp, hook) is getattr(callbridge.Callback, hook)]
assert not _MISSING, f"NoOp must override every neutral hook; it misses {_MISSING}"


class Counter(callbridge.Callback):
    """A neutral callback recording each event it receives as ``neutral:<hook>`` in ``sink``."""

    def __init__(self, sink: list[str]) -> None:
        self.sink = sink


for _hook in HOOKS:
    setattr(Counter, _hook, lambda self, run, *a, _h=_hook: self.sink.append(f"neutral:{_h}"))


def neutral_config(n: int) -> dict[str, Any]:
    return {"custom_callbacks": ["noop"] * n}


def noop_class(base: type, hooks: Sequence[str]) -> type:
    """A subclass of ``base`` whose ``hooks`` are all overridden by no-ops (``pass``)."""

    def noop(self: Any, *args: Any, **kwargs: Any) -> None:
        pass

    return type("NativeNoOp", (base,), {hook: noop for hook in hooks})


def counter_class(base: type, hooks: Sequence[str], sink: list[str]) -> type:
    """A subclass of ``base`` recording every call of ``hooks`` as ``native:<hook>`` in ``sink``."""
    return type(
        "NativeCounter",
        (base,),
        {h: (lambda self, *a, _h=h, **k: sink.append(f"native:{_h}")) for h in hooks},
    )


# -- lock step -----------------------------------------------------------------------------


class Baton:
    """Trainings in threads taking turns, one optimizer step each, in index order."""

    def __init__(self, n: int) -> None:
        self.cond = threading.Condition()
        self.turn = 0
        self.active = list(range(n))

    def _next(self, i: int) -> int:
        later = [j for j in self.active if j > i]
        return later[0] if later else (self.active[0] if self.active else -1)

    def wait(self, i: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == i)

    def hand_over(self, i: int) -> None:
        with self.cond:
            self.turn = self._next(i)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn == i)

    def leave(self, i: int) -> None:
        with self.cond:
            self.active.remove(i)
            if self.turn == i:
                self.turn = self._next(i)
            self.cond.notify_all()


class Pacer:
    """Called at each step's first hook: times the step that ended, then takes a turn."""

    clock: Callable[[], float] = time.perf_counter

    def __init__(self, baton: Baton, index: int) -> None:
        self.baton = baton
        self.index = index
        self.steps: list[float] = []
        self.resumed: float | None = None

    def __call__(self) -> None:
        if self.resumed is None:
            self.baton.wait(self.index)
        else:
            self.steps.append(Pacer.clock() - self.resumed)
            self.baton.hand_over(self.index)
        self.resumed = Pacer.clock()


def run_round(bench: Any, order: list[Config]) -> dict[Config, list[float]]:
    """The configurations' trainings in lock step; each one's step times."""
    baton = Baton(len(order))
    pacers = [Pacer(baton, i) for i in range(len(order))]
    trainings = []
    with callbridge.testing.use_registry() as registry:
        registry.register("noop", NoOp)
        for (kind, n), pacer in zip(order, pacers, strict=True):
            trainings.append(bench.build(kind, n, pacer))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            trainings[i]()
        except BaseException as exc:  # noqa: BLE001 - reported below, in the main thread
            errors.append(exc)
        finally:
            baton.leave(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(order))]
    # HF (through accelerate) calls gc.collect() at the end of every training: with the
    # frameworks' objects frozen out of the collector that takes ms, not most of a second.
    gc.collect()
    gc.freeze()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    out = {config: pacer.steps for config, pacer in zip(order, pacers, strict=True)}
    for config, steps in out.items():
        if len(steps) != bench.steps - 1:
            raise RuntimeError(f"{bench.name} {config}: {len(steps)} steps timed, "
                               f"expected {bench.steps - 1}")  # fmt: skip
    return out


# -- Hugging Face --------------------------------------------------------------------------


class HF:
    """A real HF ``Trainer`` (AdamW, linear schedule, gradient clipping) on ``Linear(8, 1)``."""

    name = "hf"

    def __init__(self, steps: int, tmp: str) -> None:
        import torch
        from transformers import TrainerCallback

        self.steps = steps
        self.tmp = tmp
        self.base = TrainerCallback
        self.hooks = [h for h in vars(TrainerCallback) if h.startswith("on_")]
        self.native = noop_class(TrainerCallback, self.hooks)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4 * steps, 8, generator=g)
        self.dataset = [{"x": row, "labels": row.sum(0, keepdim=True)} for row in x]
        self.title = (f"HF Trainer {_version('transformers')} (Linear(8, 1) returning its MSE "
                      "loss, batch 4, AdamW, linear schedule, gradient clipping)")  # fmt: skip

    def trainer(self, first: Any, callbacks: list[Any]) -> Any:
        import torch
        from transformers import Trainer
        from transformers.trainer_callback import PrinterCallback

        from support.hf_models import training_args

        class TinyRegressor(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.layer = torch.nn.Linear(8, 1)

            def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
                return {"loss": torch.nn.functional.mse_loss(self.layer(x), labels)}

        torch.manual_seed(0)
        args = training_args(self.tmp, max_steps=self.steps, per_device_train_batch_size=4)
        trainer = Trainer(model=TinyRegressor(), args=args, train_dataset=self.dataset,
                          callbacks=[first, *callbacks])  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # its end-of-run metrics line
        return trainer

    def first(self, at_step: Callable[[], None]) -> Any:
        """A callback calling ``at_step`` at each step's first hook (after HF's flow callback)."""

        class First(self.base):  # type: ignore[misc, name-defined]
            def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
                at_step()

        return First()

    def build(self, kind: str, n: int, at_step: Callable[[], None]) -> Callable[[], Any]:
        import callbridge_hf

        natives = [self.native() for _ in range(n)] if kind == "native" else []
        trainer = self.trainer(self.first(at_step), natives)
        if kind == "neutral" and n:
            callbridge_hf.attach(trainer, neutral_config(n))
        return trainer.train  # type: ignore[no-any-return]

    def count(self, sink: list[str]) -> None:
        import callbridge_hf

        trainer = self.trainer(self.first(lambda: sink.append("|")),
                               [counter_class(self.base, self.hooks, sink)()])  # fmt: skip
        callbridge_hf.attach(trainer, {"custom_callbacks": ["counter"]}, inject={"sink": sink})
        trainer.train()


# -- Lightning -----------------------------------------------------------------------------


class Lightning:
    """A real Lightning ``Trainer`` on the test suites' ``BoringModel`` (``Linear(8, 1)``, SGD)."""

    name = "lightning"

    def __init__(self, steps: int, tmp: str) -> None:
        import lightning.pytorch as pl

        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)  # Lightning sets INFO at import
        self.steps = steps
        self.tmp = tmp
        self.base = pl.Callback
        self.hooks = [
            h for h in vars(pl.Callback) if h.startswith("on_") or h in ("setup", "teardown")
        ]
        self.native = noop_class(pl.Callback, self.hooks)
        self.title = (f"Lightning Trainer {_version('lightning')} (BoringModel: Linear(8, 1), "
                      "batch 4, SGD, logs its loss each step, no logger)")  # fmt: skip

    def first(self, at_step: Callable[[], None]) -> Any:
        """A callback calling ``at_step`` at each step's first hook (first in the list)."""

        class First(self.base):  # type: ignore[misc, name-defined]
            def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
                at_step()

        return First()

    def fit(self, callbacks: list[Any]) -> Callable[[], None]:
        from support.lightning_models import BoringModel, loader, trainer

        fitter = trainer(self.tmp, callbacks, max_steps=self.steps, limit_val_batches=0)
        model, data = BoringModel(), loader(self.steps)
        return lambda: fitter.fit(model, data)

    def build(self, kind: str, n: int, at_step: Callable[[], None]) -> Callable[[], None]:
        import callbridge_lightning

        if kind == "native":
            callbacks = [self.native() for _ in range(n)]
        else:
            callbacks = callbridge_lightning.callbacks(neutral_config(n)) if n else []
        return self.fit([self.first(at_step), *callbacks])

    def count(self, sink: list[str]) -> None:
        import callbridge_lightning

        neutral = callbridge_lightning.callbacks({"custom_callbacks": ["counter"]},
                                                 inject={"sink": sink})  # fmt: skip
        native = counter_class(self.base, self.hooks, sink)()
        self.fit([self.first(lambda: sink.append("|")), native, *neutral])()


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


# -- figures -------------------------------------------------------------------------------


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of y against x."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def added(steps: list[float], base: list[float], warmup: int) -> float:
    """Median over steps (after ``warmup``) of a training's step time minus the base's."""
    return statistics.median(t - b for t, b in list(zip(steps, base, strict=True))[warmup:])


def schedule(rounds: int) -> list[list[Config]]:
    """Per round, the configurations' turn order (native/neutral alternating; reversed every
    other round)."""
    one = [BASE] + [(kind, n) for n in COUNTS if n for kind in KINDS]
    return [one if r % 2 == 0 else one[::-1] for r in range(rounds)]


def events_per_step(sink: list[str]) -> dict[str, dict[str, int]]:
    """Hook calls per kind between two step marks in the middle of a run (a steady-state step)."""
    marks = [i for i, name in enumerate(sink) if name == "|"]
    k = len(marks) // 2
    out: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
    for entry in sink[marks[k] + 1 : marks[k + 1]]:
        kind, _, hook = entry.partition(":")
        out[kind][hook] = out[kind].get(hook, 0) + 1
    return out


def measure(bench: Any, rounds: int, warmup: int, say: Callable[[str], None]) -> dict[str, Any]:
    say(f"\n== {bench.title} ==")
    say(f"{bench.steps} optimizer steps per training, 7 trainings in lock step per round, "
        f"{rounds} rounds")  # fmt: skip
    start = time.perf_counter()
    run_round(bench, [BASE, ("native", 1), ("neutral", 1)])  # warm-up: imports, caches
    raw: list[dict[Config, list[float]]] = []
    for order in schedule(rounds):
        raw.append(run_round(bench, order))
    elapsed = time.perf_counter() - start
    # Per round: each configuration's added time per step (paired with the base, step by step).
    extra = [{c: added(r[c], r[BASE], warmup) for c in r} for r in raw]
    step = {c: statistics.median(statistics.median(r[c][warmup:]) for r in raw) for c in raw[0]}
    med = {c: statistics.median(e[c] for e in extra) for c in extra[0]}
    say(f"{elapsed:.0f} s. Step time, us (per training the median step, median over rounds):")
    say("  N        " + "".join(f"{n:>9}" for n in COUNTS))
    for kind in KINDS:
        say(f"  {kind:<8}" + "".join(f"{step[(kind, n) if n else BASE] * 1e6:9.1f}"
                                     for n in COUNTS))  # fmt: skip
    say("Added time per step over N = 0, us (median over steps of the paired difference, "
        "median over rounds):")  # fmt: skip
    slopes: dict[str, float] = {}
    residuals: dict[str, float] = {}
    for kind in KINDS:
        row = [med[(kind, n)] if n else 0.0 for n in COUNTS]
        slope, icpt = fit_line(list(zip(COUNTS, row, strict=True)))
        slopes[kind] = slope
        residual = row[-1] - (slope * COUNTS[-1] + icpt)
        residuals[kind] = residual / (slope * COUNTS[-1])
        per_n = " ".join(f"{(t / n) * 1e6:.2f}" for n, t in zip(COUNTS[1:], row[1:], strict=True))
        say(f"  {kind:<8}" + "".join(f"{t * 1e6:9.1f}" for t in row)
            + f"   slope {slope * 1e6:.3f} us/callback/step, intercept {icpt * 1e6:.1f} us "
            f"(added/N at 1, 10, 50: {per_n}); "
            f"residual at N=50 {residual * 1e6:+.1f} us = {100 * residuals[kind]:+.1f}% of "
            "the line's cost of 50")  # fmt: skip
    per_round = []
    for e in extra:
        fits = {k: fit_line([(n, e[(k, n)] if n else 0.0) for n in COUNTS])[0] for k in KINDS}
        per_round.append(fits["neutral"] / fits["native"])
    per_round.sort()
    ratio = slopes["neutral"] / slopes["native"]
    say(f"  {bench.name}: slope_neutral / slope_native = {ratio:.2f}x per callback per step "
        f"(aim <= 1.5x; single rounds {per_round[0]:.2f} to {per_round[-1]:.2f})")  # fmt: skip
    sink: list[str] = []
    with callbridge.testing.use_registry() as registry:
        registry.register("counter", Counter)
        bench.count(sink)
    calls = events_per_step(sink)
    n_native, n_neutral = sum(calls["native"].values()), sum(calls["neutral"].values())
    ev = {"native": slopes["native"] / n_native, "neutral": slopes["neutral"] / n_neutral}
    say(f"  calls per step to one callback: native {n_native} ({', '.join(calls['native'])}), "
        f"neutral {n_neutral} ({', '.join(calls['neutral'])})")  # fmt: skip
    say(f"  per event: native {ev['native'] * 1e6:.3f} us, neutral {ev['neutral'] * 1e6:.3f} us "
        f"= {ev['neutral'] / ev['native']:.2f}x")  # fmt: skip
    return {"ratio": ratio, "slopes": slopes, "per_event": ev, "residuals": residuals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds (repeats) of 7 trainings")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per training")
    parser.add_argument("--warmup", type=int, default=20, help="first steps left out")
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds of 100 steps: a third of the time, noisier")  # fmt: skip
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: perf_counter; cpu: the training thread's CPU time")  # fmt: skip
    parser.add_argument("--only", choices=["hf", "lightning"])
    ns = parser.parse_args()
    if ns.quick:
        ns.rounds, ns.steps = 2, 100
    import torch

    torch.set_num_threads(1)  # the trainings take turns: one thread's worth of CPU each
    Pacer.clock = time.perf_counter if ns.clock == "wall" else time.thread_time
    logging.getLogger("callbridge").setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")  # Lightning's advice on a tiny CPU run

    def say(text: str) -> None:
        print(text, flush=True)

    say(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start: figures "
        "are medians over steps and rounds; compare the ratios, not the times")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if ns.only in (None, "hf"):
            measure(HF(ns.steps, tmp), ns.rounds, ns.warmup, say)
        if ns.only in (None, "lightning"):
            measure(Lightning(ns.steps, tmp), ns.rounds, ns.warmup, say)


if __name__ == "__main__":
    main()
