"""Resume under Lightning: each neutral callback's state travels in the checkpoint, under its key.

The stop-and-resume runs are fresh Python processes (``support/lightning_script.py``):
nothing survives between them but the checkpoint file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import callbridge_lightning
from support.lightning_models import BoringModel, loader, run_script, trainer

# State keys: the entry's name, with #2 for the second of the same name.
KEYS = ("support.recorder.Recorder", "support.recorder.Recorder#2")
# The events whose counts must not notice the interruption.
CONTINUED = ("step_begin", "step_end", "log", "evaluate_begin", "evaluate", "save")


def write_config(path: Path, stop_at: int | None) -> Path:
    first = {
        "name": "support.recorder.Recorder",
        "args": {} if stop_at is None else {"stop_at": stop_at},
    }
    config = {"custom_callbacks": [first, {"name": "support.recorder.Recorder"}]}
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def run(root: Path, name: str, config: Path, *extra: str) -> dict[str, Any]:
    out = root / name
    # 4 batches an epoch: validation and logging at steps 4, 8, 12; a checkpoint every 6 steps.
    run_script(
        "--root", str(root / name), "--config", str(config), "--out", str(out),
        "--max-steps", "12", "--train-batches", "4", "--log-every", "4", "--ckpt-every", "6",
        *extra,
        cwd=root,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(Path(f"{out}.rank0.json").read_text(encoding="utf-8"))
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted 12-step run; a run stopped at 6; its resumption to 12. Three processes."""
    root = tmp_path_factory.mktemp("resume")
    go = write_config(root / "go.json", stop_at=None)
    stop = write_config(root / "stop.json", stop_at=6)
    checkpoint = root / "resumed" / "checkpoints" / "step6.ckpt"
    return {
        "full": run(root, "full", go),
        "first": run(root, "resumed", stop, "--mark"),  # counters["instance"] = 0 and 1 before fit
        "second": run(root, "resumed", go, "--ckpt-path", str(checkpoint)),
        "checkpoint": checkpoint,
    }


def test_stop_then_resume_continues_the_counters_of_an_uninterrupted_run(
    runs: dict[str, Any],
) -> None:
    """Stop at step 6 (checkpoint), resume to 12 in another process: counts as if never stopped.

    The cadences keep logging and validation off step 6: Lightning saves the checkpoint
    in on_train_batch_end, before that step's logging and validation, so what those
    would deliver at step 6 comes after the checkpoint (and the stopping process logs
    and validates once more on its way out). The ``save`` of step 6 is in the checkpoint.
    """
    full, first, second = runs["full"], runs["first"], runs["second"]

    assert (full["global_step"], first["global_step"], second["global_step"]) == (12, 6, 12)
    for key in KEYS:
        expected = {event: full["counters"][key][event] for event in CONTINUED}
        assert expected == {
            "step_begin": 12, "step_end": 12, "log": 6,
            "evaluate_begin": 3, "evaluate": 3, "save": 2,
        }  # fmt: skip
        assert {event: second["counters"][key][event] for event in CONTINUED} == expected
        # The second process fits anew: a train_begin of its own after the restored one.
        assert second["counters"][key]["train_begin"] == 2


def saved_states(checkpoint: Path) -> dict[str, Any]:
    """The neutral callbacks' states in a Lightning checkpoint, by state key."""
    callbacks = torch.load(checkpoint, map_location="cpu", weights_only=True)["callbacks"]
    (session,) = [v for k, v in callbacks.items() if k.startswith("callbridge[")]
    return {key: entry["state"] for key, entry in session["entries"].items()}


def test_two_instances_of_one_class_keep_separate_state(runs: dict[str, Any]) -> None:
    """Each instance has its own state key: two Recorders restore their own counters."""
    state = saved_states(runs["checkpoint"])
    assert [state[key]["counters"]["instance"] for key in KEYS] == [0, 1]
    assert [runs["second"]["counters"][key]["instance"] for key in KEYS] == [0, 1]


def test_checkpoint_holds_the_state_after_on_save(runs: dict[str, Any]) -> None:
    """Lightning takes state_dict() before on_save_checkpoint; the saved state counts that save."""
    state = saved_states(runs["checkpoint"])
    for key in KEYS:
        assert state[key]["counters"]["save"] == 1
        assert state[key]["counters"]["step_end"] == 6


def test_from_config_callbacks_get_their_state_back(tmp_path: Path) -> None:
    """FromConfig inserts its callbacks at setup, before Lightning restores callback state."""
    config = tmp_path / "callbacks.json"
    config.write_text(
        json.dumps({"custom_callbacks": ["support.recorder.Recorder"]}), encoding="utf-8"
    )
    checkpoint = tmp_path / "after4.ckpt"

    def fit(max_steps: int, ckpt_path: Path | None = None) -> Any:
        from_config = callbridge_lightning.FromConfig(str(config))
        tr = trainer(tmp_path, [from_config], max_steps=max_steps)
        tr.fit(BoringModel(), loader(4), loader(2, seed=1), ckpt_path=ckpt_path)
        if ckpt_path is None:
            tr.save_checkpoint(checkpoint)
        return from_config.children[0].callback

    first = fit(4)
    second = fit(8, checkpoint)

    assert (first.counters["step_end"], first.counters["save"]) == (4, 1)
    assert (second.counters["step_end"], second.counters["save"]) == (8, 1)
    assert second.counters["train_begin"] == 2
