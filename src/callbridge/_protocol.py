"""The neutral protocol: what a callback implements and what each hook receives.

A callback written against these classes runs unchanged under every adapter.
Adapters build a :class:`Run` from their framework's state, call hooks through
:class:`callbridge.Dispatcher`, and map :class:`Control` back.
"""

import weakref
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, ClassVar

import attrs

from ._record import Record

#: Every hook of :class:`Callback`, in the order a run reaches them first.
HOOKS: tuple[str, ...] = (
    "on_train_begin",
    "on_epoch_begin",
    "on_step_begin",
    "on_step_end",
    "on_log",
    "on_evaluate_begin",
    "on_evaluate",
    "on_save",
    "on_epoch_end",
    "on_train_end",
    "on_exception",
)


@attrs.define
class TrainState:
    """Where training stands, the same under every framework.

    Attributes:
        global_step: optimizer steps completed (not micro-batches).
        max_steps: the planned number of optimizer steps, if known.
        epoch: epochs completed, fractional: ``epoch_index + batches_done / batches_per_epoch``
            after each step (``0.25`` after 2 of 8 batches), a whole number at ``epoch_end``
            of a full epoch; the same formula under every trainer.
        num_epochs: the planned number of epochs, whenever the trainer can compute it
            (from ``max_steps`` and the epoch length when training is step-bounded).
        is_main_process: whether this process is rank 0 of the job.
        rank: this process's global rank.
        world_size: the number of processes in the job.
        resumed_from: the global step this run resumed from (None on a fresh start).
    """

    global_step: int = 0
    max_steps: int | None = None
    epoch: float = 0.0
    num_epochs: int | None = None
    is_main_process: bool = True
    rank: int = 0
    world_size: int = 1
    resumed_from: int | None = None


@attrs.define
class Control:
    """Requests a callback makes of the trainer; adapters map them back.

    Attributes:
        should_stop: stop training after the current optimizer step (all ranks). A hook
            sees it True once a callback (neutral or native) has asked for a stop in
            this run, never because the trainer reached its own end.
        should_save: save a checkpoint after the current step.
        should_evaluate: evaluate after the current step.
        should_log: log after the current step.
    """

    should_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False


class ErrorSummary(Record):
    """What failed during a run: counts per callback and hook, and what was disabled."""

    __slots__ = ("counts", "disabled")

    def __init__(
        self, counts: dict[tuple[str, str], int] | None = None, disabled: list[str] | None = None
    ) -> None:
        self.counts: dict[tuple[str, str], int] = {} if counts is None else counts
        self.disabled: list[str] = [] if disabled is None else disabled

    __hash__ = None  # type: ignore[assignment]  # mutable

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data: ``total``, ``counts`` (callback, hook, count) and ``disabled``."""
        return {
            "total": self.total,
            "counts": [
                {"callback": label, "hook": hook, "count": n}
                for (label, hook), n in self.counts.items()
            ],
            "disabled": list(self.disabled),
        }

    def __str__(self) -> str:
        if not self.counts:
            return "callbridge: no callback errors"
        parts = [f"{label}.{hook} x{n}" for (label, hook), n in self.counts.items()]
        text = f"callbridge: {self.total} callback errors: " + ", ".join(parts)
        if self.disabled:
            text += "; disabled: " + ", ".join(self.disabled)
        return text


class NativeObjects(MutableMapping[str, Any]):
    """``Run.native``: a dict of the framework's own objects that may hold some weakly.

    An entry stored as a ``weakref.ref`` reads back as its referent while that lives, and
    as missing once it died (``KeyError``; ``.get`` gives the default). Adapters store the
    trainer so: the trainer holds its callbacks, so a strong reference back to it would
    close a reference cycle, and a trainer in a cycle outlives the script's last
    reference until the cycle collector runs, perhaps only at interpreter exit, keeping
    its model, optimizer and process group alive that long. A torchrun worker whose gloo
    process group is released during interpreter exit can abort there (std::terminate).
    Every other value is held as given.
    """

    def __init__(self, items: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        self._data: dict[str, Any] = {}
        self.update(items or {}, **kwargs)

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        if isinstance(value, weakref.ref):
            value = value()
            if value is None:
                raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter([key for key in self._data if key in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        value = self._data.get(key, _MISSING)  # type: ignore[call-overload]
        return value is not _MISSING and not (isinstance(value, weakref.ref) and value() is None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({{{', '.join(repr(key) for key in self)}}})"


_MISSING = object()


def _native_objects(value: Mapping[str, Any] | None) -> NativeObjects:
    return value if isinstance(value, NativeObjects) else NativeObjects(value)


@attrs.define(eq=False)
class Run:
    """What every hook receives.

    Attributes:
        framework: ``"hf"``, ``"lightning"``, or another adapter's name.
        state: where training stands.
        control: requests back to the trainer.
        model: the unwrapped model (no DDP or compile wrapper).
        output_dir: where the run writes, if the trainer has such a place.
        native: the framework's own objects (trainer, args, state...), an escape hatch;
            a dict (:class:`NativeObjects`) in which an adapter holds the trainer weakly.
        tags: labels of the run (``{"stage": "sft"}``) that callbridge's recording
            callbacks (``log``, ``monitor``, ``reporter``) add to every record they
            write; set them in ``on_train_begin`` (``training_stage`` does).
        config: the resolved configuration the callbacks came from, secrets masked
            (plain JSON data: ``source``, ``options``, ``callbacks``), or None when
            the callbacks were not built from a configuration.
        errors: the callback errors of this run so far (counts per callback and
            hook, disabled callbacks), or None outside a session.
    """

    framework: str
    state: TrainState = attrs.Factory(TrainState)
    control: Control = attrs.Factory(Control)
    model: Any = None
    output_dir: Path | None = None
    native: NativeObjects = attrs.field(factory=NativeObjects, converter=_native_objects)
    tags: dict[str, str] = attrs.Factory(dict)
    config: dict[str, Any] | None = None
    errors: ErrorSummary | None = None


class Callback:
    """Base class of neutral callbacks: every hook is a no-op until overridden.

    Subclasses are usually attrs classes, so that their arguments are declared,
    typed and validated from configuration. Keep the constructor cheap and free
    of side effects (import heavy libraries, open files and connections in the
    hooks): ``callbridge check`` constructs neutral callbacks to run their
    validation. Set ``rank_zero_only = True`` to run
    on the main process only; list in ``mutable_args`` the arguments that may change
    while the run is going (``callbridge ctl``). Override :meth:`state_dict` and
    :meth:`load_state_dict` for state that must survive a resume.
    """

    rank_zero_only: ClassVar[bool] = False
    #: Arguments a command (``callbridge ctl RUN_DIR set NAME.arg=VALUE``) may change while
    #: the run is going; none unless a callback declares them.
    mutable_args: ClassVar[frozenset[str]] = frozenset()

    def on_train_begin(self, run: Run) -> None:
        """Training starts (after the model and optimizer are ready)."""

    def on_train_end(self, run: Run) -> None:
        """Training ends, normally or by a stop request."""

    def on_epoch_begin(self, run: Run) -> None:
        """A training epoch starts."""

    def on_epoch_end(self, run: Run) -> None:
        """A training epoch ends."""

    def on_step_begin(self, run: Run) -> None:
        """An optimizer step starts (the first micro-batch of it)."""

    def on_step_end(self, run: Run) -> None:
        """An optimizer step ended; ``run.state.global_step`` counts it."""

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        """The trainer logged these metrics, at its logging cadence."""

    def on_evaluate_begin(self, run: Run) -> None:
        """An evaluation is about to start (never during a sanity check)."""

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        """An evaluation ended with these metrics."""

    def on_save(self, run: Run) -> None:
        """A checkpoint was saved."""

    def on_exception(self, run: Run, exc: BaseException) -> None:
        """Training is failing with ``exc``; the adapter re-raises it afterwards."""

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a checkpoint and resume (plain data)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
