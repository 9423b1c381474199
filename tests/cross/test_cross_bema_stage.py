"""``bema``'s ``stage``: the asynchronous update gives the synchronous update's bits.

Runs play through :class:`callbridge.testing.Driver`, the framework-free loop: a
``FakeOptimizer`` ahead of ``bema`` in the list hands it the model at train begin and
moves the weights at every step begin (seeded noise, as in ``test_cross_bema``), and a
``Reader`` after it records what evaluation and checkpoints see. On the CPU,
``stage="async"`` copies the weights at the update step and runs the arithmetic in a
worker thread, so everything but the CUDA copy is exercised here; the CUDA test at the
end runs where a GPU is present.
"""

from __future__ import annotations

import copy
import logging
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

import callbridge
from callbridge.callbacks.bema import BEMACallback
from callbridge.testing import Driver
from support.bema_reference import max_abs_diff, reference_float32
from support.bema_spies import trainable

STAGES = ("sync", "async")


class Net(torch.nn.Module):
    """Odd sizes (no chunk size divides them) and a frozen layer."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(7, 5)
        self.hidden = torch.nn.Linear(5, 13)
        self.frozen = torch.nn.Linear(13, 11)
        self.frozen.requires_grad_(False)
        self.out = torch.nn.Linear(11, 3)


@attrs.define
class FakeOptimizer(callbridge.Callback):
    """Gives bema the model (the Driver has none) and moves the weights before every step."""

    model: Any
    #: step -> the trainable weights after that step (and at train begin).
    trajectory: dict[int, dict[str, torch.Tensor]] = attrs.field(factory=dict)
    # Not reset at train begin: a second run of the same optimizer continues the noise.
    _generator: Any = attrs.field(factory=lambda: torch.Generator().manual_seed(0))

    def on_train_begin(self, run: callbridge.Run) -> None:
        run.model = self.model
        self.trajectory[run.state.global_step] = trainable(self.model)

    def on_step_begin(self, run: callbridge.Run) -> None:
        with torch.no_grad():
            for param in self.model.parameters():
                if param.requires_grad:
                    param.add_(0.1 * torch.randn(param.shape, generator=self._generator))
        # The weights of the step about to end (``global_step`` counts it at step end).
        self.trajectory[run.state.global_step + 1] = trainable(self.model)


@attrs.define
class Reader(callbridge.Callback):
    """After bema: the weights evaluation runs with, and bema's checkpoint state."""

    bema: BEMACallback
    evaluated: dict[int, dict[str, torch.Tensor]] = attrs.field(factory=dict)
    saved: dict[int, dict[str, Any]] = attrs.field(factory=dict)
    #: steps at which an update was still in flight when evaluation or a checkpoint came.
    in_flight: list[int] = attrs.field(factory=list)

    def on_step_end(self, run: callbridge.Run) -> None:
        if self.bema._job is not None:
            self.in_flight.append(run.state.global_step)

    def on_evaluate_begin(self, run: callbridge.Run) -> None:
        self.evaluated[run.state.global_step] = trainable(run.model)

    def on_save(self, run: callbridge.Run) -> None:
        self.saved[run.state.global_step] = self.bema.state_dict()


def play(bema: BEMACallback, steps: int, **driver: Any) -> tuple[FakeOptimizer, Reader]:
    optimizer, reader = FakeOptimizer(Net()), Reader(bema)
    Driver([optimizer, bema, reader], max_steps=steps, on_error="raise", **driver).run()
    return optimizer, reader


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            assert all(torch.equal(x, y) for x, y in zip(value, b[key], strict=True)), key
        else:
            assert value == b[key], key


# -- the weights -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [7, BEMACallback().chunk_elements])
@pytest.mark.parametrize("args", [{"update_freq": 1}, {"update_freq": 3, "update_after": 4}])
def test_async_bema_weights_are_bit_identical_to_sync_over_many_updates(
    args: dict[str, Any], chunk: int
) -> None:
    runs = {}
    for stage in STAGES:
        bema = BEMACallback(stage=stage, chunk_elements=chunk, **args)
        optimizer, _ = play(bema, 60)
        runs[stage] = (bema.bema_state_dict(), bema.state_dict(), optimizer.trajectory)
    (sync, sync_state, trajectory), (got, got_state, _) = runs["sync"], runs["async"]
    assert sync.keys() == got.keys()
    assert all(torch.equal(sync[name], got[name]) for name in sync)
    assert_same_state(sync_state, got_state)
    assert max_abs_diff(got, reference_float32(trajectory, 60, **args)) == 0
    assert max_abs_diff(got, trajectory[60]) > 1e-3  # not a trivial pass


def test_auto_is_sync_for_cpu_parameters_and_async_is_not() -> None:
    auto, forced = BEMACallback(update_freq=1), BEMACallback(update_freq=1, stage="async")
    play(auto, 1)
    play(forced, 1)
    assert (auto.stage, auto._async, forced._async) == ("auto", False, True)


def test_evaluation_and_checkpoints_during_a_pending_update_see_it_completed() -> None:
    """An evaluation and a checkpoint after every step: each update is still pending then."""
    seen = {}
    for stage in STAGES:
        bema = BEMACallback(update_freq=2, update_after=1, evaluate_with="bema", stage=stage)
        optimizer, reader = play(bema, 11, eval_steps=1, save_steps=1)
        seen[stage] = reader
    sync, got = seen["sync"], seen["async"]
    updates = [3, 5, 7, 9, 11]  # snapshot at 1, then every 2
    assert got.in_flight == updates  # the joins below are not vacuous
    assert sync.in_flight == []
    assert got.evaluated.keys() == sync.evaluated.keys() == set(range(1, 12))
    for step in range(1, 12):
        assert max_abs_diff(got.evaluated[step], sync.evaluated[step]) == 0, step
        assert_same_state(got.saved[step], sync.saved[step])
    reference = reference_float32(optimizer.trajectory, 10, update_freq=2, update_after=1)
    assert max_abs_diff(got.evaluated[10], reference) == 0


def test_save_at_train_end_writes_the_completed_update(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    saved = {}
    for stage in STAGES:
        play(BEMACallback(update_freq=5, stage=stage), 10, output_dir=tmp_path / stage)
        saved[stage] = load_file(tmp_path / stage / "bema" / "model.safetensors")
    assert max_abs_diff(saved["async"], saved["sync"]) == 0
    assert saved["async"].keys() == saved["sync"].keys()


def test_resume_from_an_async_checkpoint_continues_bit_identically() -> None:
    """state_dict taken with an update in flight, loaded by a new callback: as a straight run."""
    straight = BEMACallback(update_freq=3, stage="async")
    play(straight, 12)

    first = BEMACallback(update_freq=3, stage="async")
    optimizer = FakeOptimizer(Net())
    Driver([optimizer, first], max_steps=6, on_error="raise").run()
    second = BEMACallback(update_freq=3, stage="async")
    second.load_state_dict(first.state_dict())
    # The same optimizer: the same model, its noise continuing from step 6.
    Driver([optimizer, second], max_steps=12, start_step=6, on_error="raise").run()
    assert max_abs_diff(second.bema_state_dict(), straight.bema_state_dict()) == 0


# -- joins that wait -------------------------------------------------------------------------


@attrs.define
class GatedBEMA(BEMACallback):
    """bema whose background arithmetic starts only once ``gate`` opens (or fails, if told)."""

    gate: threading.Event = attrs.field(factory=threading.Event)
    fail: bool = False

    def _update_staged(self, beta: float, alpha: float, events: list[Any]) -> None:
        assert self.gate.wait(timeout=60), "the test never opened the gate"
        if self.fail:
            raise RuntimeError("the background update failed")
        super()._update_staged(beta, alpha, events)


def test_state_dict_waits_for_the_update_in_flight() -> None:
    """A closed gate holds the arithmetic back; state_dict blocks until it has run."""
    model, reference = Net(), BEMACallback(update_freq=1)
    gated = GatedBEMA(update_freq=1, stage="async")
    twin = Net()
    for callback, net in ((gated, model), (reference, twin)):
        callback.on_train_begin(callbridge.Run("test", model=net))
    with torch.no_grad():
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            a.add_(1.0)
            b.add_(1.0)
    gated.update(1)
    reference.update(1)
    assert gated._job is not None
    assert gated._job._thread.is_alive()
    # Not computed yet: the BEMA buffers hold the staged weights.
    assert max_abs_diff(dict(zip(gated.names, gated._bema, strict=True)), trainable(model)) == 0
    opener = threading.Timer(0.05, gated.gate.set)
    opener.start()
    state = gated.state_dict()  # joins: returns only after the gate opened and the update ran
    state = {k: [t.clone() for t in v] if k in ("theta0", "ema", "bema") else v
             for k, v in state.items()}  # fmt: skip
    opener.join()
    assert_same_state(state, reference.state_dict())
    assert gated._job is None


def test_a_failure_in_the_worker_surfaces_at_the_next_join_once() -> None:
    bema = GatedBEMA(update_freq=2, stage="async", fail=True)
    bema.gate.set()
    with pytest.raises(RuntimeError, match="the background update failed") as info:
        play(bema, 10)
    # Raised at step 4's update, where step 2's was joined: the training thread sees it.
    assert any(frame.name == "join" for frame in info.traceback)
    assert bema.last_update == 2
    assert bema._job is None
    bema.state_dict()  # reported once, not again at every later join


def test_a_failure_in_the_worker_is_logged_when_training_fails_anyway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """on_exception joins without raising: the training's own error is the one that propagates."""
    bema = GatedBEMA(update_freq=2, stage="async", fail=True)
    bema.gate.set()
    with (
        caplog.at_level(logging.ERROR, logger="callbridge"),
        pytest.raises(RuntimeError, match="training failed at step 3"),
    ):
        play(bema, 10, raise_at_step=3)
    assert "bema: the background update failed too" in caplog.text
    assert bema._job is None


# -- arguments -------------------------------------------------------------------------------


def test_stage_is_validated() -> None:
    with pytest.raises(ValueError, match="'stage' must be in"):
        BEMACallback(stage="later")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs device='cpu'") as info:
        BEMACallback(stage="async", device="cuda")
    assert str(info.value) == (
        "stage='async' runs the update on the CPU, so it needs device='cpu' (got "
        "device='cuda'); with the buffers on the GPU the update is queued on the GPU's "
        "stream already: use stage='auto' or stage='sync'"
    )
    assert BEMACallback(stage="sync", device="cuda").stage == "sync"


# -- CUDA ------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: the side-stream copy into pinned memory is CUDA-only",
)
@pytest.mark.parametrize("stage", ["auto", "async"])
def test_cuda_model_with_cpu_buffers_async_equals_sync_bit_for_bit(stage: str) -> None:
    """The training stream writes the weights right after each update: the copy saw them first.

    Large weights, so that the copy is still running when the next write is queued; a
    missing wait on the copy would average the overwritten weights.
    """
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.Linear(2048, 1023))
    base.register_parameter("t", torch.nn.Parameter(torch.randn(700, 300).t()))  # no flat view
    models = {name: copy.deepcopy(base).cuda() for name in ("sync", "async")}
    callbacks = {
        "sync": BEMACallback(update_freq=1, stage="sync"),
        "async": BEMACallback(update_freq=1, stage=stage),  # type: ignore[arg-type]
    }
    for name, callback in callbacks.items():
        callback.on_train_begin(callbridge.Run("test", model=models[name]))
    assert callbacks["async"]._async
    assert all(b.is_pinned() for b in callbacks["async"]._bema)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for step in range(1, 21):
        noise = [
            torch.randn(p.shape, generator=generator, device="cuda") for p in base.parameters()
        ]
        for name, callback in callbacks.items():
            with torch.no_grad():
                for param, n in zip(models[name].parameters(), noise, strict=True):
                    param.add_(n)
            callback.update(step)
            with torch.no_grad():  # the next "optimizer step", queued behind the copy
                for param in models[name].parameters():
                    param.mul_(1.5)
                for param in models[name].parameters():
                    param.div_(1.5)
    sync, got = callbacks["sync"].bema_state_dict(), callbacks["async"].bema_state_dict()
    assert all(torch.equal(sync[name], got[name]) for name in sync)
    torch.cuda.synchronize()
    for a, b in zip(models["sync"].parameters(), models["async"].parameters(), strict=True):
        assert torch.equal(a, b)
