"""BEMA recomputed from a recorded weight trajectory, straight from the paper's formulas.

Two references, independent of ``callbridge.callbacks.bema``:

* :func:`reference_float32` follows TRL's ``BEMACallback`` operation by operation
  (``ema.mul_(1 - beta).add_(theta, alpha=beta)``, then ``ema + alpha * (theta - theta_0)``),
  whole tensors at a time, so it must agree with the callback bit for bit;
* :func:`reference_float64` evaluates the formulas in double precision, to check the
  maths apart from the order of floating-point operations.

The schedule (TRL's): nothing before ``update_after``; at ``update_after`` (if > 0)
theta_0 and the EMA restart from the weights, with no update; then an update at every
``update_after + k * update_freq`` (k >= 1). Before the first update the BEMA weights
are the weights at train begin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: The callback's defaults, which are TRL's.
DEFAULTS: dict[str, Any] = {
    "update_freq": 400,
    "ema_power": 0.5,
    "bias_power": 0.2,
    "lag": 10,
    "update_after": 0,
    "multiplier": 1.0,
    "min_ema_multiplier": 0.0,
}

Weights = Mapping[str, torch.Tensor]


def beta(step: int, h: Mapping[str, Any]) -> float:
    """beta_t = max((rho + gamma t) ** -kappa, min_ema_multiplier)."""
    value: float = (h["lag"] + h["multiplier"] * step) ** (-h["ema_power"])
    return max(value, h["min_ema_multiplier"])


def alpha(step: int, h: Mapping[str, Any]) -> float:
    """alpha_t = (rho + gamma t) ** -eta."""
    value: float = (h["lag"] + h["multiplier"] * step) ** (-h["bias_power"])
    return value


def schedule(last_step: int, **hparams: Any) -> tuple[int | None, list[int]]:
    """The snapshot step (None when update_after is 0) and the update steps up to ``last_step``."""
    h = {**DEFAULTS, **hparams}
    after, freq = h["update_after"], h["update_freq"]
    snapshot = after if 0 < after <= last_step else None
    updates = [s for s in range(after + freq, last_step + 1, freq)]
    return snapshot, updates


def _play(
    trajectory: Mapping[int, Weights],
    last_step: int,
    dtype: torch.dtype,
    exact: bool,
    **hparams: Any,
) -> dict[str, torch.Tensor]:
    h = {**DEFAULTS, **hparams}
    first = min(trajectory)
    start = {k: v.to(dtype, copy=True) for k, v in trajectory[first].items()}
    theta0 = {k: v.clone() for k, v in start.items()}
    ema = {k: v.clone() for k, v in start.items()}
    bema = {k: v.clone() for k, v in start.items()}
    snapshot, updates = schedule(last_step, **hparams)
    for step in sorted(trajectory):
        if step <= first or step > last_step:
            continue
        weights = {k: v.to(dtype) for k, v in trajectory[step].items()}
        if step == snapshot:
            theta0 = {k: v.clone() for k, v in weights.items()}
            ema = {k: v.clone() for k, v in weights.items()}
        elif step in updates:
            b, a = beta(step, h), alpha(step, h)
            for name, theta in weights.items():
                if exact:
                    ema[name].mul_(1 - b).add_(theta, alpha=b)
                    bema[name] = ema[name] + a * (theta - theta0[name])
                else:
                    ema[name] = (1 - b) * ema[name] + b * theta
                    bema[name] = a * (theta - theta0[name]) + ema[name]
    missing = [s for s in [*updates, *([snapshot] if snapshot else [])] if s not in trajectory]
    assert not missing, f"the trajectory lacks steps {missing}"
    return bema


def reference_float32(
    trajectory: Mapping[int, Weights], last_step: int, **hparams: Any
) -> dict[str, torch.Tensor]:
    """The BEMA weights after ``last_step``, TRL's operations in TRL's order (bit-exact).

    Args:
        trajectory: step -> trainable weights after that step; its smallest step is
            train begin (0 for a fresh run).
        last_step: the last step of the run.
        **hparams: BEMA's arguments (the rest default as in the callback).
    """
    return _play(trajectory, last_step, torch.float32, True, **hparams)


def reference_float64(
    trajectory: Mapping[int, Weights], last_step: int, **hparams: Any
) -> dict[str, torch.Tensor]:
    """The same in double precision, from the formulas as written (not bit-exact)."""
    return _play(trajectory, last_step, torch.float64, False, **hparams)


def max_abs_diff(a: Weights, b: Weights) -> float:
    """The largest absolute difference over tensors of the same names (names must match)."""
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    return max(float((a[k].detach().double() - b[k].detach().double()).abs().max()) for k in a)
