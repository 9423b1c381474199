"""``bema`` under the HF Trainer with FSDP2 (``fsdp_config={"version": 2}``), 2 CUDA GPUs.

Skipped without them: the HF Trainer's ``fsdp`` with ``use_cpu=True`` silently falls back to
DDP, so FSDP2 through HF cannot run on a CPU. The same callback is proved on FSDP2 on CPUs
in a plain loop (``tests/cross/test_cross_bema_fsdp2.py``) and under Lightning
(``tests/lightning/test_lightning_fsdp2.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from support.bema_reference import max_abs_diff, reference_float32
from support.fsdp2_probes import probed_config
from support.hf_bema_train import no_dropout_gpt2

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(
        torch.cuda.device_count() < 2,
        reason="needs 2 CUDA GPUs: the HF Trainer runs FSDP2 only on GPUs (with use_cpu=True "
        "it falls back to DDP), and no GPU is present",
    ),
]

BEMA = {"update_freq": 3, "update_after": 2, "evaluate_with": "bema"}
STEPS = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.hf_models import run_script

    out = tmp_path_factory.mktemp("hf-fsdp2")
    config = probed_config(out, {"name": "bema", "args": BEMA})
    script = Path(__file__).resolve().parents[1] / "support" / "hf_fsdp2_train.py"
    run_script(
        "--output-dir", str(out / "run"), "--config", json.dumps(config),
        "--max-steps", str(STEPS), cwd=out, nproc=2, timeout=600, script=script,
    )  # fmt: skip
    return out


def test_the_saved_bema_weights_are_the_formula_on_the_gathered_live_weights(run: Path) -> None:
    from transformers import GPT2LMHeadModel

    trajectory = torch.load(run / "before.pt", weights_only=False)["steps"]
    expected = reference_float32(trajectory, STEPS, **BEMA)
    model = GPT2LMHeadModel.from_pretrained(run / "run" / "bema")
    weights = dict(model.named_parameters())
    assert max_abs_diff({k: weights[k] for k in expected}, expected) == 0


def test_evaluation_with_bema_gives_the_saved_models_metrics(run: Path) -> None:
    from support.hf_models import make_trainer

    results = [torch.load(run / f"result-{r}.pt", weights_only=False) for r in (0, 1)]
    model: Any = type(no_dropout_gpt2()).from_pretrained(run / "run" / "bema")  # no dropout
    metrics = make_trainer(run / "check", model=model, max_steps=1).evaluate()
    assert results[0]["metrics"]["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-6)


def test_each_rank_keeps_its_shard_only(run: Path) -> None:
    results = [torch.load(run / f"result-{r}.pt", weights_only=False) for r in (0, 1)]
    share = 3 * results[0]["trainable_bytes"] / 2
    for result in results:
        assert 0.9 * share <= result["resident"] <= 1.1 * share
