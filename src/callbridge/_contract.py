"""The neutral run, enforced once: adapters report what their trainer did, the core orders it.

An adapter never calls a neutral hook itself. It tells a :class:`Contract` what
its framework just did (training started, a batch opened an optimizer step, the
optimizer stepped, the trainer logged, validation started, a checkpoint was
written, the epoch's last batch ended, training is ending) and the contract
emits the neutral events in the order ``docs/events.md`` specifies, with one
definition of every :class:`TrainState` field and of ``Control.should_stop``:

* ``epoch`` is the fractional number of epochs completed (``1.5`` half-way
  through the second epoch), the same formula under every trainer;
* ``num_epochs`` is known whenever the trainer can compute it;
* ``should_stop`` says that a callback (neutral or native) asked training to
  stop, never that the trainer reached its own end;
* an epoch's ``epoch_end`` comes after the events of its last step and before
  the epoch's own evaluation and save; a step's events come in the order
  ``step_end``, ``log``, evaluation, ``save``;
* ``epoch_begin`` fires before the first step of every epoch, a resumed one
  included (``state.resumed_from`` says the run resumed).

What the trainers schedule differently and cannot be aligned without changing
the training is :data:`DIFFERENCES`: the one table ``docs/events.md`` shows and
the conformance suite (``tests/conformance``) applies, row by row.

A third adapter feeds the same methods and gets the same guarantees.
"""

from typing import Any

from ._protocol import Run
from ._record import Record


class Difference(Record):
    """A way a trainer's run departs from the contract, and how to align it.

    Attributes:
        key: a short stable name (the conformance suite refers to rows by it).
        trainer: ``"hf"`` or ``"lightning"``: the trainer whose run departs.
        what: what that trainer's callbacks see that the contract does not say.
        why: the trainer's own behaviour behind it.
        align: the setting that makes the run follow the contract, or what to do instead.
    """

    __slots__ = ("align", "key", "trainer", "what", "why")

    def __init__(self, key: str, trainer: str, what: str, why: str, align: str) -> None:
        self.key = key
        self.trainer = trainer
        self.what = what
        self.why = why
        self.align = align


#: Every departure from the contract that is left, each with its reason and its remedy.
#: Nothing else may differ: the conformance suite fails on any difference not listed here.
DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "hf_summary_log",
        "hf",
        "one more `on_log` after the last `on_epoch_end`, with the run's summary "
        "(`train_runtime`, `train_loss`, ...)",
        "`Trainer.train` logs its speed metrics once training is over",
        "none needed: tell it by its keys (`train_runtime` is in it)",
    ),
    Difference(
        "hf_final_evaluate",
        "hf",
        "an evaluation at `max_steps` when `max_steps` is not a multiple of `eval_steps`",
        "`DefaultFlowCallback` evaluates at the last step under a step-based `eval_strategy`",
        "make `max_steps` a multiple of `eval_steps`",
    ),
    Difference(
        "hf_final_save",
        "hf",
        "a checkpoint (`on_save`) at `max_steps` when `max_steps` is not a multiple of "
        "`save_steps`",
        "`DefaultFlowCallback` saves at the last step under a step-based `save_strategy`",
        "make `max_steps` a multiple of `save_steps`",
    ),
    Difference(
        "hf_step_before_stop",
        "hf",
        "a stop requested before the first optimizer step (`on_train_begin`, "
        "`on_epoch_begin`) still lets one step run",
        "`Trainer` looks at `should_training_stop` only after a step",
        "request the stop in `on_step_end` of the first step, or do not start training",
    ),
    Difference(
        "lightning_log_on_stop",
        "lightning",
        "an `on_log` of the training metrics at the step where a stop was requested, "
        "off the `log_every_n_steps` cadence",
        "Lightning's logger connector also logs whenever `trainer.should_stop` is set",
        "none: tell it by its step (the stop step); `log_every_n_steps` dividing that "
        "step removes it",
    ),
    Difference(
        "lightning_evaluate_on_stop",
        "lightning",
        "an evaluation (`on_evaluate_begin`, `on_log`, `on_evaluate`) at the step where a "
        "stop was requested, off the evaluation cadence",
        "Lightning's training loop validates when `trainer.should_stop` is set "
        "(`_should_check_val_fx`), so that early stopping sees final metrics",
        "under HF, request `should_evaluate` with `should_stop` to get the same evaluation",
    ),
    Difference(
        "lightning_evaluate_in_step",
        "lightning",
        "with gradient accumulation and an epoch length that is not a multiple of it, "
        "evaluations fall inside an optimizer step (after `on_step_begin`) and at other "
        "steps than HF's",
        "`val_check_interval` counts batches, not optimizer steps, and the last step of an "
        "epoch is shorter",
        "an epoch length (in batches) that `accumulate_grad_batches` divides, or evaluate "
        "per epoch",
    ),
    Difference(
        "lightning_save_in_step",
        "lightning",
        "`ModelCheckpoint(every_n_train_steps=N)` saves inside `on_train_batch_end`: "
        "`on_save` comes before that step's `on_log` and evaluation, and the callback state "
        "in that checkpoint is the state before them (a resumed stateful callback has not "
        "seen them)",
        "Lightning's `ModelCheckpoint` writes the file in its `on_train_batch_end`",
        "save at validation (`ModelCheckpoint(save_on_train_epoch_end=False)` with "
        "`val_check_interval`), which saves after the evaluation as HF does",
    ),
    Difference(
        "lightning_fit_twice",
        "lightning",
        "a second `fit()` on a trainer that already reached `max_steps`/`max_epochs` "
        "delivers no event",
        "Lightning's fit loop continues from the trainer's own progress, and skips when "
        "it is done; HF's `train()` starts again at step 0",
        "a new `Trainer` for each training",
    ),
)


class Contract:
    """Turns what a trainer did into the run's neutral events, in the contract's order.

    Each fact method updates :attr:`run`'s state and appends the neutral events it
    implies, in order, to :attr:`events` as ``(hook, args)``; the session delivers
    them (:meth:`callbridge.Session.deliver`) and records stop requests with
    :meth:`request_stop`.

    Attributes:
        run: the run every hook receives; the contract owns its ``state``.
        events: the events of the current fact, in order.
        training: between ``train_begin`` and ``train_end`` (or an exception).
        epoch_open: an epoch began and has not ended.
        stop_requested: a callback asked training to stop during this run.
    """

    __slots__ = (
        "_pending_epoch_end",
        "epoch_open",
        "events",
        "run",
        "stop_requested",
        "training",
    )

    def __init__(self, run: Run) -> None:
        self.run = run
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.training = False
        self.epoch_open = False
        self.stop_requested = False
        self._pending_epoch_end = False

    def __repr__(self) -> str:
        return f"<Contract training={self.training} epoch_open={self.epoch_open}>"

    def emit(self, hook: str, *args: Any) -> None:
        """Queue one neutral event."""
        self.events.append((hook, args))

    def request_stop(self) -> None:
        """A callback (neutral or native) asked training to stop."""
        self.stop_requested = True

    # -- facts -------------------------------------------------------------------------------

    def train_begin(
        self,
        *,
        global_step: int,
        epoch: float,
        max_steps: int | None,
        num_epochs: int | None,
        rank: int,
        world_size: int,
        is_main_process: bool,
    ) -> None:
        """Training starts (a resumed one at ``global_step > 0``)."""
        st = self.run.state
        st.global_step = global_step
        st.epoch = float(epoch)
        st.max_steps = max_steps
        st.num_epochs = num_epochs
        st.rank = rank
        st.world_size = world_size
        st.is_main_process = is_main_process
        st.resumed_from = global_step if global_step > 0 else None
        self.training = True
        self.epoch_open = False
        self.stop_requested = False
        self._pending_epoch_end = False
        self.emit("on_train_begin")

    def epoch_begin(self) -> None:
        """An epoch starts."""
        self._flush_epoch_end()
        if self.epoch_open:
            return
        self.epoch_open = True
        self.emit("on_epoch_begin")

    def step_begin(self) -> None:
        """The first micro-batch of an optimizer step starts."""
        self._flush_epoch_end()
        if not self.epoch_open:
            # A mid-epoch resume: the trainer may skip its epoch-start hook (Lightning).
            self.epoch_open = True
            self.emit("on_epoch_begin")
        self.emit("on_step_begin")

    def step_end(self, global_step: int, epoch: float) -> None:
        """The optimizer stepped: ``global_step`` counts it, ``epoch`` is fractional."""
        st = self.run.state
        st.global_step = global_step
        st.epoch = float(epoch)
        self.emit("on_step_end")

    def epoch_last_step(self) -> None:
        """The epoch's last step ended; its ``epoch_end`` waits for the step's own events.

        The next of :meth:`evaluate_begin` (an epoch evaluation), :meth:`epoch_end`,
        :meth:`epoch_begin`, :meth:`step_begin` or :meth:`train_end` delivers it.
        """
        if self.epoch_open:
            self._pending_epoch_end = True

    def _flush_epoch_end(self) -> None:
        if self._pending_epoch_end:
            self._pending_epoch_end = False
            self._end_epoch()

    def _end_epoch(self) -> None:
        self.epoch_open = False
        self.emit("on_epoch_end")

    def epoch_end(self) -> None:
        """The trainer ended the epoch (its last step, or a stop)."""
        self._pending_epoch_end = False
        if self.epoch_open:
            self._end_epoch()

    def log(self, logs: dict[str, float]) -> None:
        """The trainer logged these metrics."""
        self.emit("on_log", logs)

    def evaluate_begin(self, *, epoch_evaluation: bool = False) -> None:
        """An evaluation starts; ``epoch_evaluation``: the one an epoch ends with."""
        if epoch_evaluation:
            self._flush_epoch_end()
        self.emit("on_evaluate_begin")

    def evaluate(self, metrics: dict[str, float]) -> None:
        """An evaluation ended with these metrics."""
        self.emit("on_evaluate", metrics)

    def save(self) -> None:
        """A checkpoint was written."""
        self.emit("on_save")

    def train_end(self) -> None:
        """Training ends: an epoch still open ends first."""
        self.epoch_end()
        self.emit("on_train_end")
        self.training = False

    def exception(self, exc: BaseException) -> None:
        """Training (or a standalone evaluation) is failing with ``exc``."""
        self._pending_epoch_end = False
        self.emit("on_exception", exc)
        self.training = False
