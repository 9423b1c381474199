"""``bema``: Bias-Corrected Exponential Moving Average of the weights (Block & Zhang, 2025).

The BEMA weights are ``theta'_t = alpha_t * (theta_t - theta_0) + EMA_t`` with
``EMA_t = (1 - beta_t) * EMA_{t-1} + beta_t * theta_t``,
``beta_t = max((lag + multiplier * t) ** -ema_power, min_ema_multiplier)`` and
``alpha_t = (lag + multiplier * t) ** -bias_power``, ``t`` being the global step.

Same parameters, defaults and semantics as TRL's ``BEMACallback`` (bit-exact to it
by default), plus what it lacks: any ``nn.Module`` (parameters keyed by name, frozen
ones and buffers left alone), state that survives checkpoint and resume, evaluation
with the BEMA weights, one copy on rank 0 under DDP, an update that works in place on
cache-sized chunks instead of allocating temporaries as large as the largest parameter,
and, for a model on the GPU with the buffers on the CPU, an update that does not stall the
training step.

The asynchronous update (``stage``): at an update step the live weights are copied into
the BEMA buffers themselves (which the update overwrites anyway: ``bema_t`` depends on
``theta_t``, ``theta_0`` and ``EMA_t`` only), on a side CUDA stream into pinned memory,
and the training stream waits on that copy on the GPU, not on the host; the arithmetic
then runs in a worker thread, the same operations in the same order as the synchronous
update, so the results are identical to the bit. Whatever reads the buffers (the next
update, the swap for evaluation, ``state_dict``, the save at train end) first joins the
update in flight and re-raises what it raised. No buffer is added: the BEMA buffers are
the staging area. The costs: they are page-locked, which the OS cannot swap out, and
PyTorch's pinned allocator rounds each up to a power of two (a 7B Llama's matrices take
1.33x their bytes, so about 3.3x the trainable bytes on the host in all, against TRL's
3x plus a few temporaries as large as the largest parameter); and the worker's CPU
threads run beside the training thread. ``stage="sync"`` keeps them pageable, at 3x.

Load the saved weights back: ``Model.from_pretrained(output_dir / "bema")`` for models
with ``save_pretrained``, else
``model.load_state_dict(safetensors.torch.load_file(output_dir / "bema" / "model.safetensors"))``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs

from .._errors import CallbridgeError
from .._protocol import Callback, Run

logger = logging.getLogger("callbridge")

SAFETENSORS_NAME = "model.safetensors"


class ShardedParametersError(CallbridgeError, RuntimeError):
    """BEMA was asked to average parameters that this process holds only a shard of."""


def _positive(instance: Any, attribute: Any, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1 (got {value})")


def _not_negative(instance: Any, attribute: Any, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0 (got {value})")


def _async_needs_cpu_buffers(instance: Any, attribute: Any, value: str) -> None:
    if value == "async" and str(instance.device).split(":")[0] != "cpu":
        raise ValueError(
            f"stage='async' runs the update on the CPU, so it needs device='cpu' (got "
            f"device={instance.device!r}); with the buffers on the GPU the update is queued "
            "on the GPU's stream already: use stage='auto' or stage='sync'"
        )


@attrs.define
class BEMACallback(Callback):
    """Bias-corrected EMA of the trainable weights, saved to ``output_dir/bema`` at train end.

    Args:
        update_freq: update the BEMA weights every this many steps (phi).
        ema_power: power of the EMA decay factor (kappa); 0 disables the EMA.
        bias_power: power of the bias-correction factor (eta); 0 pins alpha at 1.
        lag: virtual starting age of the updates (rho).
        update_after: burn-in steps before theta_0 is taken (tau).
        multiplier: scale of t in both factors (gamma).
        min_ema_multiplier: lower bound of the EMA decay factor.
        device: where the buffers live (``cpu`` keeps GPU memory free, as in TRL).
        evaluate_with: ``bema`` evaluates with the BEMA weights (the live weights come
            back bit-exactly afterwards); ``live`` leaves evaluation alone.
        save: write the BEMA weights to ``output_dir/bema`` at train end.
        all_ranks: keep buffers on every rank; by default only rank 0 does (DDP
            replicates the parameters, so the other copies would be identical).
        chunk_elements: elements per in-place chunk of the update.
        stage: ``async`` copies the weights and returns at once, the arithmetic running in
            a worker thread (with a CUDA model: the copy runs on a side stream into pinned
            memory, the training stream waits for it on the GPU); ``sync`` updates before
            ``on_step_end`` returns; ``auto`` is ``async`` for a CUDA model with the
            buffers on the CPU, else ``sync``. The weights are bit-identical either way.
    """

    rank_zero_only: ClassVar[bool] = False  # evaluation swaps weights on every rank

    update_freq: int = attrs.field(default=400, validator=_positive)
    ema_power: float = attrs.field(default=0.5, validator=_not_negative)
    bias_power: float = attrs.field(default=0.2, validator=_not_negative)
    lag: int = attrs.field(default=10, validator=_not_negative)
    update_after: int = attrs.field(default=0, validator=_not_negative)
    multiplier: float = 1.0
    min_ema_multiplier: float = attrs.field(default=0.0, validator=_not_negative)
    device: str = "cpu"
    evaluate_with: Literal["live", "bema"] = attrs.field(
        default="live", validator=attrs.validators.in_(("live", "bema"))
    )
    save: bool = True
    all_ranks: bool = False
    # 1 MiB of fp32 per chunk, 4 MiB over the four tensors a chunk touches: cache-resident,
    # and few enough ops per update that their fixed cost stays small (benchmarks/bema.py:
    # 1 << 16 was slower with 1 thread and far slower with 2, each op forking threads for
    # 64 Ki elements).
    chunk_elements: int = attrs.field(default=1 << 18, validator=_positive)
    stage: Literal["auto", "sync", "async"] = attrs.field(
        default="auto",
        validator=[attrs.validators.in_(("auto", "sync", "async")), _async_needs_cpu_buffers],
    )

    names: list[str] = attrs.field(factory=list, init=False, repr=False)
    last_update: int | None = attrs.field(default=None, init=False)
    snapshot_taken: bool = attrs.field(default=False, init=False)
    _params: list[Any] = attrs.field(factory=list, init=False, repr=False)
    _theta0: list[Any] = attrs.field(factory=list, init=False, repr=False)
    _ema: list[Any] = attrs.field(factory=list, init=False, repr=False)
    _bema: list[Any] = attrs.field(factory=list, init=False, repr=False)
    _holds: bool = attrs.field(default=False, init=False, repr=False)
    _pending: dict[str, Any] | None = attrs.field(default=None, init=False, repr=False)
    _swapped: bool = attrs.field(default=False, init=False, repr=False)
    _replicated: bool = attrs.field(default=False, init=False, repr=False)
    _async: bool = attrs.field(default=False, init=False, repr=False)
    _job: _Background | None = attrs.field(default=None, init=False, repr=False)
    _streams: dict[Any, Any] = attrs.field(factory=dict, init=False, repr=False)

    # -- the formula ---------------------------------------------------------------------

    def ema_beta(self, step: int) -> float:
        """beta_t = max((lag + multiplier * t) ** -ema_power, min_ema_multiplier)."""
        beta: float = (self.lag + self.multiplier * step) ** (-self.ema_power)
        return max(beta, self.min_ema_multiplier)

    def bema_alpha(self, step: int) -> float:
        """alpha_t = (lag + multiplier * t) ** -bias_power."""
        alpha: float = (self.lag + self.multiplier * step) ** (-self.bias_power)
        return alpha

    def should_update(self, step: int) -> bool:
        """Policy: whether step ``step`` (the global step just completed) updates the weights."""
        return step > self.update_after and (step - self.update_after) % self.update_freq == 0

    @property
    def holds_buffers(self) -> bool:
        """Whether this process keeps the averages (rank 0, or every rank with ``all_ranks``)."""
        return self._holds

    def bema_state_dict(self) -> dict[str, Any]:
        """The BEMA weights by parameter name (the averages, not the live model)."""
        self.join()
        return dict(zip(self.names, self._bema, strict=True))

    def join(self) -> None:
        """Wait for the update running in the background, if any; re-raise what it raised."""
        job, self._job = self._job, None
        if job is not None:
            job.join()

    # -- hooks ---------------------------------------------------------------------------

    def on_train_begin(self, run: Run) -> None:
        import torch

        self.join()  # a second fit: the first one's last update must not land on new buffers
        model = run.model
        if model is None:
            raise CallbridgeError("bema needs the model: the adapter passes run.model")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        _refuse_sharded(named)
        state = run.state
        self._holds = state.world_size == 1 or state.is_main_process or self.all_ranks
        self._replicated = state.world_size > 1 and not self.all_ranks
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._async = self._stages_async()
        pending, self._pending = self._pending, None
        restoring = pending is not None and bool(pending.get("names"))
        if pending is None or (self._holds and not restoring):
            # Fresh averages: nothing is updated yet, whatever an earlier fit of this callback
            # left behind, so that evaluation keeps the live weights until the first update.
            self.last_update = None
            self.snapshot_taken = False
        if not self._holds:
            self._theta0, self._ema, self._bema = [], [], []
            return
        if pending is not None and restoring:
            self._restore(pending)
            return
        with torch.no_grad():
            # theta_0, the EMA and the BEMA weights all start as the weights at train begin.
            # Contiguous whatever the parameter's layout (a transposed or channels_last
            # weight): the update and the swap walk the buffers as flat views.
            self._theta0 = [
                p.detach().to(self.device, memory_format=torch.contiguous_format, copy=True)
                for p in self._params
            ]
            self._ema = [t.clone() for t in self._theta0]
            self._bema = [self._bema_buffer(t, copy=True) for t in self._theta0]

    def on_step_end(self, run: Run) -> None:
        step = run.state.global_step
        if not self._holds:
            # No buffers here, but the same schedule: every rank agrees on whether a swap
            # at evaluation has anything to swap in, without asking rank 0.
            if self.should_update(step):
                self.last_update = step
            return
        if step == self.update_after and self.update_after > 0:
            self._snapshot()  # theta_0 and the EMA restart from here; no update on this step
        elif self.should_update(step):
            self.update(step)

    def on_evaluate_begin(self, run: Run) -> None:
        if self.evaluate_with != "bema" or self._swapped:
            return
        if self.last_update is None:
            return  # never swap in weights before the first update
        self._swap(run)

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        if self._swapped:
            self._swap(run)

    def on_exception(self, run: Run, exc: BaseException) -> None:
        try:
            self.join()
        except Exception:
            # The training's error is the one that propagates; the update's is only logged.
            logger.exception("bema: the background update failed too")
        if self._swapped:
            self._swap(run)  # leave the live weights in place whatever failed

    def on_train_end(self, run: Run) -> None:
        self.join()
        if self._swapped:
            self._swap(run)
        if self.save and run.state.is_main_process and self._holds and run.output_dir is not None:
            self.save_weights(run.model, Path(run.output_dir) / "bema")

    # -- mechanics -----------------------------------------------------------------------

    def _snapshot(self) -> None:
        import torch

        self.join()
        with torch.no_grad():
            for param, theta0, ema in zip(self._params, self._theta0, self._ema, strict=True):
                theta0.copy_(param)
                ema.copy_(param)
        self.snapshot_taken = True

    def update(self, step: int) -> None:
        """EMA and BEMA update at ``step``, in place, chunk by chunk.

        Bit-exact to TRL: the same operations in the same order per element
        (``ema.mul_(1 - beta).add_(theta, alpha=beta)``, then ``ema + alpha * (theta - theta_0)``),
        only on slices small enough to stay in cache, with no full-size temporaries.
        With ``stage`` asynchronous, returns once the weights are staged (see the module).
        """
        self.join()  # the staging area is the BEMA buffers: the last update must be done
        beta = self.ema_beta(step)
        alpha = self.bema_alpha(step)
        if self._async:
            events = self._stage()
            self._job = _Background(lambda: self._update_staged(beta, alpha, events))
        else:
            self._update_live(beta, alpha)
        self.last_update = step

    def _update_live(self, beta: float, alpha: float) -> None:
        import torch

        keep = 1 - beta
        chunk = self.chunk_elements
        with torch.no_grad():
            for param, theta0, ema, bema in zip(
                self._params, self._theta0, self._ema, self._bema, strict=True
            ):
                live = param.detach().reshape(-1)
                t0, e, b = theta0.view(-1), ema.view(-1), bema.view(-1)
                staged = live.device != e.device
                for start in range(0, live.numel(), chunk):
                    end = min(start + chunk, live.numel())
                    x = live[start:end]
                    if staged:
                        x = x.to(e.device, non_blocking=False)
                    ec, bc = e[start:end], b[start:end]
                    ec.mul_(keep).add_(x, alpha=beta)
                    torch.sub(x, t0[start:end], out=bc)
                    bc.mul_(alpha).add_(ec)

    def _stage(self) -> list[Any]:
        """Copy the live weights into the BEMA buffers; the CUDA events that mark the copies.

        On CUDA the copies run on a side stream that first waits for the training stream
        (they read the weights as the step left them); the training stream then waits for
        them on the GPU, so the next optimizer step cannot write a weight before it is read,
        and the host does not wait at all. Other devices copy here, synchronously.
        """
        import torch

        cuda: Any = torch.cuda  # its Stream and Event are untyped (mypy strict)
        events = []
        with torch.no_grad():
            for param, bema in zip(self._params, self._bema, strict=True):
                if param.device.type != "cuda":
                    bema.copy_(param.detach())
            for device in {p.device for p in self._params if p.device.type == "cuda"}:
                current = cuda.current_stream(device)
                side = self._streams.get(device)
                if side is None:
                    side = self._streams[device] = cuda.Stream(device=device)
                side.wait_stream(current)
                with cuda.stream(side):
                    for param, bema in zip(self._params, self._bema, strict=True):
                        if param.device == device:
                            bema.copy_(param.detach(), non_blocking=True)  # pinned: no host wait
                    # Blocking: the worker sleeps on the copy instead of spinning a core.
                    event = cuda.Event(blocking=True)
                    event.record(side)
                current.wait_event(event)
                events.append(event)
        return events

    def _update_staged(self, beta: float, alpha: float, events: list[Any]) -> None:
        """The update of ``_update_live`` on the weights staged in the BEMA buffers (worker thread).

        The same operations on the same values, so the same bits: each chunk of the BEMA
        buffer holds theta_t until ``theta_t - theta_0`` overwrites it, elementwise.
        """
        import torch

        for event in events:
            event.synchronize()  # this thread, not the training one, waits for the copies
        keep = 1 - beta
        chunk = self.chunk_elements
        with torch.no_grad():
            for theta0, ema, bema in zip(self._theta0, self._ema, self._bema, strict=True):
                t0, e, b = theta0.view(-1), ema.view(-1), bema.view(-1)
                for start in range(0, b.numel(), chunk):
                    end = min(start + chunk, b.numel())
                    ec, bc = e[start:end], b[start:end]
                    ec.mul_(keep).add_(bc, alpha=beta)
                    bc.sub_(t0[start:end])
                    bc.mul_(alpha).add_(ec)

    def _stages_async(self) -> bool:
        if self.stage == "sync" or not self._params:
            return False
        if self.stage == "async":
            return True
        on_cpu = str(self.device).split(":")[0] == "cpu"
        return on_cpu and all(p.device.type == "cuda" for p in self._params)

    def _bema_buffer(self, tensor: Any, *, copy: bool) -> Any:
        """``tensor`` contiguous on ``device``, page-locked where CUDA copies into it async."""
        import torch

        pinned = self._async and any(p.device.type == "cuda" for p in self._params)
        if not pinned:
            return tensor.to(self.device, memory_format=torch.contiguous_format, copy=copy)
        buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        buffer.copy_(tensor)
        return buffer

    def _swap(self, run: Run) -> None:
        """Exchange the live weights and the BEMA weights (an involution: twice restores)."""
        import torch

        self.join()
        with torch.no_grad():
            if self._holds:
                for param, bema in zip(self._params, self._bema, strict=True):
                    _exchange(param, bema, self.chunk_elements)
            if self._replicated and _distributed():
                for param in self._params:
                    torch.distributed.broadcast(param.data, src=0)
        self._swapped = not self._swapped

    def save_weights(self, model: Any, directory: Path) -> Path:
        """Write the model with its trainable weights replaced by the BEMA weights.

        ``save_pretrained`` where the model has it (HF, PEFT), else a safetensors file of
        the full state dict (frozen parameters and buffers from the live model).
        """
        directory.mkdir(parents=True, exist_ok=True)
        self._swap_local()  # the model holds the BEMA weights while it is written
        try:
            if hasattr(model, "save_pretrained"):
                model.save_pretrained(directory)
                return directory
            try:
                from safetensors.torch import save_file
            except ImportError as exc:
                raise CallbridgeError(
                    "bema saves plain modules as safetensors: pip install safetensors"
                ) from exc
            state = _unshared(model.state_dict())
            path = directory / SAFETENSORS_NAME
            save_file(state, str(path))
            return path
        finally:
            self._swap_local()

    def _swap_local(self) -> None:
        import torch

        self.join()
        with torch.no_grad():
            for param, bema in zip(self._params, self._bema, strict=True):
                _exchange(param, bema, self.chunk_elements)

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        self.join()  # a checkpoint holds the update of its step, completed
        if not self._holds:
            return {
                "holds": False,
                "last_update": self.last_update,
                "snapshot_taken": self.snapshot_taken,
            }
        return {
            "holds": True,
            "names": list(self.names),
            "theta0": [t.detach().cpu() for t in self._theta0],
            "ema": [t.detach().cpu() for t in self._ema],
            "bema": [t.detach().cpu() for t in self._bema],
            "last_update": self.last_update,
            "snapshot_taken": self.snapshot_taken,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Parameters are known at train begin only: keep the state until then.
        self.join()
        self._pending = dict(state)
        self.last_update = state.get("last_update")
        self.snapshot_taken = bool(state.get("snapshot_taken", False))

    def _restore(self, state: dict[str, Any]) -> None:
        saved = list(state["names"])
        if saved != self.names:
            missing = sorted(set(self.names) - set(saved))
            extra = sorted(set(saved) - set(self.names))
            raise CallbridgeError(
                "bema: the checkpoint's averaged parameters do not match the model's "
                "trainable ones "
                f"(missing from the checkpoint: {missing[:5]}, unknown to the model: {extra[:5]})"
            )
        self._theta0 = [t.to(self.device).contiguous() for t in state["theta0"]]
        self._ema = [t.to(self.device).contiguous() for t in state["ema"]]
        self._bema = [self._bema_buffer(t, copy=False) for t in state["bema"]]


class _Background:
    """One update running on a worker thread; ``join`` waits for it and re-raises its error.

    A thread per update, not a pool: none outlives the update, none is left at train end.
    Torch releases the GIL inside its operations, so the training thread runs meanwhile.
    """

    def __init__(self, work: Callable[[], None]) -> None:
        self._work = work
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="callbridge-bema-update")
        self._thread.start()

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread by join
            self._error = exc

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _exchange(param: Any, buffer: Any, chunk: int) -> None:
    """Swap the values of a parameter and a buffer of the same shape, bit-exactly."""
    if param.device == buffer.device and param.dtype == buffer.dtype and param.data.is_contiguous():
        # Same place: exchange storages, no copy at all.
        data = param.data
        param.data = buffer.data
        buffer.data = data
        return
    if not param.data.is_contiguous():
        # No flat view of a transposed or channels_last weight: copy whole, keeping its layout.
        held = param.data.contiguous()
        param.data.copy_(buffer)
        buffer.copy_(held)
        return
    live, saved = param.data.view(-1), buffer.view(-1)
    for start in range(0, live.numel(), chunk):
        end = min(start + chunk, live.numel())
        held = live[start:end].clone()
        live[start:end].copy_(saved[start:end])
        saved[start:end].copy_(held)


def _unshared(state: dict[str, Any]) -> dict[str, Any]:
    """CPU tensors for safetensors, tied weights copied: it refuses tensors that share memory.

    Every name stays (``emb.weight`` and ``head.weight`` of a tied language model), so the
    file loads back with ``model.load_state_dict`` as it is.
    """
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for name, value in state.items():
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:
            tensor = tensor.clone()
        seen.add(storage)
        out[name] = tensor
    return out


def _distributed() -> bool:
    import torch

    return bool(torch.distributed.is_available() and torch.distributed.is_initialized())


def _refuse_sharded(named: list[tuple[str, Any]]) -> None:
    for name, param in named:
        kind = None
        if type(param).__name__ in ("DTensor", "FlatParameter") or hasattr(param, "_local_tensor"):
            kind = "FSDP"
        elif hasattr(param, "ds_id") or hasattr(param, "ds_numel"):
            kind = "DeepSpeed ZeRO-3"
        if kind is not None:
            raise ShardedParametersError(
                f"bema: parameter {name!r} is sharded by {kind}; this process holds only "
                "a shard, so "
                "an average here would silently cover part of the model. Use DDP or DeepSpeed ZeRO "
                "stage 1-2 (replicated parameters), or average after gathering the full weights."
            )
