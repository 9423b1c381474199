"""Real DDP under Lightning: ``strategy="ddp"`` on 2 CPU processes (gloo), run from a fresh Python.

Lightning starts rank 1 itself by running the script again. Every rank's
neutral callbacks append ``<rank> <event> <step>`` lines to a shared file, and
every rank writes its trainer's final state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from support.lightning_models import run_script

pytestmark = pytest.mark.ddp

TIMEOUT = 180  # a hang in a collective must fail the test, not the whole session


def run_ddp(tmp_path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    path = tmp_path / "callbacks.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    out = tmp_path / "result"
    # 16 batches: 8 per rank after Lightning's DistributedSampler; training would go on to step 10.
    run_script(
        "--root", str(tmp_path / "run"), "--config", str(path), "--out", str(out),
        "--max-steps", "10", "--train-batches", "16", "--log-every", "4", "--ddp",
        cwd=tmp_path, timeout=TIMEOUT,
    )  # fmt: skip
    return [json.loads(Path(f"{out}.rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]


def lines(path: Path) -> dict[int, list[tuple[str, int]]]:
    """The events of each rank, in the order that rank recorded them."""
    by_rank: dict[int, list[tuple[str, int]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        rank, event, step = line.split()
        by_rank.setdefault(int(rank), []).append((event, int(step)))
    return by_rank


def events_to_step(step: int) -> list[tuple[str, int]]:
    """One epoch stopped after ``step``: Lightning logs and validates on its way out.

    Its validation is per epoch here (the default cadence), so the contract puts the
    cut-short epoch's end before it, as HF runs an ``eval_strategy="epoch"`` evaluation.
    """
    steps = [e for s in range(step) for e in (("step_begin", s), ("step_end", s + 1))]
    return [
        ("train_begin", 0), ("epoch_begin", 0), *steps,
        ("log:loss", step), ("epoch_end", step),
        ("evaluate_begin", step), ("log:val_loss", step), ("evaluate:val_loss", step),
        ("train_end", step),
    ]  # fmt: skip


def test_ranks_rank_zero_only_and_a_stop_decided_on_one_rank(tmp_path: Path) -> None:
    """Callbacks see their rank; RankZeroRecorder runs on rank 0 only; rank 1's stop stops both."""
    everyone, rank_zero = tmp_path / "everyone.txt", tmp_path / "rank_zero.txt"
    results = run_ddp(
        tmp_path,
        {
            "custom_callbacks": [
                {"name": "support.recorder.Recorder", "args": {"path": str(everyone)}},
                {"name": "support.recorder.RankZeroRecorder", "args": {"path": str(rank_zero)}},
                {"name": "support.neutral_spies.StopOnRank", "args": {"rank": 1, "at_step": 3}},
            ]
        },
    )

    assert [(r["rank"], r["world_size"], r["global_step"]) for r in results] == [
        (0, 2, 3),
        (1, 2, 3),
    ]
    recorder = "support.recorder.Recorder"
    for rank, result in enumerate(results):
        assert result["seen"][recorder] == {
            "framework": "lightning",
            "rank": rank,
            "world_size": 2,
            "is_main_process": rank == 0,
            "max_steps": 10,
        }
    assert lines(everyone) == {0: events_to_step(3), 1: events_to_step(3)}
    assert lines(rank_zero) == {0: events_to_step(3)}
    assert results[1]["counters"]["support.recorder.RankZeroRecorder"] == {}


def test_a_callback_disabled_on_one_rank_only_does_not_desynchronise_the_ranks(
    tmp_path: Path,
) -> None:
    """The cross-rank stop reduction is entered on every rank, even where its callback was disabled.

    FailOnRank is the last callback with on_step_end, so the reduction follows it;
    it fails on rank 1 only and is disabled there after its first failure. Were rank 1
    to skip the reduction from then on, rank 0 would wait in it for ever.
    """
    everyone = tmp_path / "everyone.txt"
    results = run_ddp(
        tmp_path,
        {
            "callback_errors": "disable",
            "callback_max_failures": 1,
            "custom_callbacks": [
                {"name": "support.recorder.Recorder", "args": {"path": str(everyone)}},
                {"name": "support.neutral_spies.StopOnRank", "args": {"rank": 0, "at_step": 3}},
                {"name": "support.neutral_spies.FailOnRank", "args": {"rank": 1}},
            ],
        },
    )

    assert [(r["rank"], r["global_step"]) for r in results] == [(0, 3), (1, 3)]
    assert lines(everyone) == {0: events_to_step(3), 1: events_to_step(3)}
