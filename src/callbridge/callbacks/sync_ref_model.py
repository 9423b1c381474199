"""``sync_ref_model``: TR-DPO's reference-model update, as TRL's ``SyncRefModelCallback``."""

from __future__ import annotations

import logging
from typing import Any

import attrs

from .._errors import CallbridgeError
from .._protocol import Callback, Run

logger = logging.getLogger("callbridge")


class RefModelMismatchError(CallbridgeError, ValueError):
    """The reference model's parameters do not pair up with the policy's."""


def _positive(instance: Any, attribute: Any, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1 (got {value})")


def _unit(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1 (got {value})")


@attrs.define
class SyncRefModelCallback(Callback):
    """Every ``sync_steps`` optimizer steps, move the reference model towards the policy.

    ``ref <- alpha * policy + (1 - alpha) * ref``, computed in place in the same order
    as TRL (``ref.mul_(1 - alpha).add_(policy, alpha=alpha)``), so the weights match
    TRL's bit for bit. The defaults are TRL's ``DPOConfig`` defaults
    (``ref_model_sync_steps=512``, ``ref_model_mixup_alpha=0.6``).

    The reference model is injected by parameter name: ``callbridge_hf.attach``
    passes the trainer's ``ref_model`` (TRL's DPO and KTO trainers have one); elsewhere
    pass ``inject={"ref_model": ...}``. Without one, the run model's ``ref_model``
    attribute is used (a LightningModule holding its reference model); its parameters
    are then left out of the policy's. Parameters pair up in order, as in TRL.
    DeepSpeed ZeRO-3 (sharded parameters) is not supported.

    Args:
        sync_steps: optimizer steps between two updates (TR-DPO's tau).
        alpha: weight of the policy in the mix (TR-DPO's alpha).
        ref_model: the reference model (injected).
    """

    sync_steps: int = attrs.field(default=512, validator=_positive)
    alpha: float = attrs.field(default=0.6, validator=_unit)
    ref_model: Any = attrs.field(default=None, repr=False)

    syncs: int = attrs.field(default=0, init=False)
    _warned: bool = attrs.field(default=False, init=False, repr=False)

    def should_sync(self, step: int) -> bool:
        """Policy: whether to update after optimizer step ``step`` (TRL: ``step % tau == 0``)."""
        return step > 0 and step % self.sync_steps == 0

    def pairs(self, run: Run) -> list[tuple[Any, Any]]:
        """``(reference, policy)`` parameter pairs, in order."""
        model = run.model
        ref = self.ref_model if self.ref_model is not None else getattr(model, "ref_model", None)
        if ref is None or model is None:
            return []
        owned = {id(p) for p in ref.parameters()}
        policy = [p for p in model.parameters() if id(p) not in owned]
        target = list(ref.parameters())
        if len(policy) != len(target) or any(
            t.shape != p.shape for t, p in zip(target, policy, strict=True)
        ):
            raise RefModelMismatchError(
                f"sync_ref_model: the reference model's {len(target)} parameters do not pair "
                f"up with the policy's {len(policy)} (same architecture expected)"
            )
        return list(zip(target, policy, strict=True))

    def on_step_end(self, run: Run) -> None:
        if not self.should_sync(run.state.global_step):
            return
        pairs = self.pairs(run)
        if not pairs:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "callbridge sync_ref_model: no reference model (none injected, and the "
                    "model has no ref_model attribute); nothing is synchronised. Attach with "
                    "callbridge_hf.attach or pass inject={'ref_model': ...}"
                )
            return
        import torch

        alpha = self.alpha
        with torch.no_grad():
            for target, policy in pairs:
                # TRL's _sync_target_model, op for op.
                target.data.mul_(1.0 - alpha).add_(policy.data, alpha=alpha)
        self.syncs += 1

    def state_dict(self) -> dict[str, Any]:
        return {"syncs": self.syncs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.syncs = int(state.get("syncs", 0))
