"""One recorder, one schedule, three runs: the Driver (the contract), HF's Trainer, Lightning's.

Every recorded sequence (event, global step, epoch, num_epochs, should_stop) must
equal the contract's, after the rows of the differences table that apply to the
schedule and trainer (``callbridge._contract.DIFFERENCES``, shown in
``docs/events.md``) have been applied to both. A difference outside the table fails.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from callbridge._contract import DIFFERENCES
from conformance.differences import NORMALISERS, normalise, rows_for
from conformance.runner import Schedule, as_json, run_driver, run_hf, run_lightning
from support import hf_models, lightning_models

pytestmark = [
    pytest.mark.filterwarnings(*lightning_models.LIGHTNING_NOISE),
    # The schedules log rarely on purpose (log_every_n_steps above the epoch's batches).
    pytest.mark.filterwarnings(
        r"ignore:The number of training batches \(\d+\) is smaller:UserWarning"
    ),
    # A mid-epoch resume on purpose; our loaders are deterministic, not resumable.
    pytest.mark.filterwarnings(r"ignore:You're resuming from a checkpoint that ended before"),
]

RUNNERS = {"hf": run_hf, "lightning": run_lightning}

#: Schedules run in this process under each trainer (a resume and DDP run in fresh ones).
SCHEDULES = [
    Schedule("max_steps", batches=8, max_steps=6),
    Schedule("epochs", batches=4, epochs=2),
    Schedule("accumulate_3_uneven_epochs", batches=8, accum=3, epochs=2),
    Schedule("accumulate_3_max_steps", batches=8, accum=3, max_steps=5),
    Schedule("log_every_5", batches=6, epochs=2, log=5),
    Schedule("evaluate_every_4", batches=6, max_steps=8, log=2, eval=4),
    Schedule("evaluate_every_4_off_end", batches=6, max_steps=10, log=5, eval=4),
    Schedule("evaluate_per_epoch", batches=4, epochs=2, log=2, eval="epoch"),
    Schedule("evaluate_every_2_accumulate_3", batches=8, accum=3, epochs=2, eval=2),
    Schedule("evaluate_per_epoch_accumulate_2", batches=6, accum=2, epochs=2, eval="epoch"),
    Schedule("save_every_3", batches=6, max_steps=6, log=3, save=3),
    Schedule("save_every_3_off_end", batches=8, max_steps=8, log=None, save=3),
    Schedule("save_per_epoch", batches=4, epochs=2, log=2, save="epoch"),
    Schedule(
        "evaluate_and_save_per_epoch", batches=6, accum=2, epochs=2, eval="epoch", save="epoch"
    ),
    Schedule("stop_in_step_end", batches=8, max_steps=8, stop=["on_step_end", 3]),
    Schedule("stop_in_log", batches=8, max_steps=8, log=2, stop=["on_log", 4]),
    Schedule("stop_in_evaluate", batches=8, max_steps=8, log=2, eval=2, stop=["on_evaluate", 4]),
    Schedule(
        "stop_in_epoch_end", batches=4, epochs=3, log=2, eval="epoch", stop=["on_epoch_end", 4]
    ),
    Schedule("stop_in_train_begin", batches=4, max_steps=4, stop=["on_train_begin", 0]),
    Schedule(
        "stop_mid_epoch_evaluate_per_epoch",
        batches=8,
        max_steps=8,
        eval="epoch",
        stop=["on_step_end", 3],
    ),
    Schedule("standalone_evaluate", batches=4, max_steps=4, standalone=True),
    Schedule("train_twice", batches=4, max_steps=2),
]
SCHEDULES[-1].twice = True
RESUME = Schedule("resume_mid_epoch", batches=8, max_steps=8, log=1, eval=3, save=3, resume_at=3)
DDP = Schedule(
    "ddp_stop_on_rank_1", batches=4, max_steps=4, log=1, stop=["on_step_end", 2], ddp=True
)


def compare(schedule: Schedule, trainer: str, got: list[Any], expected: list[Any]) -> None:
    rows = rows_for(schedule, trainer)
    assert normalise(got, schedule, rows) == normalise(expected, schedule, rows), (
        f"{trainer} departs from the contract beyond the table's rows {rows}"
    )


@pytest.mark.parametrize("trainer", sorted(RUNNERS))
@pytest.mark.parametrize("schedule", SCHEDULES, ids=[s.name for s in SCHEDULES])
def test_the_trainer_follows_the_contract(schedule: Schedule, trainer: str, tmp_path: Path) -> None:
    """The recorder sees the contract's sequence, except the table's rows for this schedule."""
    expected = run_driver(schedule)["a"]
    got = RUNNERS[trainer](schedule, tmp_path)["a"]
    compare(schedule, trainer, got, expected)


def resumed_expectation(schedule: Schedule, tags: tuple[str, ...] = ("a",)) -> dict[str, Any]:
    """The contract's view of a run resumed at ``resume_at``: what was saved, then the rest."""
    import callbridge
    from callbridge.testing import Driver

    full = run_driver(schedule)
    step = schedule.resume_at
    out = {}
    for tag in tags:
        events = full["a"]
        cut = next(i for i, e in enumerate(events) if e[0] == "save" and e[1] == step) + 1
        entries = callbridge.build_entries(schedule.config())
        Driver(
            entries, max_steps=schedule.max_steps, batches_per_epoch=schedule.batches,
            accumulation=schedule.accum, logging_steps=schedule.log, eval_steps=schedule.eval,
            save_steps=schedule.save, start_step=step,
        ).run()  # fmt: skip
        out[tag] = events[:cut] + entries[0].callback.events
    return out


def checkpoint(trainer: str, out: Path, step: int) -> str:
    if trainer == "hf":
        return str(out / f"checkpoint-{step}")
    return str(out / "checkpoints" / f"step{step}.ckpt")


@pytest.mark.parametrize("trainer", sorted(RUNNERS))
def test_a_mid_epoch_resume_in_a_fresh_process_continues_the_contract(
    trainer: str, tmp_path: Path
) -> None:
    """Resumed at step 3 of an 8-step epoch: saved events, then train_begin, epoch_begin, the rest.

    Under Lightning the checkpoints are written after each validation, the setting the
    table gives to align saves (``lightning_save_in_step``).
    """
    schedule = RESUME
    out = tmp_path / "run"
    common = ["--trainer", trainer, "--schedule", as_json(schedule), "--out", str(out)]
    if trainer == "lightning":
        common.append("--save-at-eval")
    script = Path(__file__).with_name("runner.py")
    hf_models.run_script(*common, "--result", str(tmp_path / "full.json"), cwd=tmp_path,
                         script=script, timeout=300)  # fmt: skip
    hf_models.run_script(
        *common, "--result", str(tmp_path / "resumed.json"),
        "--resume", checkpoint(trainer, out, schedule.resume_at),
        cwd=tmp_path, script=script, timeout=300,
    )  # fmt: skip
    got = json.loads((tmp_path / "resumed.json").read_text())["a"]
    expected = resumed_expectation(schedule)["a"]
    rows = [r for r in rows_for(schedule, trainer) if r != "lightning_save_in_step"]
    assert normalise(got, schedule, rows) == normalise(expected, schedule, rows)
    assert got[next(i for i, e in enumerate(got) if e[0] == "train_begin" and e[1] == 3) + 1][
        0
    ] == ("epoch_begin"), "a mid-epoch resume begins its epoch under every trainer"


@pytest.mark.filterwarnings(
    r"ignore:The dirpath has changed:UserWarning"
)  # a new folder, on purpose
@pytest.mark.parametrize("trainer", sorted(RUNNERS))
def test_two_same_class_entries_reordered_keep_their_own_state(
    trainer: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two recorders with different arguments swap places between save and resume: no swap."""
    schedule = Schedule("twins", batches=8, max_steps=8, log=1, eval=3, save=3, resume_at=3)
    out = tmp_path / "run"
    if trainer == "hf":
        run_hf(schedule, out, tags=("a", "b"))
        with caplog.at_level(logging.WARNING, logger="callbridge"):
            got = run_hf(schedule, out, tags=("b", "a"), resume=checkpoint(trainer, out, 3))
    else:
        run_lightning(schedule, out, tags=("a", "b"), save_at_eval=True)
        with caplog.at_level(logging.WARNING, logger="callbridge"):
            got = run_lightning(
                schedule, tmp_path / "resumed", tags=("b", "a"),
                resume=checkpoint(trainer, out, 3), save_at_eval=True,
            )  # fmt: skip
    expected = resumed_expectation(schedule)["a"]
    rows = [r for r in rows_for(schedule, trainer) if r != "lightning_save_in_step"]
    for tag in ("a", "b"):
        assert normalise(got[tag], schedule, rows) == normalise(expected, schedule, rows), tag
    moved = [r.getMessage() for r in caplog.records if "reordered" in r.getMessage()]
    assert len(moved) == 2, moved  # each entry named, with the key its state was filed under


def test_ddp_both_ranks_follow_the_contract_under_both_trainers(tmp_path: Path) -> None:
    """2 processes (gloo): a stop on rank 1 at step 2 reaches rank 0; both see the contract."""
    schedule = DDP
    expected = run_driver(schedule, rank=1)["a"]
    script = Path(__file__).with_name("runner.py")
    for trainer in sorted(RUNNERS):
        path = tmp_path / f"{trainer}.jsonl"
        common = [
            "--trainer", trainer, "--schedule", as_json(schedule), "--out", str(tmp_path / trainer),
            "--result", str(tmp_path / f"{trainer}.json"), "--path", str(path),
        ]  # fmt: skip
        if trainer == "hf":
            hf_models.run_script(*common, cwd=tmp_path, script=script, nproc=2, timeout=300)
        else:
            hf_models.run_script(*common, cwd=tmp_path, script=script, timeout=300)
        by_rank: dict[int, list[Any]] = {}
        for line in path.read_text().splitlines():
            rank, *record = json.loads(line)
            by_rank.setdefault(rank, []).append(record)
        assert sorted(by_rank) == [0, 1], trainer
        for rank, events in by_rank.items():
            compare(schedule, trainer, events, expected)
            assert events[-1][:2] == ["train_end", 2], (trainer, rank)


def test_every_row_of_the_table_is_exercised_and_has_a_normaliser() -> None:
    """No row without its normaliser, no normaliser without its row, no row left unused."""
    assert {row.key for row in DIFFERENCES} == set(NORMALISERS)
    used = {
        key
        for schedule in [*SCHEDULES, RESUME, DDP]
        for trainer in RUNNERS
        for key in rows_for(schedule, trainer)
    }
    assert used == set(NORMALISERS)


def test_the_docs_show_the_table_of_the_code() -> None:
    """docs/events.md's differences table is DIFFERENCES, row for row, in order."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text(encoding="utf-8")
    section = text.split("## Differences between the trainers", 1)[1].split("\n## ", 1)[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| `")
    ]
    assert [(r[0].strip("`"), r[1]) for r in rows] == [(d.key, d.trainer) for d in DIFFERENCES]
    for row, difference in zip(rows, DIFFERENCES, strict=True):
        assert row[2:] == [difference.what, difference.why, difference.align]
        assert not re.search(r"\|", "".join(row[2:]))


@pytest.mark.parametrize("trainer", ["driver", *sorted(RUNNERS)])
def test_a_standalone_evaluation_that_raises_fires_on_exception(
    trainer: str, tmp_path: Path
) -> None:
    """callback_errors = 'raise': the evaluation fails, and on_exception reaches the others."""
    schedule = Schedule("standalone_raises", batches=4, max_steps=4, standalone=True)
    events = tmp_path / "events.jsonl"
    config = schedule.config(path=str(events))
    config["callback_errors"] = "raise"
    config["custom_callbacks"].append({"name": "conformance.recorder.FailInEvaluate"})
    if trainer == "driver":
        from callbridge.testing import Driver

        evaluate = Driver.from_config(config).evaluate
    elif trainer == "hf":
        from conformance.runner import hf_trainer

        evaluate = hf_trainer(schedule, tmp_path, config).evaluate
    else:
        from conformance.runner import lightning_trainer

        pl_trainer = lightning_trainer(schedule, tmp_path, config)
        model, val = lightning_models.BoringModel(), lightning_models.loader(2, batch_size=2)

        def evaluate() -> Any:
            return pl_trainer.validate(model, val)

    with pytest.raises(RuntimeError, match="FailInEvaluate fails"):
        evaluate()
    assert [json.loads(line)[1] for line in events.read_text().splitlines()] == [
        "evaluate_begin", "log:eval", "evaluate", "exception:RuntimeError",
    ]  # fmt: skip
