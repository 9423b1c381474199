"""Neutral probes for sharded (FSDP2) runs: the full weights, gathered from every rank.

No framework is imported here: the probes read ``run.model`` only, so one probe serves
the plain FSDP2 loop (``support/fsdp2_bema_script.py``) and Lightning's
``ModelParallelStrategy`` (``support/lightning_fsdp2_script.py``). Gathering a ``DTensor``
is a collective: every rank calls the hooks, rank 0 keeps what they gathered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from callbridge import Run
from support.bema_spies import WeightSpy


def gathered(model: Any, *, trainable_only: bool = True) -> dict[str, Any]:
    """Every (trainable) parameter of ``model`` in full, bit-exact CPU copies (a collective).

    Args:
        model: a module whose parameters may be ``DTensor`` shards.
        trainable_only: leave out the frozen parameters.
    """
    out = {}
    for name, param in model.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        tensor = param.detach()
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        out[name] = tensor.to("cpu", copy=True)
    return out


@attrs.define
class FullWeightProbe(WeightSpy):
    """Gathers the full trainable weights at train begin, after every optimizer step and at
    every evaluation's begin and end; rank 0 saves them at train end (``torch.save``).

    Placed before ``bema``, it sees the live weights of each step; after it, what an
    evaluation ran on. Every rank must call its hooks: gathering is a collective.

    Args:
        path: the file rank 0 writes (``{rank}`` is replaced by the rank).
        trajectory: record the weights at train begin and after every step.
    """

    trajectory: bool = True

    def weights(self, model: Any) -> dict[str, Any]:
        return gathered(model)

    def saves(self, run: Run) -> bool:
        # Every rank gathered the same full weights: rank 0 writes them.
        return run.state.is_main_process


def probed_config(out: Path, bema: dict[str, Any]) -> dict[str, Any]:
    """A strict config: a probe of the live weights (``before.pt``), ``bema``, and a probe of
    what evaluation ran on (``after.pt``)."""
    return {
        "strict": True,
        "custom_callbacks": [
            {
                "name": "support.fsdp2_probes.FullWeightProbe",
                "args": {"path": str(out / "before.pt")},
            },
            bema,
            {
                "name": "support.fsdp2_probes.FullWeightProbe",
                "args": {"path": str(out / "after.pt"), "trajectory": False},
            },
        ],
    }
