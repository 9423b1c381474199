"""``bema`` on a model sharded by FSDP2, in a plain training loop of 2 processes (gloo, CPU).

``support/fsdp2_bema_script.py`` shards a small model with ``fully_shard`` over 2 ranks
(uneven shards: odd sizes), trains it with SGD and calls the callbacks' hooks itself. A
probe placed before ``bema`` gathers the full live weights after every step; BEMA is
recomputed from them with ``support.bema_reference`` (TRL's operation order), and the
saved file must equal it bit for bit. Lightning's ``ModelParallelStrategy`` runs the same
callback in ``tests/lightning/test_lightning_fsdp2.py``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from callbridge import CallbridgeError
from support.bema_reference import max_abs_diff, reference_float32
from support.fsdp2_probes import probed_config
from support.lightning_models import subprocess_env
from support.processes import run_child

safetensors_torch = pytest.importorskip("safetensors.torch")

pytestmark = pytest.mark.ddp

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "fsdp2_bema_script.py"
BEMA = {"update_freq": 3, "update_after": 2, "evaluate_with": "bema"}
STEPS = 12
TIMEOUT = 300  # a hang guard, not a speed check


def train(out: Path, *args: str) -> dict[str, Any]:
    """Run the script (its ranks in fresh processes); its result file, if it wrote one."""
    out.mkdir(parents=True, exist_ok=True)
    config = json.dumps(probed_config(out, {"name": "bema", "args": BEMA}))
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--config", config, *args]
    run_child(command, cwd=out, env=subprocess_env(), timeout=TIMEOUT)
    result = out / "result.pt"
    return torch.load(result, weights_only=False) if result.is_file() else {}


def saved(out: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = safetensors_torch.load_file(
        out / "bema" / "model.safetensors"
    )
    return weights


def probe(out: Path, name: str) -> dict[str, Any]:
    record: dict[str, Any] = torch.load(out / name, weights_only=False)
    return record


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """straight: 12 steps, checkpoints at 6 and 12; killed: the same, SIGKILLed after step 8;
    resumed: the killed run resumed from step 6 in fresh processes."""
    root = tmp_path_factory.mktemp("fsdp2-bema")
    straight, killed = root / "straight", root / "killed"
    common = ("--steps", str(STEPS), "--eval-every", "4", "--ckpt-every", "6")
    train(straight, *common)
    train(killed, *common, "--kill-at", "8")
    train(killed, *common, "--resume", str(killed / "ckpt" / "step6"))
    return {"straight": straight, "resumed": killed, "root": root}


def test_the_saved_bema_weights_are_the_formula_on_the_gathered_live_weights(
    runs: dict[str, Path],
) -> None:
    out = runs["straight"]
    trajectory = probe(out, "before.pt")["steps"]
    assert sorted(trajectory) == list(range(STEPS + 1))
    expected = reference_float32(trajectory, STEPS, **BEMA)
    weights = saved(out)
    assert max_abs_diff({k: weights[k] for k in expected}, expected) == 0


def test_the_saved_file_is_the_full_model_with_frozen_weights_and_buffers_live(
    runs: dict[str, Path],
) -> None:
    """Gathered once: every key of the unsharded model, full shapes, the rest untouched."""
    from support.fsdp2_bema_script import Net

    out = runs["straight"]
    weights = saved(out)
    live = torch.load(out / "result.pt", weights_only=False)["live"]
    plain = Net().state_dict()
    assert sorted(weights) == sorted(plain)
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        k: tuple(v.shape) for k, v in plain.items()
    }
    trainable = {"hidden.weight", "hidden.bias", "norm.weight", "norm.bias", "out.weight",
                 "out.bias"}  # fmt: skip
    for name in sorted(set(weights) - trainable):  # the frozen layer, the buffer
        assert torch.equal(weights[name], live[name]), name
    assert torch.equal(weights["frozen.weight"], plain["frozen.weight"])
    assert torch.equal(weights["shift"], plain["shift"])
    assert all(not torch.equal(weights[name], live[name]) for name in trainable)


def test_evaluation_runs_on_the_bema_weights_and_matches_the_saved_model(
    runs: dict[str, Path],
) -> None:
    """Each evaluation after the first update ran on the BEMA weights of its step (the live
    ones came back after);
    the last one's metric is that of a plain model loaded with the saved file."""
    from support.fsdp2_bema_script import Net, eval_loss

    out = runs["straight"]
    trajectory = probe(out, "before.pt")["steps"]
    after = probe(out, "after.pt")
    assert [step for step, _ in after["eval_begin"]] == [4, 8, 12]
    # Step 4: before the first update (5), the live weights; then the BEMA weights.
    assert max_abs_diff(after["eval_begin"][0][1], trajectory[4]) == 0
    for step, weights in after["eval_begin"][1:]:
        assert max_abs_diff(weights, reference_float32(trajectory, step, **BEMA)) == 0, step
    for step, weights, _ in after["eval_end"]:
        assert max_abs_diff(weights, trajectory[step]) == 0, step  # the live weights again
    result = torch.load(out / "result.pt", weights_only=False)
    model = Net()
    model.load_state_dict(saved(out))
    assert result["metrics"][-1] == (STEPS, {"eval_loss": eval_loss(model)})


def test_each_rank_keeps_its_shard_only(runs: dict[str, Path]) -> None:
    """Per rank, theta_0 + EMA + BEMA take about 3/N of the model's trainable bytes."""
    result = torch.load(runs["straight"] / "result.pt", weights_only=False)
    share = 3 * result["trainable_bytes"] / result["world_size"]
    assert result["world_size"] == 2
    for resident in result["resident"]:
        assert 0.95 * share <= resident <= 1.05 * share, (resident, share)
    assert sum(result["resident"]) == 3 * result["trainable_bytes"]  # no element twice


def test_a_checkpoint_holds_every_ranks_shard(runs: dict[str, Path]) -> None:
    folders = sorted((runs["straight"] / "bema-shards").iterdir())
    assert [f.name.split("-")[0] for f in folders] == ["step12", "step6"]
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["rank0-of-2.pt", "rank1-of-2.pt"]
    states = torch.load(runs["straight"] / "ckpt" / "step6" / "callbacks-rank0.pt",
                        weights_only=False)  # fmt: skip
    (state,) = [s for s in states if s and s.get("sharded")]
    assert (state["world_size"], state["step"], state["last_update"]) == (2, 6, 5)
    assert Path(state["shards"]).name.startswith("step6-")


def test_sigkill_and_resume_in_fresh_processes_gives_the_same_bits(runs: dict[str, Path]) -> None:
    straight, resumed = runs["straight"], runs["resumed"]
    assert sorted(probe(resumed, "before.pt")["steps"]) == list(range(6, STEPS + 1))
    assert max_abs_diff(saved(resumed), saved(straight)) == 0
    metrics = [torch.load(out / "result.pt", weights_only=False)["metrics"]
               for out in (straight, resumed)]  # fmt: skip
    assert metrics[1] == [m for m in metrics[0] if m[0] > 6]


def test_a_resume_on_another_number_of_processes_reshards_exactly(runs: dict[str, Path]) -> None:
    """The 2-rank checkpoint of step 6 resumed by 1 process: its averages, whole."""
    out = runs["root"] / "one"
    train(out, "--world", "1", "--steps", "6",
          "--resume", str(runs["straight"] / "ckpt" / "step6"))  # fmt: skip
    trajectory = probe(runs["straight"], "before.pt")["steps"]
    expected = reference_float32(trajectory, 6, **BEMA)
    weights = saved(out)
    assert max_abs_diff({k: weights[k] for k in expected}, expected) == 0


def test_a_missing_shard_file_is_an_error_naming_both_sizes(runs: dict[str, Path]) -> None:
    from callbridge.callbacks.bema import _read_shards

    states = torch.load(runs["straight"] / "ckpt" / "step6" / "callbacks-rank0.pt",
                        weights_only=False)  # fmt: skip
    (state,) = [s for s in states if s and s.get("sharded")]
    copy = runs["root"] / "copied-without-rank1"
    shutil.copytree(state["shards"], copy)
    (copy / "rank1-of-2.pt").unlink()
    params = [torch.zeros(1) for _ in state["names"]]
    with pytest.raises(CallbridgeError) as info:
        _read_shards({**state, "shards": str(copy)}, params)
    assert str(info.value) == (
        f"bema: {copy / 'rank1-of-2.pt'}: missing. The checkpoint's averages were saved as 2 "
        f"shards (one file per rank in {copy}) and this run has 1 process(es); resuming needs "
        "every shard file of that folder: copy the folder with the checkpoint, or resume "
        "without the bema state"
    )
