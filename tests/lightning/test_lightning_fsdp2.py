"""``bema`` under Lightning's ``ModelParallelStrategy`` (FSDP2), 2 CPU processes (gloo).

``support/lightning_fsdp2_script.py`` shards ``support.fsdp2_bema_script.Net`` (uneven
shards, a frozen layer, a buffer) in ``configure_model`` over the data-parallel mesh of
``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)``. A probe before
``bema`` gathers the full live weights after every optimizer step; the saved file must be
BEMA recomputed from them (``support.bema_reference``, TRL's operation order) bit for bit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from support.bema_reference import max_abs_diff, reference_float32
from support.fsdp2_probes import probed_config
from support.lightning_models import LIGHTNING_NOISE, subprocess_env
from support.processes import run_child

safetensors_torch = pytest.importorskip("safetensors.torch")

pytestmark = [pytest.mark.ddp, *(pytest.mark.filterwarnings(f) for f in LIGHTNING_NOISE)]

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "lightning_fsdp2_script.py"
BEMA = {"update_freq": 3, "update_after": 2, "evaluate_with": "bema"}
STEPS = 12  # two epochs of 6 optimizer steps; validation at the end of each
TIMEOUT = 300  # a hang guard, not a speed check


def command(out: Path, *args: str) -> list[str]:
    config = json.dumps(probed_config(out, {"name": "bema", "args": BEMA}))
    return [sys.executable, str(SCRIPT), "--root", str(out / "run"), "--config", config,
            "--out", str(out / "result"), "--max-steps", str(STEPS), "--ckpt-every", "6",
            *args]  # fmt: skip


def fit(out: Path, *args: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    run_child(command(out, *args), cwd=out, env=subprocess_env(), timeout=TIMEOUT)


def fit_killed(out: Path, at: int) -> None:
    """Fit until every rank SIGKILLs itself after step ``at``."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        command(out, "--kill-at", str(at)), cwd=out, env=subprocess_env(), capture_output=True,
        text=True, timeout=TIMEOUT, start_new_session=True,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def saved(out: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = safetensors_torch.load_file(
        out / "run" / "bema" / "model.safetensors"
    )
    return weights


def probe(out: Path, name: str) -> dict[str, Any]:
    record: dict[str, Any] = torch.load(out / name, weights_only=False)
    return record


def sharded_state(tree: Any) -> dict[str, Any] | None:
    """The ``bema`` state in a checkpoint's callback states, wherever the adapter keeps it."""
    if isinstance(tree, dict):
        if tree.get("sharded") is True:
            return tree
        for value in tree.values():
            found = sharded_state(value)
            if found is not None:
                return found
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """straight: 12 steps, checkpoints at 6 and 12; killed: SIGKILLed after step 8, then
    resumed from the checkpoint of step 6 in fresh processes."""
    root = tmp_path_factory.mktemp("lightning-fsdp2")
    straight, killed = root / "straight", root / "killed"
    fit(straight)
    fit_killed(killed, 8)
    fit(killed, "--ckpt-path", str(killed / "run" / "checkpoints" / "step6.ckpt"))
    return {"straight": straight, "resumed": killed}


def test_the_saved_bema_weights_are_the_formula_on_the_gathered_live_weights(
    runs: dict[str, Path],
) -> None:
    out = runs["straight"]
    trajectory = probe(out, "before.pt")["steps"]
    assert sorted(trajectory) == list(range(STEPS + 1))
    assert type(next(iter(trajectory[0].values()))) is torch.Tensor  # gathered, not shards
    expected = reference_float32(trajectory, STEPS, **BEMA)
    weights = saved(out)
    assert sorted(expected) == ["net.hidden.bias", "net.hidden.weight", "net.norm.bias",
                                "net.norm.weight", "net.out.bias", "net.out.weight"]  # fmt: skip
    assert max_abs_diff({k: weights[k] for k in expected}, expected) == 0


def test_the_saved_file_is_the_full_model_with_frozen_weights_and_buffers_untouched(
    runs: dict[str, Path],
) -> None:
    from support.fsdp2_bema_script import Net

    weights = saved(runs["straight"])
    plain = {f"net.{k}": v for k, v in Net().state_dict().items()}
    assert sorted(weights) == sorted(plain)
    for name in ("net.frozen.weight", "net.frozen.bias", "net.shift"):
        assert torch.equal(weights[name], plain[name]), name


def test_validation_runs_on_the_bema_weights_and_matches_the_saved_model(
    runs: dict[str, Path],
) -> None:
    """Validation at step 6 and 12 ran on the BEMA weights (the live ones came back after);
    the last val_loss is that of a plain model loaded with the saved file."""
    from support.fsdp2_bema_script import Net
    from support.lightning_fsdp2_script import validation_set

    out = runs["straight"]
    trajectory = probe(out, "before.pt")["steps"]
    after = probe(out, "after.pt")
    assert [step for step, _ in after["eval_begin"]] == [6, 12]
    for step, weights in after["eval_begin"]:
        assert max_abs_diff(weights, reference_float32(trajectory, step, **BEMA)) == 0, step
    for step, weights, _ in after["eval_end"]:
        assert max_abs_diff(weights, trajectory[step]) == 0, step
    model = Net()
    model.load_state_dict({k.removeprefix("net."): v for k, v in saved(out).items()})
    x, y = validation_set().tensors
    with torch.no_grad():
        # What each rank's one batch gives (the sampler deals samples alternately), averaged
        # as Lightning's sync_dist does: a sum across ranks, divided by 2.
        losses = [torch.nn.functional.mse_loss(model(x[r::2]), y[r::2]) for r in (0, 1)]
    expected = float((losses[0] + losses[1]) / 2)
    assert after["eval_end"][-1][2]["val_loss"] == expected


def test_each_rank_keeps_its_shard_only(runs: dict[str, Path]) -> None:
    results = [torch.load(runs["straight"] / f"result.rank{r}.pt", weights_only=True)
               for r in (0, 1)]  # fmt: skip
    share = 3 * results[0]["trainable_bytes"] / 2
    for result in results:
        assert result["world_size"] == 2
        assert 0.95 * share <= result["resident"] <= 1.05 * share, (result["resident"], share)
    assert sum(r["resident"] for r in results) == 3 * results[0]["trainable_bytes"]


def test_the_checkpoint_names_every_ranks_shard(runs: dict[str, Path]) -> None:
    """Lightning stores rank 0's callback state; it names the folder of both ranks' shards."""
    meta = torch.load(runs["straight"] / "run" / "checkpoints" / "step6.ckpt" / "meta.pt",
                      weights_only=False)  # fmt: skip
    state = sharded_state(meta.get("callbacks"))
    assert state is not None
    assert (state["world_size"], state["step"], state["last_update"]) == (2, 6, 5)
    files = sorted(p.name for p in Path(state["shards"]).iterdir())
    assert files == ["rank0-of-2.pt", "rank1-of-2.pt"]


def test_sigkill_and_resume_in_fresh_processes_gives_the_same_bits(runs: dict[str, Path]) -> None:
    straight, resumed = runs["straight"], runs["resumed"]
    assert sorted(probe(resumed, "before.pt")["steps"]) == list(range(6, STEPS + 1))
    assert max_abs_diff(saved(resumed), saved(straight)) == 0
    ends = [probe(out, "after.pt")["eval_end"] for out in (straight, resumed)]
    assert [(s, m) for s, _, m in ends[1]] == [(s, m) for s, _, m in ends[0] if s > 6]


def test_the_other_built_ins_behave_as_under_ddp(tmp_path: Path) -> None:
    """log reports from rank 0 only; early_stopping's stop (val_loss, which falls, watched in
    "max" mode) holds on both ranks: the fit ends at the second validation, step 12 of 30."""
    config = {
        "strict": True,
        "custom_callbacks": [
            {"name": "log", "args": {"jsonl": "events.jsonl"}},
            {"name": "early_stopping",
             "args": {"metric": "val_loss", "mode": "max", "early_stopping_patience": 1}},
            {"name": "bema", "args": BEMA},
        ],
    }  # fmt: skip
    run_child(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path / "run"), "--config",
         json.dumps(config), "--out", str(tmp_path / "result"), "--max-steps", "30"],
        cwd=tmp_path, env=subprocess_env(), timeout=TIMEOUT,
    )  # fmt: skip
    results = [torch.load(tmp_path / f"result.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["global_step"] for r in results] == [12, 12]
    lines = (tmp_path / "run" / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events if e["event"] != "log"] == [
        "train_begin", "evaluate", "evaluate", "train_end",
    ]  # fmt: skip
    assert [e["step"] for e in events if e["event"] == "evaluate"] == [6, 12]
