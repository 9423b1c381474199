"""Real DDP: 2 processes, gloo on CPU, launched with ``torchrun`` (``torch.distributed.run``).

One launch serves the first three tests: a Recorder on every rank, a rank-zero-only
Recorder, and a stop request made on rank 1 only. Every subprocess has a timeout,
so a collective that one rank skips fails the test instead of hanging it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from support.hf_models import run_script

pytestmark = pytest.mark.ddp

WORLD = 2
TIMEOUT = 120


def launch(out: Path, config: dict[str, Any], *args: str) -> list[dict[str, Any]]:
    """Train under torchrun; the per-rank results, by rank."""
    run_script(
        "--output-dir", str(out / "run"),
        "--config", json.dumps(config),
        "--result", str(out / "result-{rank}.json"),
        *args,
        cwd=out, nproc=WORLD, timeout=TIMEOUT,
    )  # fmt: skip
    return [json.loads((out / f"result-{rank}.json").read_text()) for rank in range(WORLD)]


def lines(path: Path) -> dict[int, list[tuple[str, int]]]:
    """A Recorder's ``path`` file: its events per rank, in order."""
    out: dict[int, list[tuple[str, int]]] = {}
    for line in path.read_text().splitlines():
        rank, name, step = line.split()
        out.setdefault(int(rank), []).append((name, int(step)))
    return out


@pytest.fixture(scope="module")
def stop_on_one_rank(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("ddp")
    config = {
        "strict": True,
        "custom_callbacks": [
            {"name": "support.recorder.Recorder", "args": {"path": str(out / "every.txt")}},
            {"name": "support.recorder.RankZeroRecorder", "args": {"path": str(out / "zero.txt")}},
            {"name": "support.neutral_spies.StopOnRank", "args": {"rank": 1, "at_step": 3}},
        ],
    }
    results = launch(out, config, "--max-steps", "6", "--logging-steps", "2", "--save-steps", "2")
    return out, results


def test_every_callback_sees_its_rank_and_the_world_size(
    stop_on_one_rank: tuple[Path, list[dict[str, Any]]],
) -> None:
    out, results = stop_on_one_rank
    for rank, result in enumerate(results):
        assert (result["rank"], result["world_size"]) == (rank, WORLD)
        recorder = result["callbacks"][0]
        assert recorder["seen"]["rank"] == rank
        assert recorder["seen"]["world_size"] == WORLD
        assert recorder["seen"]["is_main_process"] is (rank == 0)
    every = lines(out / "every.txt")
    assert sorted(every) == [0, 1]
    for rank in range(WORLD):
        assert every[rank] == [tuple(e) for e in results[rank]["callbacks"][0]["events"]]
    assert every[0] == every[1]  # the same events at the same steps on both ranks
    # Each rank checkpointed its own callback state.
    state = out / "run" / "checkpoint-2" / "callbridge"
    assert [p.name.split("-")[0] for p in sorted(state.iterdir())] == ["rank0", "rank1"]


def test_rank_zero_only_callback_runs_once(
    stop_on_one_rank: tuple[Path, list[dict[str, Any]]],
) -> None:
    out, results = stop_on_one_rank
    zero = lines(out / "zero.txt")
    assert sorted(zero) == [0]
    assert zero[0] == lines(out / "every.txt")[0]
    assert results[1]["callbacks"][1]["events"] == []


def test_a_stop_on_one_rank_stops_every_rank(
    stop_on_one_rank: tuple[Path, list[dict[str, Any]]],
) -> None:
    out, results = stop_on_one_rank
    assert [r["global_step"] for r in results] == [3, 3]
    for events in lines(out / "every.txt").values():
        assert [step for name, step in events if name == "step_end"] == [1, 2, 3]
        assert events[-1] == ("train_end", 3)


def test_a_callback_disabled_on_one_rank_only_does_not_hang_the_others(tmp_path: Path) -> None:
    """A callback disabled on rank 1 only (callback_errors = "disable"): the ranks still meet.

    FailOnRank is the last callback implementing on_step_end, where the ranks reduce
    the stop flag: rank 1 must keep joining that collective after disabling it.
    """
    config = {
        "strict": True,
        "callback_errors": "disable",
        "callback_max_failures": 1,
        "custom_callbacks": [
            {"name": "support.neutral_spies.StopOnRank", "args": {"rank": 0, "at_step": 4}},
            {"name": "support.neutral_spies.FailOnRank", "args": {"rank": 1}},
        ],
    }
    results = launch(tmp_path, config, "--max-steps", "8", "--logging-steps", "2")
    assert [r["global_step"] for r in results] == [4, 4]
