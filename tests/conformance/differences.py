"""How each row of ``callbridge._contract.DIFFERENCES`` is told apart in a recorded sequence.

A row applies to a schedule and a trainer (``applies``); its normaliser removes or
moves exactly what the row describes. Both sequences, the trainer's and the
contract's (the Driver's), go through the same normalisers, so a row cannot hide a
difference it does not describe. A row without an entry here fails the suite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conformance.runner import Schedule

Events = list[list[Any]]
EVALUATION = ("evaluate_begin", "log:eval", "evaluate")


def _drop_evaluations(events: Events, at: Callable[[int], bool]) -> Events:
    return [e for e in events if not (e[0] in EVALUATION and at(e[1]))]


def _off(cadence: Any, step: int) -> bool:
    return not isinstance(cadence, int) or step % cadence != 0


def _summary(events: Events, s: Schedule) -> Events:
    return [e for e in events if e[0] != "log:summary"]


def _final_evaluate(events: Events, s: Schedule) -> Events:
    return _drop_evaluations(events, lambda step: step == s.total_steps)


def _final_save(events: Events, s: Schedule) -> Events:
    return [e for e in events if not (e[0] == "save" and e[1] == s.total_steps)]


def _step_before_stop(events: Events, s: Schedule) -> Events:
    out = [e for e in events if e[0] in ("train_begin", "train_end")]
    return [[e[0], 0, 0.0, *e[3:]] for e in out]


def _log_on_stop(events: Events, s: Schedule) -> Events:
    return [e for e in events if not (e[0] == "log:train" and _off(s.log, e[1]))]


def _evaluate_on_stop(events: Events, s: Schedule) -> Events:
    return _drop_evaluations(events, lambda step: _off(s.eval, step))


def _evaluate_in_step(events: Events, s: Schedule) -> Events:
    return _drop_evaluations(events, lambda step: True)


def _save_in_step(events: Events, s: Schedule) -> Events:
    """Put each save after the rest of its step's events (where the contract has it)."""
    out: Events = []
    pending: Events = []
    for e in events:
        if e[0] == "save":
            pending.append(e)
            continue
        if e[0] in ("step_begin", "epoch_end", "train_end"):
            out += pending
            pending = []
        out.append(e)
    return out + pending


def _fit_twice(events: Events, s: Schedule) -> Events:
    ends = [i for i, e in enumerate(events) if e[0] == "train_end"]
    return events[: ends[0] + 1] if ends else events


def _stopped(s: Schedule) -> bool:
    return s.stop is not None


#: row key -> (applies(schedule), normaliser)
NORMALISERS: dict[str, tuple[Callable[[Schedule], bool], Callable[[Events, Schedule], Events]]] = {
    "hf_summary_log": (lambda s: not s.standalone, _summary),
    "hf_final_evaluate": (
        lambda s: isinstance(s.eval, int) and s.total_steps % s.eval != 0 and not _stopped(s),
        _final_evaluate,
    ),
    "hf_final_save": (
        lambda s: isinstance(s.save, int) and s.total_steps % s.save != 0 and not _stopped(s),
        _final_save,
    ),
    "hf_step_before_stop": (
        lambda s: s.stop is not None and s.stop[0] in ("on_train_begin", "on_epoch_begin"),
        _step_before_stop,
    ),
    "lightning_log_on_stop": (_stopped, _log_on_stop),
    "lightning_evaluate_on_stop": (lambda s: _stopped(s) and s.eval != "epoch", _evaluate_on_stop),
    "lightning_evaluate_in_step": (
        lambda s: isinstance(s.eval, int) and s.accum > 1 and s.batches % s.accum != 0,
        _evaluate_in_step,
    ),
    "lightning_save_in_step": (lambda s: isinstance(s.save, int), _save_in_step),
    "lightning_fit_twice": (lambda s: s.twice, _fit_twice),
}


def rows_for(schedule: Schedule, trainer: str) -> list[str]:
    """The table's rows that apply to this schedule under this trainer."""
    from callbridge._contract import DIFFERENCES

    return [
        row.key
        for row in DIFFERENCES
        if row.trainer == trainer and NORMALISERS[row.key][0](schedule)
    ]


def normalise(events: Events, schedule: Schedule, rows: list[str]) -> Events:
    for key in rows:
        events = NORMALISERS[key][1](events, schedule)
    return events
