"""``bema`` under the Hugging Face ``Trainer``: TRL's numbers, evaluation, resume and DDP.

Every model is the tiny GPT-2 with dropout off (``support.hf_bema_train.no_dropout_gpt2``):
TRL's BEMACallback consumes the random number generator at train begin (it builds
``type(model)(model.config)``), so with dropout two otherwise identical runs would
diverge through their dropout masks, not through BEMA.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import callbridge_hf
from support.bema_reference import max_abs_diff, reference_float32, reference_float64, schedule
from support.bema_spies import WeightSpy, spied_config
from support.hf_bema_train import no_dropout_gpt2, run_script
from support.hf_models import make_trainer, neutral_callbacks, saved_state

FREQ = 3
WEIGHTS = Path("bema") / "model.safetensors"


def bema_entry(**args: Any) -> dict[str, Any]:
    return {"name": "bema", "args": {"update_freq": FREQ, **args}}


# -- against TRL -------------------------------------------------------------------------------


@pytest.mark.parametrize("update_after", [0, 4])
def test_saved_weights_equal_trls_bit_for_bit(tmp_path: Path, update_after: int) -> None:
    """One run with trl.BEMACallback, one with our bema from a config: the same saved weights."""
    trl = pytest.importorskip("trl")
    args = {"update_freq": FREQ, "update_after": update_after}
    theirs = make_trainer(
        tmp_path / "trl",
        model=no_dropout_gpt2(),
        callbacks=[trl.BEMACallback(**args)],
        max_steps=12,
    )
    theirs.train()
    ours = callbridge_hf.attach(
        make_trainer(tmp_path / "ours", model=no_dropout_gpt2(), max_steps=12),
        {"custom_callbacks": [{"name": "bema", "args": args}], "strict": True},
    )
    ours.train()

    expected, got = load_file(tmp_path / "trl" / WEIGHTS), load_file(tmp_path / "ours" / WEIGHTS)
    assert sorted(got) == sorted(expected)
    assert max_abs_diff(got, expected) == 0.0
    # Not a trivial pass: the averages differ from the weights training ended with.
    live = {k: v for k, v in ours.model.state_dict().items() if k in got}
    assert max_abs_diff(got, live) > 1e-4
    # What the docstring promises: the folder loads with from_pretrained.
    reloaded = type(ours.model).from_pretrained(tmp_path / "ours" / "bema")
    assert max_abs_diff({k: reloaded.state_dict()[k] for k in got}, got) == 0.0


# -- evaluation with the BEMA weights --------------------------------------------------------

EVAL_ARGS = {"update_after": 4}  # snapshot at 4, updates at 7 and 10
EVAL_STEPS, EVAL_MAX = 2, 12


def evaluated_run(tmp_path: Path, evaluate_with: str) -> tuple[Any, WeightSpy, WeightSpy]:
    """12 steps, an evaluation every 2; spies before and after bema in the list."""
    trainer = callbridge_hf.attach(
        make_trainer(
            tmp_path / evaluate_with, model=no_dropout_gpt2(), max_steps=EVAL_MAX,
            eval_strategy="steps", eval_steps=EVAL_STEPS,
        ),
        {
            "strict": True,
            "custom_callbacks": [
                {"name": "support.bema_spies.WeightSpy", "args": {"trajectory": True}},
                bema_entry(evaluate_with=evaluate_with, **EVAL_ARGS),
                "support.bema_spies.WeightSpy",
            ],
        },
    )  # fmt: skip
    trainer.train()
    before, _, after = neutral_callbacks(trainer)
    return trainer, before, after


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bema-eval")
    return {"root": root, "bema": evaluated_run(root, "bema"), "live": evaluated_run(root, "live")}


def test_evaluation_uses_the_bema_weights_and_gives_the_live_ones_back_bit_exactly(
    evaluated: dict[str, Any],
) -> None:
    """Order: spy, bema, spy. At evaluate_begin the first spy sees the live weights, the second
    (after the swap) what evaluation uses; at evaluate the first still sees those, the second
    (after the swap back) must see the live weights again, to the bit."""
    _, before, after = evaluated["bema"]
    steps = [s for s, _ in before.eval_begin]
    assert steps == list(range(EVAL_STEPS, EVAL_MAX + 1, EVAL_STEPS))
    _, updates = schedule(EVAL_MAX, update_freq=FREQ, **EVAL_ARGS)
    for i, step in enumerate(steps):
        live = before.eval_begin[i][1]
        used = after.eval_begin[i][1]
        assert max_abs_diff(before.eval_end[i][1], used) == 0, step  # unchanged during evaluation
        assert max_abs_diff(after.eval_end[i][1], live) == 0, step  # the live weights are back
        assert max_abs_diff(live, before.steps[step]) == 0, step
        if step < updates[0]:
            assert max_abs_diff(used, live) == 0, f"swapped before the first update, at {step}"
        else:
            reference = reference_float32(before.steps, step, update_freq=FREQ, **EVAL_ARGS)
            assert max_abs_diff(used, reference) == 0, step
            assert max_abs_diff(used, live) > 1e-4, step


def test_evaluating_with_bema_changes_the_metrics_not_the_training(
    evaluated: dict[str, Any],
) -> None:
    """Against evaluate_with="live": the same metrics until the first update, other ones after;
    the same live weights at every step (the swaps perturb nothing)."""
    _, bema_before, _ = evaluated["bema"]
    _, live_before, _ = evaluated["live"]
    assert bema_before.steps.keys() == live_before.steps.keys()
    for step in bema_before.steps:
        assert max_abs_diff(bema_before.steps[step], live_before.steps[step]) == 0, step
    first_update = schedule(EVAL_MAX, update_freq=FREQ, **EVAL_ARGS)[1][0]
    for (step, _, with_bema), (_, _, with_live) in zip(
        bema_before.eval_end, live_before.eval_end, strict=True
    ):
        if step < first_update:
            assert with_bema["eval_loss"] == with_live["eval_loss"], step
        else:
            assert with_bema["eval_loss"] != with_live["eval_loss"], step


def test_the_bema_eval_loss_is_that_of_the_saved_bema_model(evaluated: dict[str, Any]) -> None:
    """The last evaluation (step 12; last update at 10) used the weights saved at train end."""
    trainer, before, _ = evaluated["bema"]
    model = type(trainer.model).from_pretrained(evaluated["root"] / "bema" / "bema")
    expected = make_trainer(evaluated["root"] / "check", model=model).evaluate()
    assert before.eval_end[-1][0] == EVAL_MAX
    assert before.eval_end[-1][2]["eval_loss"] == expected["eval_loss"]


def test_evaluate_after_training_uses_the_bema_weights_too(evaluated: dict[str, Any]) -> None:
    """trainer.evaluate() once train() returned: the loss of the last evaluation in training."""
    trainer, before, _ = evaluated["bema"]
    live = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == before.eval_end[-1][2]["eval_loss"]
    assert all(torch.equal(p, live[n]) for n, p in trainer.model.named_parameters())


# -- the asynchronous update -------------------------------------------------------------------


def test_async_stage_gives_the_sync_evaluations_checkpoints_and_saved_weights(
    tmp_path: Path,
) -> None:
    """stage="async" on a CPU model (copy on the training thread, arithmetic in a worker): an
    evaluation and a checkpoint right after every update see it completed, bit for bit."""
    runs = {}
    for stage in ("sync", "async"):
        entry = bema_entry(update_freq=2, evaluate_with="bema", stage=stage)
        trainer = callbridge_hf.attach(
            make_trainer(
                tmp_path / stage, model=no_dropout_gpt2(), max_steps=8,
                eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=4,
            ),
            {"strict": True, "custom_callbacks": [entry]},
        )  # fmt: skip
        trainer.train()
        losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
        runs[stage] = losses, neutral_callbacks(trainer)[0]
    (sync_losses, sync_bema), (losses, bema) = runs["sync"], runs["async"]
    assert (sync_bema._async, bema._async) == (False, True)
    assert len(losses) == 4
    assert losses == sync_losses
    for step in (4, 8):
        got, expected = (
            saved_state(tmp_path / stage / f"checkpoint-{step}")["bema"]
            for stage in ("async", "sync")
        )
        assert got["last_update"] == expected["last_update"] == step
        for key in ("theta0", "ema", "bema"):
            assert all(torch.equal(a, b) for a, b in zip(got[key], expected[key], strict=True))
    got, expected = load_file(tmp_path / "async" / WEIGHTS), load_file(tmp_path / "sync" / WEIGHTS)
    assert max_abs_diff(got, expected) == 0


# -- resume in a fresh process ----------------------------------------------------------------

RESUME_ARGS = {"update_after": 2, "evaluate_with": "bema"}  # updates at 5, 8, 11, ...


def test_resume_in_a_fresh_process_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """20 steps stopped at 10 (checkpoint), resumed to 20 in another process == 20 straight."""

    def config(stop_at: int | None) -> str:
        # The same entries every time: callback state is keyed by position and name.
        recorder = {"name": "support.recorder.Recorder", "args": {"stop_at": stop_at}}
        return json.dumps(
            {"strict": True, "custom_callbacks": [recorder, bema_entry(**RESUME_ARGS)]}
        )

    common = ["--max-steps", "20", "--save-steps", "10", "--eval-steps", "5"]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    run_script(
        "--output-dir", str(resumed), "--config", config(10),
        "--result", str(tmp_path / "first.pt"), *common, cwd=tmp_path,
    )  # fmt: skip
    first = torch.load(tmp_path / "first.pt", weights_only=True)
    assert first["global_step"] == 10
    saved = saved_state(resumed / "checkpoint-10")["bema"]
    assert (saved["holds"], saved["last_update"], saved["snapshot_taken"]) == (
        True,
        8,
        True,
    )

    run_script(
        "--output-dir", str(resumed), "--config", config(None),
        "--result", str(tmp_path / "second.pt"), "--resume", *common, cwd=tmp_path,
    )  # fmt: skip
    run_script(
        "--output-dir", str(straight), "--config", config(None),
        "--result", str(tmp_path / "full.pt"), *common, cwd=tmp_path,
    )  # fmt: skip
    second = torch.load(tmp_path / "second.pt", weights_only=True)
    full = torch.load(tmp_path / "full.pt", weights_only=True)

    assert (second["global_step"], full["global_step"]) == (20, 20)
    assert max_abs_diff(second["live"], full["live"]) == 0
    for key in ("theta0", "ema", "bema"):
        assert all(
            torch.equal(a, b) for a, b in zip(second["state"][key], full["state"][key], strict=True)
        )
    assert second["state"]["last_update"] == full["state"]["last_update"] == 20
    got, expected = load_file(resumed / WEIGHTS), load_file(straight / WEIGHTS)
    assert max_abs_diff(got, expected) == 0
    assert max_abs_diff(got, {k: v for k, v in full["live"].items() if k in got}) > 1e-4


# -- DDP ---------------------------------------------------------------------------------------

DDP_ARGS = {"update_after": 2, "evaluate_with": "bema"}  # snapshot at 2, updates at 5, 8, 11
DDP_STEPS = 12


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One torchrun launch of 2 gloo ranks: spies around bema record each rank's weights."""
    out = tmp_path_factory.mktemp("bema-ddp")
    config = spied_config(out, bema_entry(**DDP_ARGS))
    run_script(
        "--output-dir", str(out / "run"), "--config", json.dumps(config),
        "--result", str(out / "result-{rank}.pt"), "--max-steps", str(DDP_STEPS),
        "--save-steps", "6", "--eval-steps", "6",
        cwd=out, nproc=2, timeout=240,
    )  # fmt: skip

    def load(name: str) -> list[Any]:
        return [torch.load(out / f"{name}-{rank}.pt", weights_only=True) for rank in (0, 1)]

    return {"out": out, "result": load("result"), "before": load("before"), "after": load("after")}


@pytest.mark.ddp
def test_ddp_rank_zero_holds_the_buffers_and_rank_one_none(ddp: dict[str, Any]) -> None:
    zero, one = ddp["result"]
    assert [(r["rank"], r["world_size"], r["global_step"]) for r in ddp["result"]] == [
        (0, 2, DDP_STEPS), (1, 2, DDP_STEPS),
    ]  # fmt: skip
    assert zero["holds_buffers"] is True
    assert one["holds_buffers"] is False
    assert zero["names"] == one["names"]
    assert zero["names"]
    assert zero["state"]["holds"] is True
    assert len(zero["state"]["bema"]) == len(zero["names"])
    # No buffers on rank 1, but the schedule: it knows when there is something to swap in.
    assert (one["state"]["holds"], one["state"]["last_update"]) == (False, 11)
    assert not {"names", "theta0", "ema", "bema"} & one["state"].keys()
    # Each rank's checkpointed state is what it held.
    for rank, holds in ((0, True), (1, False)):
        assert saved_state(ddp["out"] / "run" / "checkpoint-6", rank)["bema"]["holds"] is holds
    assert not list((ddp["out"] / "run").rglob("*.tmp"))  # never a half-written state file


@pytest.mark.ddp
def test_ddp_saved_weights_equal_the_reference_from_rank_zeros_trajectory(
    ddp: dict[str, Any],
) -> None:
    trajectory = ddp["before"][0]["steps"]
    assert sorted(trajectory) == list(range(DDP_STEPS + 1))
    # DDP replicates the parameters: rank 1 went through the very same weights.
    for step, weights in ddp["before"][1]["steps"].items():
        assert max_abs_diff(weights, trajectory[step]) == 0, step
    saved = load_file(ddp["out"] / "run" / WEIGHTS)
    reference = reference_float32(trajectory, DDP_STEPS, update_freq=FREQ, **DDP_ARGS)
    assert max_abs_diff({k: saved[k] for k in reference}, reference) == 0
    exact = reference_float64(trajectory, DDP_STEPS, update_freq=FREQ, **DDP_ARGS)
    assert max_abs_diff({k: saved[k].double() for k in exact}, exact) < 1e-5


@pytest.mark.ddp
def test_ddp_evaluation_gives_every_rank_the_bema_weights_then_its_own_back(
    ddp: dict[str, Any],
) -> None:
    """Rank 1 holds no buffers: rank 0 broadcasts the BEMA weights in and the live ones back."""
    trajectory = ddp["before"][0]["steps"]
    for rank in (0, 1):
        before, after = ddp["before"][rank], ddp["after"][rank]
        assert [s for s, _ in before["eval_begin"]] == [6, 12]
        for i, (step, live) in enumerate(before["eval_begin"]):
            used = after["eval_begin"][i][1]
            reference = reference_float32(trajectory, step, update_freq=FREQ, **DDP_ARGS)
            assert max_abs_diff(used, reference) == 0, (rank, step)
            assert max_abs_diff(after["eval_end"][i][1], live) == 0, (rank, step)
    # Both ranks evaluated the same weights, so they report the same loss.
    assert [m["eval_loss"] for *_, m in ddp["before"][0]["eval_end"]] == [
        m["eval_loss"] for *_, m in ddp["before"][1]["eval_end"]
    ]
