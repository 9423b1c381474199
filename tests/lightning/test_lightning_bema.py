"""``bema`` under Lightning, on a LightningModule holding a plain ``nn.Module`` with a frozen layer.

The weights are recorded after every optimizer step by a spy placed before ``bema``
and BEMA is recomputed from them (``support.bema_reference``): the saved file must
match bit for bit. Resume and DDP run in fresh processes
(``support/lightning_bema_script.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import callbridge_lightning
from support.bema_reference import max_abs_diff, reference_float32, reference_float64, schedule
from support.bema_spies import spied_config, trainable
from support.lightning_bema import FrozenFirstMLP, run_script
from support.lightning_models import loader, trainer

safetensors_torch = pytest.importorskip(
    "safetensors.torch", reason="bema saves a plain module as safetensors"
)

FREQ = 3
TRAINABLE = ["net.2.weight", "net.2.bias"]
FROZEN = ["net.0.weight", "net.0.bias"]


def bema_entry(**args: Any) -> dict[str, Any]:
    return {"name": "bema", "args": {"update_freq": FREQ, **args}}


def fit(
    root: Path, config: dict[str, Any], *, max_steps: int = 12, batches: int = 4
) -> tuple[Any, list[Any]]:
    """Fit FrozenFirstMLP in this process; validation every epoch (every ``batches`` steps)."""
    callbacks = callbridge_lightning.callbacks(config)
    model = FrozenFirstMLP()
    tr = trainer(root, callbacks, max_steps=max_steps, max_epochs=-1, log_every_n_steps=1)
    tr.fit(model, loader(batches), loader(2, seed=1))
    return model, callbridge_lightning.unwrap(callbacks)


def saved(root: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = safetensors_torch.load_file(root / "bema" / "model.safetensors")
    return out


# -- the weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("update_after", [0, 2])
def test_saved_weights_equal_the_reference_from_the_recorded_trajectory(
    tmp_path: Path, update_after: int
) -> None:
    args = {"update_freq": FREQ, "update_after": update_after}
    config = {
        "strict": True,
        "custom_callbacks": [
            {"name": "support.bema_spies.WeightSpy", "args": {"trajectory": True}},
            {"name": "bema", "args": args},
        ],
    }
    model, (spy, _) = fit(tmp_path, config)

    assert sorted(spy.steps) == list(range(13))
    file = saved(tmp_path)
    assert sorted(file) == sorted(model.state_dict())
    reference = reference_float32(spy.steps, 12, **args)
    assert max_abs_diff({k: file[k] for k in TRAINABLE}, reference) == 0
    exact = reference_float64(spy.steps, 12, **args)
    assert max_abs_diff({k: file[k].double() for k in TRAINABLE}, exact) < 1e-6
    assert max_abs_diff({k: file[k] for k in TRAINABLE}, spy.steps[12]) > 1e-4  # not the live ones
    # The live weights are those training ended with (the save swapped them back).
    assert max_abs_diff(trainable(model), spy.steps[12]) == 0


def test_frozen_parameters_are_excluded_and_saved_as_they_are(tmp_path: Path) -> None:
    initial = FrozenFirstMLP().state_dict()
    model, (bema,) = fit(tmp_path, {"custom_callbacks": [bema_entry()]})
    assert bema.names == TRAINABLE
    file = saved(tmp_path)
    live = model.state_dict()
    for name in FROZEN:
        assert torch.equal(file[name], live[name]), name
        assert torch.equal(live[name], initial[name]), name


# -- evaluation with the BEMA weights -------------------------------------------------------------

EVAL_ARGS = {"update_after": 2}  # snapshot at 2, updates at 5, 8, 11; validation at 4, 8, 12


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bema-eval")
    runs: dict[str, Any] = {"root": root}
    for evaluate_with in ("bema", "live"):
        config = {
            "strict": True,
            "custom_callbacks": [
                {"name": "support.bema_spies.WeightSpy", "args": {"trajectory": True}},
                bema_entry(evaluate_with=evaluate_with, **EVAL_ARGS),
                "support.bema_spies.WeightSpy",
            ],
        }
        runs[evaluate_with] = fit(root / evaluate_with, config)
    return runs


def test_evaluation_uses_the_bema_weights_and_gives_the_live_ones_back_bit_exactly(
    evaluated: dict[str, Any],
) -> None:
    """Spy, bema, spy: the second spy sees what validation uses, then the live weights again."""
    _, (before, _, after) = evaluated["bema"]
    steps = [s for s, _ in before.eval_begin]
    assert steps == [4, 8, 12]
    first_update = schedule(12, update_freq=FREQ, **EVAL_ARGS)[1][0]
    for i, step in enumerate(steps):
        live, used = before.eval_begin[i][1], after.eval_begin[i][1]
        assert max_abs_diff(before.eval_end[i][1], used) == 0, step
        assert max_abs_diff(after.eval_end[i][1], live) == 0, step
        assert max_abs_diff(live, before.steps[step]) == 0, step
        if step < first_update:
            assert max_abs_diff(used, live) == 0, f"swapped before the first update, at {step}"
        else:
            reference = reference_float32(before.steps, step, update_freq=FREQ, **EVAL_ARGS)
            assert max_abs_diff(used, reference) == 0, step
            assert max_abs_diff(used, live) > 1e-4, step


def test_evaluating_with_bema_changes_the_metrics_not_the_training(
    evaluated: dict[str, Any],
) -> None:
    _, (bema_before, *_) = evaluated["bema"]
    _, (live_before, *_) = evaluated["live"]
    assert bema_before.steps.keys() == live_before.steps.keys()
    for step in bema_before.steps:
        assert max_abs_diff(bema_before.steps[step], live_before.steps[step]) == 0, step
    with_bema = [(s, m["val_loss"]) for s, _, m in bema_before.eval_end]
    with_live = [(s, m["val_loss"]) for s, _, m in live_before.eval_end]
    assert with_bema[0] == with_live[0]  # step 4: before the first update
    assert all(b[1] != v[1] for b, v in zip(with_bema[1:], with_live[1:], strict=True))


def test_the_bema_val_loss_is_that_of_the_saved_bema_weights(evaluated: dict[str, Any]) -> None:
    """The last validation (step 12; last update at 11) used the weights saved at train end."""
    _, (before, *_) = evaluated["bema"]
    model = FrozenFirstMLP(seed=1)
    model.load_state_dict(saved(evaluated["root"] / "bema"))
    (metrics,) = trainer(evaluated["root"] / "check").validate(
        model, loader(2, seed=1), verbose=False
    )
    assert before.eval_end[-1][0] == 12
    assert before.eval_end[-1][2]["val_loss"] == metrics["val_loss"]


# -- resume in a fresh process ------------------------------------------------------------------

RESUME_ARGS = {"update_after": 2, "evaluate_with": "bema"}


def resume_config(stop_at: int | None) -> str:
    # The same entries every time: callback state is keyed by position and name.
    recorder = {"name": "support.recorder.Recorder", "args": {"stop_at": stop_at}}
    return json.dumps({"strict": True, "custom_callbacks": [recorder, bema_entry(**RESUME_ARGS)]})


def test_resume_in_a_fresh_process_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """20 steps stopped at 10 (a checkpoint at an epoch's end), resumed to 20 == 20 straight."""
    common = ["--max-steps", "20", "--train-batches", "5", "--ckpt-every", "10"]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    run_script(
        "--root", str(resumed), "--config", resume_config(10), "--out", str(tmp_path / "first"),
        *common, cwd=tmp_path,
    )  # fmt: skip
    checkpoint = resumed / "checkpoints" / "step10.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["callbacks"]
    (session,) = [v for k, v in state.items() if k.startswith("callbridge[")]
    bema_state = session["entries"]["bema"]["state"]  # filed under the entry's name
    assert (bema_state["holds"], bema_state["last_update"], bema_state["snapshot_taken"]) == (
        True,
        8,
        True,
    )

    run_script(
        "--root", str(resumed), "--config", resume_config(None), "--out", str(tmp_path / "second"),
        "--ckpt-path", str(checkpoint), *common, cwd=tmp_path,
    )  # fmt: skip
    run_script(
        "--root", str(straight), "--config", resume_config(None), "--out", str(tmp_path / "full"),
        *common, cwd=tmp_path,
    )  # fmt: skip
    first, second, full = (
        torch.load(f"{tmp_path / name}.rank0.pt", weights_only=True)
        for name in ("first", "second", "full")
    )
    assert (first["global_step"], second["global_step"], full["global_step"]) == (10, 20, 20)
    assert max_abs_diff(second["live"], full["live"]) == 0
    for key in ("theta0", "ema", "bema"):
        assert all(
            torch.equal(a, b) for a, b in zip(second["state"][key], full["state"][key], strict=True)
        )
    assert second["state"]["last_update"] == full["state"]["last_update"] == 20
    got, expected = saved(resumed), saved(straight)
    assert max_abs_diff(got, expected) == 0
    assert max_abs_diff({k: got[k] for k in TRAINABLE}, full["live"]) > 1e-4


# -- DDP ----------------------------------------------------------------------------------------

DDP_ARGS = {"update_after": 2, "evaluate_with": "bema"}
DDP_STEPS = 12


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """strategy="ddp", 2 CPU processes; 16 batches an epoch, 8 per rank: validation at step 8."""
    out = tmp_path_factory.mktemp("bema-ddp")
    config = spied_config(out, bema_entry(**DDP_ARGS))
    run_script(
        "--root", str(out / "run"), "--config", json.dumps(config), "--out", str(out / "result"),
        "--max-steps", str(DDP_STEPS), "--train-batches", "16", "--ddp",
        cwd=out, timeout=240,
    )  # fmt: skip

    def load(name: str) -> list[Any]:
        return [torch.load(out / name.format(rank=rank), weights_only=True) for rank in (0, 1)]

    return {
        "out": out,
        "result": load("result.rank{rank}.pt"),
        "before": load("before-{rank}.pt"),
        "after": load("after-{rank}.pt"),
    }


@pytest.mark.ddp
def test_ddp_rank_zero_holds_the_buffers_and_rank_one_none(ddp: dict[str, Any]) -> None:
    zero, one = ddp["result"]
    assert [(r["rank"], r["world_size"], r["global_step"]) for r in ddp["result"]] == [
        (0, 2, DDP_STEPS), (1, 2, DDP_STEPS),
    ]  # fmt: skip
    assert zero["holds_buffers"] is True
    assert one["holds_buffers"] is False
    assert zero["names"] == one["names"] == TRAINABLE
    assert zero["state"]["holds"] is True
    assert len(zero["state"]["bema"]) == 2
    # No buffers on rank 1, but the schedule: it knows when there is something to swap in.
    assert (one["state"]["holds"], one["state"]["last_update"]) == (False, 11)
    assert not {"names", "theta0", "ema", "bema"} & one["state"].keys()


@pytest.mark.ddp
def test_ddp_saved_weights_equal_the_reference_from_rank_zeros_trajectory(
    ddp: dict[str, Any],
) -> None:
    trajectory = ddp["before"][0]["steps"]
    assert sorted(trajectory) == list(range(DDP_STEPS + 1))
    for step, weights in ddp["before"][1]["steps"].items():
        assert max_abs_diff(weights, trajectory[step]) == 0, step  # replicated
    file = saved(ddp["out"] / "run")
    reference = reference_float32(trajectory, DDP_STEPS, update_freq=FREQ, **DDP_ARGS)
    assert max_abs_diff({k: file[k] for k in TRAINABLE}, reference) == 0
    exact = reference_float64(trajectory, DDP_STEPS, update_freq=FREQ, **DDP_ARGS)
    assert max_abs_diff({k: file[k].double() for k in TRAINABLE}, exact) < 1e-6


@pytest.mark.ddp
def test_ddp_validation_gives_every_rank_the_bema_weights_then_its_own_back(
    ddp: dict[str, Any],
) -> None:
    """Rank 1 holds no buffers: rank 0 broadcasts the BEMA weights in and the live ones back."""
    trajectory = ddp["before"][0]["steps"]
    steps = [s for s, _ in ddp["before"][0]["eval_begin"]]
    assert steps
    assert steps[0] == 8
    for rank in (0, 1):
        before, after = ddp["before"][rank], ddp["after"][rank]
        assert [s for s, _ in before["eval_begin"]] == steps
        for i, (step, live) in enumerate(before["eval_begin"]):
            reference = reference_float32(trajectory, step, update_freq=FREQ, **DDP_ARGS)
            assert max_abs_diff(after["eval_begin"][i][1], reference) == 0, (rank, step)
            assert max_abs_diff(after["eval_end"][i][1], live) == 0, (rank, step)
