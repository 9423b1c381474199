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

The update's threads: each update splits its elements over ``threads`` threads of its own
(the calling one and ``threads - 1`` short-lived ones), each working through chunks of
fewer elements than torch's intra-op grain (32768), so that every operation runs on its
own thread from start to end (where torch has one intra-op thread nothing forks, and the
chunks are 8x larger, for fewer operations). torch's intra-op pool would instead split
each small operation over its threads and make them meet at a barrier when it ends:
hundreds of barriers per update, each of which stalls for a scheduler time slice when the
CPU is busy with other work (dataloader workers, other ranks). The elements are the same,
the operations on each are the same, so the bits are the same whatever ``threads`` is.

Sharded models (FSDP2: ``torch.distributed.fsdp.fully_shard``, Lightning's
``ModelParallelStrategy``; parameters that are ``DTensor`` objects): every rank keeps
theta_0, the EMA and the BEMA weights of its local shard only (3/N of the trainable bytes
on each of N ranks) and updates them in place, element for element as the unsharded
update; evaluation with the BEMA weights swaps the local shards; at train end the full
model is gathered once and rank 0 writes it, loadable as for an unsharded model. The
averages a checkpoint needs are every rank's shard (a trainer stores one rank's callback
state, and a distributed checkpoint writer keeps one copy of a plain tensor): each rank
writes its own to ``output_dir/bema-shards/step<N>-<id>/rank<R>-of-<W>.pt`` when its state
is taken, and the callback's state names that folder. A resume with the same number of
ranks reads its own file; with another number (or unsharded) it reassembles each parameter
from every file of the folder and takes its own region, exactly; a missing file is an
error naming both sizes. The folders stay when a trainer deletes old checkpoints: delete
a folder with the checkpoint of its step. FSDP1 (``FullyShardedDataParallel``, flat
parameters) and DeepSpeed ZeRO-3 are refused with an error: their parameters are not what
the model's names say.

Load the saved weights back: ``Model.from_pretrained(output_dir / "bema")`` for models
with ``save_pretrained``, else
``model.load_state_dict(safetensors.torch.load_file(output_dir / "bema" / "model.safetensors"))``.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs

from .._errors import CallbridgeError
from .._protocol import Callback, Run

logger = logging.getLogger("callbridge")

SAFETENSORS_NAME = "model.safetensors"
#: Where sharded runs keep every rank's shard of the averages, under ``output_dir``.
SHARDS_DIR = "bema-shards"
#: torch's intra-op grain (``at::internal::GRAIN_SIZE``): smaller operations run serially.
TORCH_GRAIN = 32768
#: Just below the grain, a multiple of 16 so that every chunk starts on a 64-byte line: each
#: op runs serially on the thread that issues it (no fork, no barrier, which a busy CPU
#: stalls), 512 KiB over the four tensors a chunk touches (cache-resident).
SERIAL_CHUNK = TORCH_GRAIN - 16
#: With one intra-op thread nothing forks whatever the size: 4 MiB over the four tensors, and
#: 8x fewer operations (benchmarks/bema.py, the GPT-2 mix on 1 thread: about half the time).
SINGLE_THREAD_CHUNK = 1 << 18

#: (parameter index, start, end) of flat elements: one chunk of an update.
_Chunk = tuple[int, int, int]


class ShardedParametersError(CallbridgeError, RuntimeError):
    """BEMA was asked to average parameters sharded in a way it does not support (FSDP1, ZeRO-3)."""


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
    """Bias-corrected weight EMA, saved at train end; DDP, FSDP2 per shard (FSDP1, ZeRO-3 refused).

    The BEMA weights go to ``output_dir/bema`` at train end.

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
        chunk_elements: elements per in-place chunk of the update (None: 32752, below
            torch's intra-op grain, so that each operation runs on one thread without a
            barrier; 262144 where torch has one intra-op thread and nothing forks).
        threads: threads of the update's own (None: torch's intra-op count, at most 4).
        stage: ``async`` copies the weights and returns at once, the arithmetic running in
            a worker thread (with a CUDA model: the copy runs on a side stream into pinned
            memory, the training stream waits for it on the GPU); ``sync`` updates before
            ``on_step_end`` returns; ``auto`` is ``async`` for a CUDA model with the
            buffers on the CPU, else ``sync``. The weights are bit-identical either way.

    On a sharded model (FSDP2) every rank keeps its own shard of the averages (see the
    module); ``all_ranks`` does not apply.
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
    # None: SERIAL_CHUNK or, with one intra-op thread, SINGLE_THREAD_CHUNK (see them).
    chunk_elements: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    threads: int | None = attrs.field(default=None, validator=attrs.validators.optional(_positive))
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
    _sharded: bool = attrs.field(default=False, init=False, repr=False)
    _plan: list[list[_Chunk]] = attrs.field(factory=list, init=False, repr=False)
    _plan_key: tuple[int, int] | None = attrs.field(default=None, init=False, repr=False)
    _run: Run | None = attrs.field(default=None, init=False, repr=False)
    _token: str = attrs.field(default="", init=False, repr=False)
    _written: tuple[Any, ...] | None = attrs.field(default=None, init=False, repr=False)

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
    def in_collectives(self) -> bool:
        """Whether its hooks meet the other ranks (a shard's gather, rank 0's broadcast).

        Then the ``disable`` error policy keeps it on: off on one rank only, it would
        leave the others waiting.
        """
        return self._sharded or self._replicated

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
        _refuse_unsupported(model)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        state = run.state
        self._run = run
        self._sharded = any(_is_dtensor(p) for _, p in named)
        # Sharded: every rank holds its own shard. Replicated (DDP): rank 0 holds all.
        self._holds = (
            self._sharded or state.world_size == 1 or state.is_main_process or self.all_ranks
        )
        self._replicated = state.world_size > 1 and not self.all_ranks and not self._sharded
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._async = self._stages_async()
        self._written = None
        if self._sharded:
            self._token = _agreed_token()
        pending, self._pending = self._pending, None
        restoring = pending is not None and bool(pending.get("names"))
        if pending is None or (self._holds and not restoring):
            # Fresh averages: nothing is updated yet, whatever an earlier fit of this callback
            # left behind, so that evaluation keeps the live weights until the first update.
            self.last_update = None
            self.snapshot_taken = False
        if not self._holds:
            self._theta0, self._ema, self._bema, self._plan = [], [], [], []
            self._plan_key = None
            return
        if pending is not None and restoring:
            self._restore(pending)
        else:
            with torch.no_grad():
                # theta_0, the EMA and the BEMA weights all start as the weights at train
                # begin (this rank's shard of them when sharded). Contiguous whatever the
                # parameter's layout (a transposed or channels_last weight): the update and
                # the swap walk the buffers as flat views.
                self._theta0 = [
                    _local(p).to(self.device, memory_format=torch.contiguous_format, copy=True)
                    for p in self._params
                ]
                self._ema = [t.clone() for t in self._theta0]
                self._bema = [self._bema_buffer(t, copy=True) for t in self._theta0]
        self._plan_key = None  # planned at the first update, for the buffers as they are now

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
        if not self.save or run.output_dir is None:
            return
        if self._sharded:
            # Every rank takes part in the gather; rank 0 writes.
            self.save_weights(run.model, Path(run.output_dir) / "bema")
        elif run.state.is_main_process and self._holds:
            self.save_weights(run.model, Path(run.output_dir) / "bema")

    # -- mechanics -----------------------------------------------------------------------

    def chunk(self) -> int:
        """Elements per chunk: ``chunk_elements``, or what suits torch's intra-op threads now."""
        if self.chunk_elements is not None:
            return self.chunk_elements
        import torch

        return SERIAL_CHUNK if torch.get_num_threads() > 1 else SINGLE_THREAD_CHUNK

    def _chunks(self) -> list[list[_Chunk]]:
        """The update's chunks per thread; planned again when the thread counts changed."""
        threads = self.threads
        if threads is None:
            import torch

            threads = max(1, min(torch.get_num_threads(), 4))
        key = (threads, self.chunk())
        if key != self._plan_key:
            sizes = [t.numel() for t in self._theta0]
            self._plan = _plan(sizes, key[1], threads)
            self._plan_key = key
        return self._plan

    def _snapshot(self) -> None:
        import torch

        self.join()
        with torch.no_grad():
            for param, theta0, ema in zip(self._params, self._theta0, self._ema, strict=True):
                live = _local(param)
                theta0.copy_(live)
                ema.copy_(live)
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
        lives = [_local(p).detach().reshape(-1) for p in self._params]
        t0s = [t.view(-1) for t in self._theta0]
        emas = [t.view(-1) for t in self._ema]
        bemas = [t.view(-1) for t in self._bema]

        def work(chunks: list[_Chunk]) -> None:
            with torch.no_grad():  # per thread: grad mode is thread-local
                for i, start, end in chunks:
                    x = lives[i][start:end]
                    e = emas[i]
                    if x.device != e.device:
                        x = x.to(e.device, non_blocking=False)
                    ec, bc = e[start:end], bemas[i][start:end]
                    ec.mul_(keep).add_(x, alpha=beta)
                    torch.sub(x, t0s[i][start:end], out=bc)
                    bc.mul_(alpha).add_(ec)

        _in_threads(self._chunks(), work)

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
        lives = [_local(p).detach() for p in self._params]
        with torch.no_grad():
            for live, bema in zip(lives, self._bema, strict=True):
                if live.device.type != "cuda":
                    bema.copy_(live)
            for device in {t.device for t in lives if t.device.type == "cuda"}:
                current = cuda.current_stream(device)
                side = self._streams.get(device)
                if side is None:
                    side = self._streams[device] = cuda.Stream(device=device)
                side.wait_stream(current)
                with cuda.stream(side):
                    for live, bema in zip(lives, self._bema, strict=True):
                        if live.device == device:
                            bema.copy_(live, non_blocking=True)  # pinned: no host wait
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
        t0s = [t.view(-1) for t in self._theta0]
        emas = [t.view(-1) for t in self._ema]
        bemas = [t.view(-1) for t in self._bema]

        def work(chunks: list[_Chunk]) -> None:
            with torch.no_grad():
                for i, start, end in chunks:
                    ec, bc = emas[i][start:end], bemas[i][start:end]
                    ec.mul_(keep).add_(bc, alpha=beta)
                    bc.sub_(t0s[i][start:end])
                    bc.mul_(alpha).add_(ec)

        _in_threads(self._chunks(), work)

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
                    _exchange(param, bema, self.chunk())
            if self._replicated and _distributed():
                for param in self._params:
                    torch.distributed.broadcast(param.data, src=0)
        self._swapped = not self._swapped

    def save_weights(self, model: Any, directory: Path) -> Path:
        """Write the model with its trainable weights replaced by the BEMA weights.

        ``save_pretrained`` where the model has it (HF, PEFT), else a safetensors file of
        the full state dict (frozen parameters and buffers from the live model). On a
        sharded model every rank must call it: the full model is gathered once, with the
        BEMA weights swapped in on every rank, and rank 0 writes it.
        """
        state = None
        self._swap_local()  # the model holds the BEMA weights while it is read
        try:
            if self._sharded:
                state = _gathered_state(model)  # a collective; full on rank 0, empty elsewhere
                if not _is_rank_zero():
                    return directory
            directory.mkdir(parents=True, exist_ok=True)
            if hasattr(model, "save_pretrained"):
                if state is None:
                    model.save_pretrained(directory)
                else:
                    model.save_pretrained(directory, state_dict=state)
                return directory
            try:
                from safetensors.torch import save_file
            except ImportError as exc:
                raise CallbridgeError(
                    "bema saves plain modules as safetensors: pip install safetensors"
                ) from exc
            path = directory / SAFETENSORS_NAME
            save_file(_unshared(model.state_dict() if state is None else state), str(path))
            return path
        finally:
            self._swap_local()

    def _swap_local(self) -> None:
        import torch

        self.join()
        with torch.no_grad():
            for param, bema in zip(self._params, self._bema, strict=True):
                _exchange(param, bema, self.chunk())

    def resident_bytes(self) -> int:
        """Bytes this process keeps for the averages (theta_0, EMA, BEMA weights)."""
        return sum(t.numel() * t.element_size() for t in (*self._theta0, *self._ema, *self._bema))

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        self.join()  # a checkpoint holds the update of its step, completed
        if not self._holds:
            return {
                "holds": False,
                "last_update": self.last_update,
                "snapshot_taken": self.snapshot_taken,
            }
        if self._sharded:
            return self._sharded_state()
        return {
            "holds": True,
            "names": list(self.names),
            "theta0": [t.detach().cpu() for t in self._theta0],
            "ema": [t.detach().cpu() for t in self._ema],
            "bema": [t.detach().cpu() for t in self._bema],
            "last_update": self.last_update,
            "snapshot_taken": self.snapshot_taken,
        }

    def _sharded_state(self) -> dict[str, Any]:
        """Write this rank's shard to its own file; the state names the folder of all ranks.

        A trainer stores one rank's state (Lightning: rank 0's; a distributed checkpoint
        writer keeps one copy of plain tensors, taking them for replicated), so the shards
        go to files of their own, one per rank, each written whole or not at all.
        """
        import torch

        run = self._run
        if run is None or run.output_dir is None:
            raise CallbridgeError(
                "bema: a sharded model's averages are saved per rank under output_dir, and "
                "this run has none: give the trainer an output directory"
            )
        rank, world = _rank_and_world()
        step = run.state.global_step
        folder = Path(run.output_dir) / SHARDS_DIR / f"step{step}-{self._token}"
        key = (folder, self.last_update, self.snapshot_taken)
        if self._written != key:  # Lightning takes the state twice per checkpoint
            shapes, offsets = zip(*(_region(p) for p in self._params), strict=True)
            shard = {
                "format": 1, "rank": rank, "world_size": world, "step": step,
                "names": list(self.names), "global_shapes": list(shapes),
                "offsets": list(offsets), "last_update": self.last_update,
                "theta0": [t.detach().cpu() for t in self._theta0],
                "ema": [t.detach().cpu() for t in self._ema],
                "bema": [t.detach().cpu() for t in self._bema],
            }  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / _shard_name(rank, world)
            partial = path.with_name(path.name + ".partial")
            torch.save(shard, partial)
            os.replace(partial, path)  # a process killed while writing leaves no half file
            self._written = key
        return {
            "holds": True,
            "sharded": True,
            "names": list(self.names),
            "shards": str(folder),
            "world_size": world,
            "step": step,
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
        if state.get("sharded"):
            theta0, ema, bema = _read_shards(state, self._params)
        elif self._sharded:
            # A replicated checkpoint (DDP, one process) resumed sharded: this rank's regions.
            theta0, ema, bema = (
                [_cut(t, p) for t, p in zip(state[kind], self._params, strict=True)]
                for kind in ("theta0", "ema", "bema")
            )
        else:
            theta0, ema, bema = state["theta0"], state["ema"], state["bema"]
        self._theta0 = [t.to(self.device).contiguous() for t in theta0]
        self._ema = [t.to(self.device).contiguous() for t in ema]
        self._bema = [self._bema_buffer(t, copy=False) for t in bema]


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
    """Swap the values of a parameter (its local shard) and a buffer of its shape, bit-exactly."""
    if _is_dtensor(param):
        # The shard is a view of FSDP's own storage (what it gathers from): copy, never rebind.
        _exchange_copy(param.to_local(), buffer, chunk)
        return
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
    _exchange_copy(param.data, buffer, chunk)


def _exchange_copy(tensor: Any, buffer: Any, chunk: int) -> None:
    """Swap the values of a contiguous tensor and a buffer in place, a chunk at a time."""
    live, saved = tensor.view(-1), buffer.view(-1)
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


def _refuse_unsupported(model: Any) -> None:
    """Refuse FSDP1 (flat parameters) and DeepSpeed ZeRO-3 (partitioned parameters).

    FSDP2's ``DTensor`` parameters are averaged shard by shard; these two hide the shards
    behind parameters that are not what the model's names say (FSDP1's ``FlatParameter``,
    or empty placeholders under ``use_orig_params``; ZeRO-3's empty ``ds`` tensors).
    """
    for module in model.modules():
        if type(module).__name__ == "FullyShardedDataParallel":
            raise ShardedParametersError(
                "bema: the model is wrapped by FSDP1 (FullyShardedDataParallel, flat "
                f"parameters); {_ALTERNATIVES}"
            )
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        kind = None
        if type(param).__name__ == "FlatParameter" or getattr(param, "_is_flat_param", False):
            kind = "FSDP1 (flat parameters)"
        elif hasattr(param, "ds_id") or hasattr(param, "ds_numel"):
            kind = "DeepSpeed ZeRO-3"
        if kind is not None:
            raise ShardedParametersError(
                f"bema: parameter {name!r} is sharded by {kind}; {_ALTERNATIVES}"
            )


_ALTERNATIVES = (
    "this process holds only a flat shard that the parameter names do not describe, so an "
    "average here would silently cover part of the model. Use FSDP2 "
    "(torch.distributed.fsdp.fully_shard; Lightning's ModelParallelStrategy; Accelerate's "
    "fsdp_version 2), which bema averages shard by shard, or DDP or DeepSpeed ZeRO stage 1-2 "
    "(replicated parameters)."
)


def _in_threads(parts: Sequence[list[_Chunk]], work: Callable[[list[_Chunk]], None]) -> None:
    """``work(part)`` for every part, the first on this thread, the others on threads of their own.

    Torch releases the GIL inside its operations, so the threads compute side by side. The
    first error raised on any of them is raised here, once all have ended.
    """
    if len(parts) <= 1:
        for part in parts:
            work(part)
        return
    errors: list[BaseException] = []

    def guarded(part: list[_Chunk]) -> None:
        try:
            work(part)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread below
            errors.append(exc)

    helpers = [
        threading.Thread(target=guarded, args=(part,), name="callbridge-bema-update")
        for part in parts[1:]
    ]
    for thread in helpers:
        thread.start()
    guarded(parts[0])
    for thread in helpers:
        thread.join()
    if errors:
        raise errors[0]


def _plan(sizes: Sequence[int], chunk: int, threads: int) -> list[list[_Chunk]]:
    """The chunks of tensors of ``sizes`` elements, split over ``threads`` in contiguous runs
    of about equal elements (fewer parts when there are fewer chunks)."""
    chunks = [
        (i, start, min(start + chunk, size))
        for i, size in enumerate(sizes)
        for start in range(0, size, chunk)
    ]
    total = sum(sizes)
    parts: list[list[_Chunk]] = [[] for _ in range(max(1, min(threads, len(chunks))))]
    done = 0
    for item in chunks:
        parts[min(len(parts) - 1, done * len(parts) // max(total, 1))].append(item)
        done += item[2] - item[1]
    return [part for part in parts if part] or [[]]


def _is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (FSDP2, tensor parallelism): a shard per rank."""
    return type(tensor).__name__ == "DTensor" or (
        hasattr(tensor, "to_local") and hasattr(tensor, "placements")
    )


def _local(param: Any) -> Any:
    """The tensor this process holds of ``param``: its local shard, or itself (a view: writes
    to it are writes to the parameter)."""
    return param.to_local() if _is_dtensor(param) else param


def _region(param: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The full shape of ``param`` and where this process's local shard starts in it."""
    shape = tuple(int(n) for n in param.shape)
    if not _is_dtensor(param):
        return shape, (0,) * len(shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(
        param.shape, param.device_mesh, param.placements
    )
    return shape, tuple(int(o) for o in offset)


def _cut(full: Any, param: Any) -> Any:
    """This process's region of ``full`` (a tensor of ``param``'s full shape), a fresh copy."""
    _, offset = _region(param)
    local = _local(param)
    index = tuple(slice(o, o + n) for o, n in zip(offset, local.shape, strict=True))
    return full[index].clone(memory_format=_contiguous())


def _contiguous() -> Any:
    import torch

    return torch.contiguous_format


def _rank_and_world() -> tuple[int, int]:
    if not _distributed():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def _is_rank_zero() -> bool:
    return _rank_and_world()[0] == 0


def _agreed_token() -> str:
    """A short random id, the same on every rank (rank 0's): it names this fit's shard folders,
    so that a later run in the same output directory never takes them for its own."""
    token = secrets.token_hex(4)
    if not _distributed():
        return token
    import torch.distributed as dist

    box: list[Any] = [token]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def _gathered_state(model: Any) -> dict[str, Any]:
    """The model's full state dict on rank 0 (CPU tensors), empty on the others; a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_model_state_dict(model, options=options))


def _shard_name(rank: int, world: int) -> str:
    return f"rank{rank}-of-{world}.pt"


def _read_shards(state: dict[str, Any], params: Sequence[Any]) -> tuple[list[Any], ...]:
    """theta_0, EMA and BEMA weights of this process's regions, from a sharded checkpoint.

    With the checkpoint's number of ranks and the same regions, this rank's file is read;
    otherwise every rank's file, each parameter reassembled and this process's region cut.

    Raises:
        CallbridgeError: a shard file is missing or belongs to another checkpoint.
    """
    import torch

    folder = Path(state["shards"])
    saved_world = int(state["world_size"])
    rank, world = _rank_and_world()
    regions = [_region(p) for p in params]
    locals_ = [tuple(int(n) for n in _local(p).shape) for p in params]

    def read(r: int) -> dict[str, Any]:
        path = folder / _shard_name(r, saved_world)
        if not path.is_file():
            raise CallbridgeError(
                f"bema: {path}: missing. The checkpoint's averages were saved as {saved_world} "
                f"shards (one file per rank in {folder}) and this run has {world} process(es); "
                "resuming needs every shard file of that folder: copy the folder with the "
                "checkpoint, or resume without the bema state"
            )
        shard: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if shard.get("step") != state.get("step") or shard.get("last_update") != state.get(
            "last_update"
        ):
            raise CallbridgeError(
                f"bema: {path}: holds step {shard.get('step')} (last update "
                f"{shard.get('last_update')}), the checkpoint step {state.get('step')} (last "
                f"update {state.get('last_update')}): the shard files were overwritten; resume "
                "from a checkpoint whose bema-shards folder is intact"
            )
        return shard

    kinds = ("theta0", "ema", "bema")
    if world == saved_world and rank < saved_world:
        own = read(rank)
        same = [
            (tuple(s), tuple(o)) for s, o in zip(own["global_shapes"], own["offsets"], strict=True)
        ] == regions and [tuple(t.shape) for t in own["bema"]] == locals_
        if same:
            return tuple([t.clone() for t in own[kind]] for kind in kinds)
    shards = [read(r) for r in range(saved_world)]
    out: tuple[list[Any], ...] = ([], [], [])
    for i, param in enumerate(params):
        shape = tuple(shards[0]["global_shapes"][i])
        for kind, dest in zip(kinds, out, strict=True):
            full = torch.empty(shape, dtype=shards[0][kind][i].dtype)
            covered = 0
            for shard in shards:
                piece = shard[kind][i]
                index = tuple(
                    slice(o, o + n) for o, n in zip(shard["offsets"][i], piece.shape, strict=True)
                )
                full[index] = piece
                covered += piece.numel()
            if covered < full.numel():
                raise CallbridgeError(
                    f"bema: {folder}: the {saved_world} shards of {state['names'][i]!r} cover "
                    f"{covered} of its {full.numel()} elements; they cannot be reassembled for "
                    f"{world} process(es)"
                )
            dest.append(_cut(full, param))
    return out
