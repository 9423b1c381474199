"""The built-in ``log`` callback (callbridge.callbacks.log), run with the Driver."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import callbridge
from callbridge.callbacks.log import LogCallback
from callbridge.testing import Driver


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_file_holds_one_object_per_event(tmp_path: Path) -> None:
    [log] = callbridge.build(
        {"custom_callbacks": [{"name": "log", "args": {"jsonl": "metrics.jsonl"}}]}
    )
    result = Driver([log], max_steps=4, logging_steps=2, eval_steps=4, output_dir=tmp_path).run()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["event"], r["step"]) for r in records] == [
        ("train_begin", 0),
        ("log", 2),
        ("log", 4),
        ("log", 4),  # the evaluation's metrics, logged as the trainers log them
        ("evaluate", 4),
        ("train_end", 4),
    ]
    assert [r["loss"] for r in records if r["event"] == "log" and "loss" in r] == [
        logs["loss"] for logs in result.logged
    ]
    assert records[4]["eval_loss"] == result.evaluated[0]["eval_loss"]
    assert records[2]["epoch"] == 4 / 5
    assert all(isinstance(r["time"], float) for r in records)


def test_a_relative_path_goes_in_the_output_dir_and_an_absolute_one_is_kept(tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere" / "abs.jsonl"
    run_dir = tmp_path / "run"
    Driver(
        [LogCallback(jsonl=Path("sub/rel.jsonl")), LogCallback(jsonl=absolute)],
        max_steps=1,
        output_dir=run_dir,
    ).run()
    assert len(read_jsonl(run_dir / "sub" / "rel.jsonl")) == 3
    assert len(read_jsonl(absolute)) == 3


def test_a_second_run_appends(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    Driver([LogCallback(jsonl=path)], max_steps=1).run()
    Driver([LogCallback(jsonl=path)], max_steps=1).run()
    assert [r["event"] for r in read_jsonl(path)] == ["train_begin", "log", "train_end"] * 2


def test_only_rank_zero_writes(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    Driver([LogCallback(jsonl=path)], max_steps=3, rank=1, world_size=2).run()
    assert not path.exists()
    Driver([LogCallback(jsonl=path)], max_steps=3, rank=0, world_size=2).run()
    assert path.exists()


def test_a_failing_run_ends_the_file_with_the_error(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with pytest.raises(RuntimeError):
        Driver([LogCallback(jsonl=path)], max_steps=5, raise_at_step=3).run()
    last = read_jsonl(path)[-1]
    assert (last["event"], last["step"], last["error"]) == (
        "exception",
        2,
        "RuntimeError: training failed at step 3",
    )


def test_metrics_go_to_the_python_logger_at_the_chosen_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = callbridge.build(
        {
            "custom_callbacks": [
                {"name": "log", "args": {"level": "warning", "logger_name": "acme.metrics"}}
            ]
        }
    )[0]
    with caplog.at_level(logging.DEBUG, logger="acme.metrics"):
        Driver([log], max_steps=2, loss=lambda step: 0.5 * step).run()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "acme.metrics"]
    assert lines[1] == ("WARNING", "[driver] step 1/2 epoch 0.20 log loss=0.5 epoch=0.2")
    assert lines[2] == ("WARNING", "[driver] step 2/2 epoch 0.40 log loss=1 epoch=0.4")
    assert len(lines) == 4


def test_no_jsonl_means_no_file(tmp_path: Path) -> None:
    Driver([LogCallback()], max_steps=2, output_dir=tmp_path).run()
    assert list(tmp_path.iterdir()) == []


def test_an_evaluation_after_train_end_is_appended_to_the_same_file(tmp_path: Path) -> None:
    """LLaMA-Factory (and many HF scripts) evaluate after train() returned: the line is kept."""
    [log] = callbridge.build(
        {"custom_callbacks": [{"name": "log", "args": {"jsonl": "metrics.jsonl"}}]}
    )
    result = Driver([log], max_steps=2, output_dir=tmp_path).run()
    log.on_evaluate(result.run, {"eval_loss": 0.5})
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["event"] for r in records][-2:] == ["train_end", "evaluate"]
    assert records[-1]["eval_loss"] == 0.5
    assert log._file is None  # closed again after the late line
