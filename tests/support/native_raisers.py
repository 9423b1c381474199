"""Native callbacks that raise, as the LLaMA-Factory reference document teaches users to write them.

``HFRaiser`` is a ``transformers.TrainerCallback``; ``LightningRaiser`` a Lightning
``Callback``. Each counts its calls before raising, so a test can tell how often the
trainer called it. They import their framework when used, so one file serves both suites.
"""

from __future__ import annotations

from typing import Any


def _hf_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


def _lightning_base() -> type:
    from lightning.pytorch import Callback

    return Callback


class _Counting:
    def __init__(self, fail_in: str = "step", message: str = "native callback fails") -> None:
        self.fail_in = fail_in
        self.message = message
        self.calls: dict[str, int] = {}

    def _hit(self, event: str) -> None:
        self.calls[event] = self.calls.get(event, 0) + 1
        if event == self.fail_in:
            raise RuntimeError(f"{self.message} in {event}")


def __getattr__(name: str) -> Any:
    # Built on first use: importing this module imports no framework.
    if name == "HFRaiser":
        base = _hf_base()

        class HFRaiser(_Counting, base):  # type: ignore[misc, valid-type]
            """A TrainerCallback that raises in ``on_step_end`` (or ``fail_in``)."""

            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self._hit("train_begin")

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self._hit("step")

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self._hit("train_end")

        HFRaiser.__module__ = __name__
        globals()[name] = HFRaiser
        return HFRaiser
    if name == "LightningRaiser":
        base = _lightning_base()

        class LightningRaiser(_Counting, base):  # type: ignore[misc, valid-type]
            """A Lightning Callback that raises in ``on_train_batch_end`` (or ``fail_in``)."""

            def on_train_start(self, trainer: Any, pl_module: Any) -> None:
                self._hit("train_begin")

            def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
                self._hit("step")

            def on_train_end(self, trainer: Any, pl_module: Any) -> None:
                self._hit("train_end")

        LightningRaiser.__module__ = __name__
        globals()[name] = LightningRaiser
        return LightningRaiser
    raise AttributeError(name)
