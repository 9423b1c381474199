"""``bema``'s mathematics, on plain torch modules, with the hooks called by hand.

No trainer: a :class:`callbridge.Run` carries the module, and each step adds seeded
noise to the trainable parameters (a stand-in for an optimizer; the averages only
see the weights after each step, not how they got there). The weights are recorded
after every step and BEMA is recomputed from them with ``support.bema_reference``.
The adapter suites (``tests/hf``, ``tests/lightning``) run the same callback under
real trainers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import callbridge
from callbridge.callbacks.bema import BEMACallback, ShardedParametersError
from support.bema_reference import (
    alpha,
    beta,
    max_abs_diff,
    reference_float32,
    reference_float64,
    schedule,
)
from support.bema_spies import trainable

DEFAULT_CHUNK = BEMACallback().chunk()  # with torch's intra-op threads as in this process


class Net(torch.nn.Module):
    """Odd sizes (no chunk size divides them), a frozen layer and a BatchNorm buffer."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(7, 5)
        self.hidden = torch.nn.Linear(5, 13)
        self.norm = torch.nn.BatchNorm1d(13)
        self.frozen = torch.nn.Linear(13, 11)
        self.frozen.requires_grad_(False)
        self.out = torch.nn.Linear(11, 3)


def perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    """One fake optimizer step: seeded noise on every trainable parameter."""
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                local = param.to_local() if hasattr(param, "to_local") else param  # FSDP2
                local.add_(0.1 * torch.randn(param.shape, generator=generator).to(param.dtype))


def drive(
    callback: BEMACallback,
    model: torch.nn.Module,
    steps: int,
    *,
    output_dir: Path | None = None,
    start: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    end: bool = True,
    after_step: Any = None,
) -> tuple[callbridge.Run, dict[int, dict[str, torch.Tensor]]]:
    """Train begin, ``steps`` fake steps with ``on_step_end``, train end; the weight trajectory."""
    state = callbridge.TrainState(
        global_step=start, max_steps=start + steps, is_main_process=rank == 0, rank=rank,
        world_size=world_size,
    )  # fmt: skip
    run = callbridge.Run("test", state, model=model, output_dir=output_dir)
    generator = torch.Generator().manual_seed(seed)
    trajectory = {start: trainable(model)}
    callback.on_train_begin(run)
    for step in range(start + 1, start + steps + 1):
        perturb(model, generator)
        run.state.global_step = step
        callback.on_step_end(run)
        trajectory[step] = trainable(model)
        if after_step is not None:
            after_step(run, step)
    if end:
        callback.on_train_end(run)
    return run, trajectory


def hparams(callback: BEMACallback) -> dict[str, Any]:
    names = ("update_freq", "ema_power", "bias_power", "lag", "update_after", "multiplier",
             "min_ema_multiplier")  # fmt: skip
    return {name: getattr(callback, name) for name in names}


# -- the factors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"lag": 0, "multiplier": 2.5, "ema_power": 0.75, "bias_power": 0.4},
        {"ema_power": 0.0, "bias_power": 0.0},
        {"min_ema_multiplier": 0.2},
    ],
)
def test_beta_and_alpha_are_the_papers_formulas(args: dict[str, Any]) -> None:
    """beta_t = max((rho + gamma t)^-kappa, min); alpha_t = (rho + gamma t)^-eta; exactly."""
    callback = BEMACallback(**args)
    h = hparams(callback)
    for step in (1, 2, 3, 10, 400, 12_345):
        base = h["lag"] + h["multiplier"] * step
        assert callback.ema_beta(step) == max(base ** -h["ema_power"], h["min_ema_multiplier"])
        assert callback.bema_alpha(step) == base ** -h["bias_power"]
        assert (callback.ema_beta(step), callback.bema_alpha(step)) == (
            beta(step, h),
            alpha(step, h),
        )


def test_min_ema_multiplier_bounds_beta_from_below() -> None:
    callback = BEMACallback(min_ema_multiplier=0.2)
    assert callback.ema_beta(1) == 11**-0.5  # 0.30 > 0.2
    assert callback.ema_beta(100) == 0.2  # 110 ** -0.5 = 0.095, bounded
    assert BEMACallback(ema_power=0.0).ema_beta(7) == 1.0  # kappa = 0: the EMA is the weights
    assert BEMACallback(bias_power=0.0).bema_alpha(7) == 1.0  # eta = 0: alpha pinned at 1


def test_factors_match_trl() -> None:
    trl = pytest.importorskip("trl")
    args = {"update_freq": 3, "lag": 4, "multiplier": 1.5, "ema_power": 0.6, "bias_power": 0.3,
            "min_ema_multiplier": 0.05}  # fmt: skip
    ours, theirs = BEMACallback(**args), trl.BEMACallback(**args)
    for step in range(1, 200):
        assert ours.ema_beta(step) == theirs._ema_beta(step)
        assert ours.bema_alpha(step) == theirs._bema_alpha(step)


# -- the schedule ----------------------------------------------------------------------------


@pytest.mark.parametrize(("update_freq", "update_after"), [(1, 0), (3, 0), (3, 2), (4, 5), (2, 9)])
def test_updates_every_update_freq_steps_after_a_snapshot_at_update_after(
    update_freq: int, update_after: int
) -> None:
    """Updates at update_after + k * update_freq (k >= 1); at update_after only a snapshot."""
    callback = BEMACallback(update_freq=update_freq, update_after=update_after)
    model = Net()
    updated: list[int] = []
    snapshots: list[int] = []
    bema_before = list(trainable(model).values())  # the BEMA weights start as these

    def after_step(run: callbridge.Run, step: int) -> None:
        if callback.last_update == step:
            updated.append(step)
        if callback.snapshot_taken and not snapshots:
            snapshots.append(step)
            # theta_0 and the EMA restart from this step's weights; the BEMA weights do not move.
            for param, theta0, ema in zip(
                callback._params, callback._theta0, callback._ema, strict=True
            ):
                assert torch.equal(theta0, param)
                assert torch.equal(ema, param)
            assert all(torch.equal(a, b) for a, b in zip(callback._bema, bema_before, strict=True))
        bema_before[:] = [t.clone() for t in callback._bema]

    _, trajectory = drive(callback, model, 12, after_step=after_step, end=False)

    snapshot, updates = schedule(12, update_freq=update_freq, update_after=update_after)
    assert updated == updates
    assert snapshots == ([snapshot] if snapshot else [])
    assert callback.snapshot_taken is (snapshot is not None)
    if not updates:
        # Never updated: the BEMA weights are still the weights at train begin.
        assert all(
            torch.equal(b, t) for b, t in zip(callback._bema, trajectory[0].values(), strict=True)
        )


def test_update_after_beyond_the_run_keeps_the_weights_of_train_begin(tmp_path: Path) -> None:
    callback = BEMACallback(update_freq=1, update_after=50)
    _, trajectory = drive(callback, Net(), 5, output_dir=tmp_path)
    assert callback.last_update is None
    assert max_abs_diff(callback.bema_state_dict(), trajectory[0]) == 0


# -- the weights -----------------------------------------------------------------------------


HPARAMS = [
    {"update_freq": 1},
    {"update_freq": 3},
    {"update_freq": 3, "update_after": 2},
    {
        "update_freq": 2,
        "update_after": 5,
        "lag": 1,
        "multiplier": 0.5,
        "ema_power": 0.8,
        "bias_power": 0.5,
    },
    {"update_freq": 1, "min_ema_multiplier": 0.3},
    {"update_freq": 2, "ema_power": 0.0, "bias_power": 0.0},
]


@pytest.mark.parametrize("args", HPARAMS, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_bema_weights_equal_the_reference(args: dict[str, Any]) -> None:
    """Bit for bit against TRL's order of operations; to float32 rounding against float64."""
    callback = BEMACallback(**args)
    _, trajectory = drive(callback, Net(), 14)
    ours = callback.bema_state_dict()

    assert max_abs_diff(ours, reference_float32(trajectory, 14, **args)) == 0
    exact = reference_float64(trajectory, 14, **args)
    for name, value in ours.items():
        torch.testing.assert_close(value.double(), exact[name], rtol=1e-6, atol=1e-6)
    # Not a trivial pass: the averages moved away from the live weights.
    assert max_abs_diff(ours, trajectory[14]) > 1e-3


def test_bit_identical_to_trl_on_a_plain_module() -> None:
    """TRL's own on_step_end and _update_bema_weights, buffers set up as its on_train_begin does.

    TRL's on_train_begin rebuilds the model from ``model.config``, so a plain module gets
    a deep copy as TRL's running model instead; TRL zips its buffers with all of that
    copy's parameters, hence a module without frozen ones.
    """
    import copy

    trl = pytest.importorskip("trl")
    args = {"update_freq": 2, "update_after": 3, "lag": 5}
    model = torch.nn.Sequential(torch.nn.Linear(5, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3))
    theirs = trl.BEMACallback(**args)
    theirs.running_model = copy.deepcopy(model)
    for name, param in model.named_parameters():
        theirs.param_names.append(name)
        theirs.thetat_params.append(param)
        theirs.theta0_params.append(param.detach().clone())
        theirs.ema_params.append(param.detach().clone())
    ours = BEMACallback(**args)

    def after_step(run: callbridge.Run, step: int) -> None:
        state = type("State", (), {"global_step": step})()
        theirs.on_step_end(None, state, None, model=model)

    drive(ours, model, 11, after_step=after_step)
    assert max_abs_diff(ours.bema_state_dict(), dict(theirs.running_model.named_parameters())) == 0


@pytest.mark.parametrize(
    "chunk", [1, 7, None, DEFAULT_CHUNK, 1 << 40], ids=["1", "7", "auto", "default", "huge"]
)
def test_chunking_changes_nothing(chunk: int | None) -> None:
    """The in-place chunked update is bit-identical whatever the chunk (and to whole tensors)."""
    args = {"update_freq": 2, "update_after": 1}
    callback = BEMACallback(chunk_elements=chunk, **args)
    _, trajectory = drive(callback, Net(), 7)
    assert max_abs_diff(callback.bema_state_dict(), reference_float32(trajectory, 7, **args)) == 0


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_the_number_of_update_threads_changes_nothing(threads: int) -> None:
    """The update's own threads split the elements; each element gets the same operations."""
    args = {"update_freq": 2, "update_after": 1}
    callback = BEMACallback(chunk_elements=5, threads=threads, **args)
    _, trajectory = drive(callback, Net(), 7)
    assert max_abs_diff(callback.bema_state_dict(), reference_float32(trajectory, 7, **args)) == 0
    assert callback._plan_key == (threads, 5)
    assert len(callback._plan) == threads  # more chunks than threads: every thread has work


def test_the_automatic_chunk_follows_torchs_intra_op_threads() -> None:
    """Below torch's grain while its ops could fork; 8x larger on one thread, where none does."""
    from callbridge.callbacks.bema import SERIAL_CHUNK, SINGLE_THREAD_CHUNK, TORCH_GRAIN

    before = torch.get_num_threads()
    callback = BEMACallback(update_freq=1)
    try:
        torch.set_num_threads(2)
        assert callback.chunk() == SERIAL_CHUNK < TORCH_GRAIN
        torch.set_num_threads(1)
        assert callback.chunk() == SINGLE_THREAD_CHUNK
        _, trajectory = drive(callback, torch.nn.Embedding(4100, 67), 3, seed=1)
        assert callback._plan_key == (1, SINGLE_THREAD_CHUNK)
    finally:
        torch.set_num_threads(before)
    assert (
        max_abs_diff(callback.bema_state_dict(), reference_float32(trajectory, 3, update_freq=1))
        == 0
    )
    assert BEMACallback(chunk_elements=99).chunk() == 99


def test_default_chunk_splits_a_large_parameter_bit_identically() -> None:
    """A parameter of more than one default chunk (274,700 > 32,752 elements) against one chunk."""
    results = []
    for chunk in (DEFAULT_CHUNK, 4096, 1 << 40):
        callback = BEMACallback(update_freq=1, chunk_elements=chunk)
        _, trajectory = drive(callback, torch.nn.Embedding(4100, 67), 3, seed=1)
        results.append(callback.bema_state_dict())
        assert max_abs_diff(results[-1], reference_float32(trajectory, 3, update_freq=1)) == 0
    assert trajectory[0]["weight"].numel() > DEFAULT_CHUNK


def test_transposed_and_channels_last_parameters() -> None:
    """Parameters without a flat view: the update, the swap and the save all work, layout kept."""
    model = torch.nn.Module()
    model.conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    model.register_parameter("t", torch.nn.Parameter(torch.randn(5, 3).t()))
    assert not model.conv.weight.is_contiguous()
    assert not model.t.is_contiguous()
    callback = BEMACallback(update_freq=2, evaluate_with="bema")
    run, trajectory = drive(callback, model, 6, end=False)
    assert (
        max_abs_diff(callback.bema_state_dict(), reference_float32(trajectory, 6, update_freq=2))
        == 0
    )

    live = trainable(model)
    callback.on_evaluate_begin(run)
    assert max_abs_diff(trainable(model), reference_float32(trajectory, 6, update_freq=2)) == 0
    callback.on_evaluate(run, {})
    assert max_abs_diff(trainable(model), live) == 0
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.t.stride() == (1, 3)


# -- evaluation with the BEMA weights --------------------------------------------------------


def test_evaluation_swaps_the_bema_weights_in_and_the_live_ones_back_bit_exactly() -> None:
    """No swap before the first update; afterwards the model holds BEMA during evaluation only."""
    args = {"update_freq": 3, "update_after": 2}
    callback = BEMACallback(evaluate_with="bema", **args)
    model = Net()
    seen: list[tuple[int, bool, bool]] = []

    def after_step(run: callbridge.Run, step: int) -> None:
        live = trainable(model)
        callback.on_evaluate_begin(run)
        during = trainable(model)
        callback.on_evaluate(run, {"eval_loss": 1.0})
        assert max_abs_diff(trainable(model), live) == 0  # bit-exact, every time
        if callback.last_update is not None:
            assert max_abs_diff(during, reference_float32(trajectory, step, **args)) == 0
        seen.append((step, max_abs_diff(during, live) == 0, callback._swapped))

    trajectory: dict[int, dict[str, torch.Tensor]] = {}

    def record(run: callbridge.Run, step: int) -> None:
        trajectory[step] = trainable(model)
        after_step(run, step)

    trajectory[0] = trainable(model)
    drive(callback, model, 9, after_step=record)
    # First update at step 5 (snapshot at 2): evaluations before it use the live weights.
    assert [(s, same) for s, same, _ in seen] == [(s, s < 5) for s in range(1, 10)]
    assert not any(swapped for *_, swapped in seen)


def test_a_second_fit_evaluates_with_live_weights_until_its_own_first_update() -> None:
    """A second ``train()``/``fit()`` with the same callback: fresh averages, no stale swap."""
    callback = BEMACallback(update_freq=3, update_after=1, evaluate_with="bema")
    model = Net()
    drive(callback, model, 4)
    assert (callback.last_update, callback.snapshot_taken) == (4, True)

    def after_step(run: callbridge.Run, step: int) -> None:
        live = trainable(model)
        callback.on_evaluate_begin(run)
        assert (max_abs_diff(trainable(model), live) == 0) is (step < 4), step
        callback.on_evaluate(run, {})

    _, trajectory = drive(callback, model, 5, after_step=after_step)
    args = {"update_freq": 3, "update_after": 1}
    assert max_abs_diff(callback.bema_state_dict(), reference_float32(trajectory, 5, **args)) == 0


def test_live_evaluation_leaves_the_weights_alone() -> None:
    callback = BEMACallback(update_freq=1)  # evaluate_with="live" by default
    model = Net()
    run, _ = drive(callback, model, 3, end=False)
    live = trainable(model)
    callback.on_evaluate_begin(run)
    assert max_abs_diff(trainable(model), live) == 0
    callback.on_evaluate(run, {})


def test_an_exception_during_evaluation_puts_the_live_weights_back() -> None:
    callback = BEMACallback(update_freq=1, evaluate_with="bema")
    model = Net()
    run, _ = drive(callback, model, 3, end=False)
    live = trainable(model)
    callback.on_evaluate_begin(run)
    assert max_abs_diff(trainable(model), live) > 0
    callback.on_exception(run, RuntimeError("evaluation failed"))
    assert max_abs_diff(trainable(model), live) == 0


# -- saving ------------------------------------------------------------------------------------


def test_plain_module_saved_as_safetensors_with_frozen_weights_and_buffers_live(
    tmp_path: Path,
) -> None:
    from safetensors.torch import load_file

    callback = BEMACallback(update_freq=2)
    model = Net()
    model.norm.train()
    model.norm(torch.randn(4, 13))  # running statistics differ from their initial values
    _, trajectory = drive(callback, model, 6, output_dir=tmp_path)

    assert callback.names == [n for n, p in model.named_parameters() if p.requires_grad]
    assert "frozen.weight" not in callback.names
    assert "frozen.bias" not in callback.names
    saved = load_file(tmp_path / "bema" / "model.safetensors")
    assert sorted(saved) == sorted(model.state_dict())
    live = model.state_dict()
    for name in ("frozen.weight", "frozen.bias", "norm.running_mean", "norm.running_var",
                 "norm.num_batches_tracked"):  # fmt: skip
        assert torch.equal(saved[name], live[name]), name
    bema = reference_float32(trajectory, 6, update_freq=2)
    assert max_abs_diff({n: saved[n] for n in bema}, bema) == 0
    assert max_abs_diff(trainable(model), trajectory[6]) == 0  # the save swapped back
    fresh = Net(seed=1)
    fresh.load_state_dict(saved)  # the documented way back


def test_tied_weights_of_a_plain_module_are_saved_under_both_names(tmp_path: Path) -> None:
    """safetensors refuses tensors that share memory; a tied language model must still save."""
    from safetensors.torch import load_file

    class TiedLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

    model = TiedLM()
    callback = BEMACallback(update_freq=1)
    _, trajectory = drive(callback, model, 2, output_dir=tmp_path)
    assert callback.names == ["emb.weight"]
    saved = load_file(tmp_path / "bema" / "model.safetensors")
    assert sorted(saved) == ["emb.weight", "head.weight"]
    expected = reference_float32(trajectory, 2, update_freq=1)["emb.weight"]
    assert torch.equal(saved["emb.weight"], expected)
    assert torch.equal(saved["head.weight"], expected)
    TiedLM().load_state_dict(saved)


def test_save_false_writes_nothing(tmp_path: Path) -> None:
    drive(BEMACallback(update_freq=1, save=False), Net(), 2, output_dir=tmp_path)
    assert not (tmp_path / "bema").exists()


# peft 0.21 on transformers 5.23: PEFT reads an attribute transformers has deprecated.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_lora_averages_the_adapter_only_and_saves_it(tmp_path: Path) -> None:
    """LoRA on GPT-2: only LoRA parameters are averaged; save_pretrained writes the adapter."""
    peft = pytest.importorskip("peft", reason="peft is needed for the LoRA case")
    from safetensors.torch import load_file

    from support.hf_models import tiny_gpt2

    # GPT-2's attention is a Conv1D: fan_in_fan_out says so (PEFT warns otherwise).
    lora = peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True
    )
    model = peft.get_peft_model(tiny_gpt2(), lora)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    callback = BEMACallback(update_freq=2)
    _, trajectory = drive(callback, model, 4, output_dir=tmp_path)

    assert callback.names
    assert all(".lora_A." in n or ".lora_B." in n for n in callback.names)
    assert len(callback.names) == 2 * 2  # lora_A and lora_B of c_attn in 2 layers
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if not p.requires_grad)
    folder = tmp_path / "bema"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors",
    ]  # fmt: skip
    saved = load_file(folder / "adapter_model.safetensors")
    bema = reference_float32(trajectory, 4, update_freq=2)
    # PEFT drops the adapter's name from the keys it writes.
    assert max_abs_diff(saved, {n.replace(".default", ""): v for n, v in bema.items()}) == 0
    assert max_abs_diff(trainable(model), trajectory[4]) == 0


# -- state and ranks ---------------------------------------------------------------------------


def test_state_dict_round_trip_continues_as_if_uninterrupted() -> None:
    """Stop at 5, state_dict, a new callback loads it at train begin, steps 6-12: as straight 12."""
    args = {"update_freq": 3, "update_after": 2, "evaluate_with": "bema"}
    straight = BEMACallback(**args)
    drive(straight, Net(), 12)

    model = Net()
    first = BEMACallback(**args)
    drive(first, model, 5, end=False)
    state = first.state_dict()
    second = BEMACallback(**args)
    second.load_state_dict(state)
    assert (second.last_update, second.snapshot_taken) == (5, True)
    # The same noise as steps 6-12 of the straight run: replay the generator to step 5.
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        perturb(Net(), generator)
    run = callbridge.Run("test", callbridge.TrainState(global_step=5), model=model)
    second.on_train_begin(run)
    for step in range(6, 13):
        perturb(model, generator)
        run.state.global_step = step
        second.on_step_end(run)
    assert max_abs_diff(second.bema_state_dict(), straight.bema_state_dict()) == 0


def test_a_checkpoint_of_another_model_is_refused() -> None:
    first = BEMACallback(update_freq=1)
    drive(first, Net(), 2, end=False)
    other = BEMACallback(update_freq=1)
    other.load_state_dict(first.state_dict())
    with pytest.raises(callbridge.CallbridgeError, match="do not match the model's trainable ones"):
        other.on_train_begin(callbridge.Run("test", model=torch.nn.Linear(2, 2)))


def test_other_ranks_hold_no_buffers_but_follow_the_schedule() -> None:
    """Under DDP the parameters are replicated: rank 1 keeps nothing, yet knows the updates."""
    rank1 = BEMACallback(update_freq=3)
    drive(rank1, Net(), 7, rank=1, world_size=2, end=False)
    assert not rank1.holds_buffers
    assert (rank1._theta0, rank1._ema, rank1._bema) == ([], [], [])
    assert rank1.state_dict() == {"holds": False, "last_update": 6, "snapshot_taken": False}
    rank0 = BEMACallback(update_freq=3)
    drive(rank0, Net(), 7, rank=0, world_size=2, end=False)
    assert rank0.holds_buffers
    assert rank0.state_dict()["holds"] is True
    everyone = BEMACallback(update_freq=3, all_ranks=True)
    drive(everyone, Net(), 7, rank=1, world_size=2, end=False)
    assert everyone.holds_buffers


# -- sharded parameters ------------------------------------------------------------------------

ALTERNATIVE = (
    "this process holds only a flat shard that the parameter names do not describe, so an "
    "average here would silently cover part of the model. Use FSDP2 "
    "(torch.distributed.fsdp.fully_shard; Lightning's ModelParallelStrategy; Accelerate's "
    "fsdp_version 2), which bema averages shard by shard, or DDP or DeepSpeed ZeRO stage 1-2 "
    "(replicated parameters)."
)


def test_a_deepspeed_zero3_parameter_is_refused_with_the_alternatives() -> None:
    """A ZeRO-3 parameter carries ``ds_id`` (DeepSpeed itself cannot run here: no GPU)."""
    model = torch.nn.Linear(3, 2)
    model.weight.ds_id = 7  # type: ignore[attr-defined]
    with pytest.raises(ShardedParametersError) as info:
        BEMACallback().on_train_begin(callbridge.Run("test", model=model))
    assert (
        str(info.value) == f"bema: parameter 'weight' is sharded by DeepSpeed ZeRO-3; {ALTERNATIVE}"
    )
    assert isinstance(info.value, callbridge.CallbridgeError)


@pytest.fixture
def one_process_group() -> Any:
    """A real gloo process group of one process (FSDP needs one)."""
    import torch.distributed as dist

    from support.hf_models import free_port

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        yield dist
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings(
    "ignore:FSDP.state_dict_type\\(\\) and FSDP.set_state_dict_type:FutureWarning"
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # FSDP1 on a CPU warns about its device
def test_an_fsdp1_model_is_refused_with_the_alternatives(one_process_group: Any) -> None:
    """Real FSDP1 (``FullyShardedDataParallel``, flat parameters) on a one-process gloo group."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = FullyShardedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)),
        device_id=torch.device("cpu"),
    )
    with pytest.raises(ShardedParametersError) as info:
        BEMACallback().on_train_begin(callbridge.Run("test", model=model))
    assert str(info.value) == (
        "bema: the model is wrapped by FSDP1 (FullyShardedDataParallel, flat parameters); "
        f"{ALTERNATIVE}"
    )


def test_an_fsdp2_model_on_one_process_is_averaged_as_the_plain_model(
    one_process_group: Any, tmp_path: Path
) -> None:
    """Real FSDP2 (``fully_shard``): its parameters are DTensors; the averages, the state and
    the saved file are those of the same model unsharded. (Two processes: test_cross_bema_fsdp2.)"""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    plain, sharded = Net(), Net()
    fully_shard(sharded, mesh=init_device_mesh("cpu", (1,)))
    assert type(sharded.hidden.weight).__name__ == "DTensor"
    ours = BEMACallback(update_freq=2, update_after=1)
    theirs = BEMACallback(update_freq=2, update_after=1)
    drive(ours, sharded, 7, output_dir=tmp_path / "sharded")
    _, trajectory = drive(theirs, plain, 7, output_dir=tmp_path / "plain")  # the same weights
    assert max_abs_diff(ours.bema_state_dict(), theirs.bema_state_dict()) == 0
    assert (
        max_abs_diff(ours.bema_state_dict(), reference_float32(trajectory, 7, **hparams(ours))) == 0
    )
    from safetensors.torch import load_file

    assert (
        max_abs_diff(
            load_file(tmp_path / "sharded" / "bema" / "model.safetensors"),
            load_file(tmp_path / "plain" / "bema" / "model.safetensors"),
        )
        == 0
    )


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match=r"update_freq must be >= 1 \(got 0\)"):
        BEMACallback(update_freq=0)
    with pytest.raises(ValueError, match=r"ema_power must be >= 0 \(got -1\)"):
        BEMACallback(ema_power=-1)
    with pytest.raises(ValueError, match="'evaluate_with' must be in"):
        BEMACallback(evaluate_with="ema")  # type: ignore[arg-type]
    assert math.isfinite(BEMACallback(lag=0).bema_alpha(1))
