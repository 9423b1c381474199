"""``preemption``: on SIGTERM (or another signal), save a checkpoint and stop on every rank."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import attrs

from .._protocol import Callback, Run

logger = logging.getLogger("callbridge")

#: Signals a process cannot catch: naming one is a configuration error.
_UNCATCHABLE = ("SIGKILL", "SIGSTOP")


def _signal_names() -> list[str]:
    return sorted(
        s.name
        for s in signal.Signals
        if s.name not in _UNCATCHABLE and not s.name.startswith("SIG_")
    )


def _check_signals(instance: Any, attribute: Any, value: list[str]) -> None:
    known = _signal_names()
    for name in value:
        if name not in known:
            from .._errors import closest

            if name in _UNCATCHABLE:
                raise ValueError(f"signals: {name} cannot be caught; use SIGTERM or SIGUSR1")
            near = closest(name, known)
            hint = f"Did you mean {near!r}? " if near else ""
            raise ValueError(
                f"signals: unknown signal {name!r}. {hint}Use a name such as SIGTERM, "
                "SIGUSR1, SIGUSR2, SIGINT"
            )


@attrs.define
class PreemptionCallback(Callback):
    """Save a checkpoint and stop at the next optimizer step after a signal, on every rank.

    During training (``on_train_begin`` to ``on_train_end``) the callback handles
    ``signals`` itself (it replaces their handlers, and puts the old ones back at the
    end). The handler only notes the signal; at the end of the current optimizer step
    the callback asks the trainer to save a checkpoint and stop (``should_save`` and
    ``should_stop``), and ``train()``/``fit()`` return normally, so the script goes on
    to its end and exits with status 0. Resume from that checkpoint as from any other:
    every stateful callback continues from its saved state.

    Under DDP a signal that reaches one rank (Lightning's DDP launcher, a scheduler
    that signals rank 0 only) is shared: each step ends with a one-element all-reduce
    of the flag, so all ranks save and stop at the same step.

    Args:
        signals: the signals to handle, by name (``SIGTERM``, ``SIGUSR1``...).
        save: save a checkpoint before stopping (False: stop only).
    """

    signals: list[str] = attrs.field(factory=lambda: ["SIGTERM"], validator=_check_signals)
    save: bool = True

    received: str | None = attrs.field(default=None, init=False)
    stopped_at_step: int | None = attrs.field(default=None, init=False)
    _flag: int = attrs.field(default=0, init=False, repr=False)
    _previous: dict[int, Any] = attrs.field(factory=dict, init=False, repr=False)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only a note: logging or saving inside a signal handler could deadlock on a lock
        # the interrupted code holds.
        self._flag = signum

    def on_train_begin(self, run: Run) -> None:
        self._flag = 0
        self.received = None
        self.stopped_at_step = None
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "callbridge preemption: training runs outside the main thread, where Python "
                "cannot handle signals; %s will not save and stop this run",
                ", ".join(self.signals),
            )
            return
        for name in self.signals:
            signum = signal.Signals[name]
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _restore(self) -> None:
        while self._previous:
            signum, handler = self._previous.popitem()
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _agreed(self, run: Run) -> int:
        """The signal noted on any rank (0: none), the same answer on every rank."""
        flag = self._flag
        if run.state.world_size > 1:
            import torch.distributed as dist  # at use: the core imports no framework

            if dist.is_available() and dist.is_initialized():
                import torch

                device = (
                    torch.device("cuda", torch.cuda.current_device())
                    if dist.get_backend() == "nccl"
                    else torch.device("cpu")
                )
                value = torch.tensor([flag], device=device)
                dist.all_reduce(value, op=dist.ReduceOp.MAX)
                flag = int(value.item())
        return flag

    def on_step_end(self, run: Run) -> None:
        if self.stopped_at_step is not None:
            return
        flag = self._agreed(run)
        if not flag:
            return
        self.received = signal.Signals(flag).name
        self.stopped_at_step = run.state.global_step
        run.control.should_stop = True
        run.control.should_save = self.save
        logger.warning(
            "callbridge preemption: %s received; %sstopping at step %d (rank %d)",
            self.received,
            "saving a checkpoint and " if self.save else "",
            run.state.global_step,
            run.state.rank,
        )

    def on_train_end(self, run: Run) -> None:
        self._restore()

    def on_exception(self, run: Run, exc: BaseException) -> None:
        self._restore()
