"""BEMA update: callbridge's ``bema`` against TRL's ``BEMACallback`` and the memory-bandwidth floor.

On ~50M fp32 parameters on the CPU, side by side and interleaved in one run:

* ``ours``: ``callbridge.callbacks.bema.BEMACallback.update`` (chunked, in place);
* ``async``: the same with ``stage="async"``, timed on the training thread only (the
  copy of the weights; the arithmetic runs in a worker thread, joined outside the clock
  before the next contender runs): what an update costs the training step;
* ``trl``: ``trl.BEMACallback._update_bema_weights``, its buffers and running model set
  up as its ``on_train_begin`` does (a deep copy stands in for ``type(model)(model.config)``,
  which a plain module cannot do);
* ``copy``: ``copy_`` of every parameter into preallocated buffers, the same bytes once:
  no update can be cheaper than reading the weights and writing a buffer.

Three models of about the same size, because TRL's cost depends on the size of one parameter:
its three full-size temporaries per parameter are reused from glibc's heap while a
parameter is small (12 x ``Linear(2048, 2048)``, 16 MB each), but above glibc's mmap
threshold (at most 32 MB) each is a fresh mapping that page-faults in on every update,
as for the matrices of a 7B language model (3 x ``Linear(4096, 4096)``, 67 MB each); and
``gpt2``, the realistic mix of a 45M-parameter GPT-2 (6 layers of 512, a 50257-token
embedding tied to the head: one 103 MB matrix, 2-4 MB matrices and many 2 KB vectors), built
from a config (nothing downloaded). Times are taken with 1 thread and with torch's default
number, beside ``--busy`` processes that spin a core each (0, 1 and 2 by default: on this
2-core machine, 2 is the busy GPU node whose dataloader workers share the CPU with the BEMA
buffers), and the ratio to TRL printed for each: it must stay at or below 1.0.

Then the peak extra memory of each (setup plus updates), each in a fresh Python: the
rise of ``VmHWM`` (peak resident set) over the resident set once the model exists and TRL
is imported (its lazy import is not the update's memory), read from ``/proc/self/status``
(torch's CPU allocator is invisible to tracemalloc). The BEMA weights of ours and TRL's
after the same updates on the same moving weights are compared bit for bit.

Finally the sharded case (``--world 2``): the same model sharded by FSDP2 (``fully_shard``
per layer, gloo on 127.0.0.1) over ``--world`` processes, each timing its ``bema`` update
and reporting the bytes it keeps, against the unsharded update of the same model in one
process; every process with 1 intra-op thread, as ``torchrun`` sets it.

Run: ``nox -s bench -- benchmarks/bema.py`` or ``python benchmarks/bema.py`` with the
HF adapter's ``trl`` extra installed. Linux only (``/proc``). About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import callbridge
from callbridge.callbacks.bema import BEMACallback

VARIANTS = ("ours", "async", "trl", "copy")
Update = tuple[Callable[[int], None], Callable[[], None]]  # (update at a step, wait for it)


GPT2 = 0  # the ``dim`` that stands for the GPT-2 mix


def make_model(dim: int, layers: int, seed: int = 0) -> torch.nn.Module:
    """``layers`` x ``nn.Linear(dim, dim)``, or the 45M GPT-2 for ``dim == GPT2``."""
    torch.manual_seed(seed)
    if dim == GPT2:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(n_embd=512, n_layer=6, n_head=8, vocab_size=50257)
        return GPT2LMHeadModel(config)
    return torch.nn.Sequential(*(torch.nn.Linear(dim, dim) for _ in range(layers)))


def layers_for(dim: int, params: float) -> int:
    if dim == GPT2:
        return 6
    return max(1, round(params / (dim * dim + dim)))


def parse_dim(text: str) -> int:
    return GPT2 if text == "gpt2" else int(text)


def describe(dim: int, layers: int) -> str:
    if dim == GPT2:
        return "GPT-2 (6 x 512, vocabulary 50257, tied head)"
    return f"{layers} x Linear({dim}, {dim})"


def trainable_elements(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- busy processes ------------------------------------------------------------------------------


class Busy:
    """``count`` processes that each spin a core in pure Python (a dataloader worker's load)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Busy:
        self._procs = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)
        ]
        time.sleep(0.2 if self.count else 0)  # let them reach the spin
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


# -- the three contenders ------------------------------------------------------------------------


def setup_ours(model: torch.nn.Module, chunk: int | None, stage: str = "sync") -> BEMACallback:
    args: dict[str, Any] = {"chunk_elements": chunk} if chunk else {}
    callback = BEMACallback(update_freq=1, stage=stage, **args)  # type: ignore[arg-type]
    callback.on_train_begin(callbridge.Run("bench", model=model))
    return callback


def setup_trl(model: torch.nn.Module) -> Any:
    import trl

    theirs = trl.BEMACallback(update_freq=1)
    # What its on_train_begin does, with a deep copy for `type(model)(model.config)`;
    # buffers on theirs.device ("cpu"), as there.
    with torch.no_grad():
        theirs.running_model = copy.deepcopy(model).to(theirs.device)
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            theirs.param_names.append(name)
            theirs.thetat_params.append(param)
            theta0 = param.detach().clone().to(theirs.device)
            theirs.theta0_params.append(theta0)
            theirs.ema_params.append(theta0.clone())
    return theirs


def trl_update(theirs: Any) -> Callable[[int], None]:
    def update(step: int) -> None:
        with torch.no_grad():  # TRL's on_step_end is decorated so
            theirs._update_bema_weights(step)

    return update


def setup_copy(model: torch.nn.Module) -> Callable[[int], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = [torch.zeros_like(p) for p in params]  # pages touched now, not in the timed copy

    def update(step: int) -> None:
        with torch.no_grad():
            for buffer, param in zip(buffers, params, strict=True):
                buffer.copy_(param)

    return update


def setup(variant: str, model: torch.nn.Module, chunk: int | None) -> Update:
    if variant in ("ours", "async"):
        callback = setup_ours(model, chunk, stage="async" if variant == "async" else "sync")
        return callback.update, callback.join
    if variant == "trl":
        return trl_update(setup_trl(model)), lambda: None
    if variant == "copy":
        return setup_copy(model), lambda: None
    raise ValueError(variant)


# -- time ----------------------------------------------------------------------------------------


def timed(fns: dict[str, Update], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, in alternation so that drift hits them alike.

    What runs in the background after a call is waited for outside the clock, so that it
    does not share the CPU with the next contender.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn, settle in fns.values():
        fn(10)  # warm-up: first-touch page faults, allocator caches
        settle()
    for i in range(repeats):
        for name, (fn, settle) in fns.items():
            start = time.perf_counter()
            fn(11 + i)
            samples[name].append(time.perf_counter() - start)
            settle()
    return samples


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    p10 = ordered[int(0.1 * (len(ordered) - 1))]
    p90 = ordered[round(0.9 * (len(ordered) - 1))]
    return f"{statistics.median(values) * 1e3:7.1f} ms (p10-p90 {p10 * 1e3:6.1f}-{p90 * 1e3:6.1f})"


def time_shape(
    dim: int, layers: int, chunk: int | None, repeats: int, busy_counts: list[int]
) -> list[tuple[int, int, float]]:
    """Time every contender beside each number of busy processes; (busy, threads, ours/trl)."""
    model = make_model(dim, layers)
    size_mb = trainable_elements(model) * 4 / 1e6
    fns = {variant: setup(variant, model, chunk) for variant in VARIANTS}
    default_threads = torch.get_num_threads()
    ratios = []
    for busy in busy_counts:
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            with Busy(busy):
                samples = timed(fns, repeats)
            median = {name: statistics.median(values) for name, values in samples.items()}
            best = {name: min(values) for name, values in samples.items()}
            print(f"  {busy} busy process(es), {threads} thread(s), median of {repeats} "
                  "interleaved:")  # fmt: skip
            for name, values in samples.items():
                rate = size_mb / 1e3 / median[name]
                print(f"    {name:5s} {spread(values)}  {rate:5.1f} GB/s of weights")
            for a, b, aim in (("ours", "trl", " (aim <= 1.0, idle or busy)"),
                              ("ours", "copy", ""), ("trl", "copy", ""),
                              ("async", "ours", " (time on the training thread)")):  # fmt: skip
                print(f"    {a:5s}/{b:4s} = {median[a] / median[b]:5.2f}x median, "
                      f"{best[a] / best[b]:5.2f}x best{aim}")  # fmt: skip
            ratios.append((busy, threads, median["ours"] / median["trl"]))
    torch.set_num_threads(default_threads)
    return ratios


# -- memory ----------------------------------------------------------------------------------------


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(variant: str, dim: int, layers: int, chunk: int | None, updates: int) -> int:
    """In this (fresh) process: the peak resident set above the model's, in KiB."""
    model = make_model(dim, layers)
    if variant == "trl":
        import trl

        _ = trl.BEMACallback  # TRL imports lazily: its import is not the update's memory
    base = status_kib("VmRSS")
    # Reset VmHWM to the current resident set (Linux >= 4.0), so that the peak is the variant's.
    Path("/proc/self/clear_refs").write_text("5")
    update, settle = setup(variant, model, chunk)
    for step in range(1, updates + 1):
        update(step)
    settle()
    return status_kib("VmHWM") - base


def memory_in_subprocess(
    variant: str, dim: int, layers: int, chunk: int | None, updates: int
) -> int:
    command = [
        sys.executable, __file__, "--memory-child", variant, "--dims", str(dim),
        "--layers", str(layers), "--updates", str(updates),
        *(["--chunk", str(chunk)] if chunk else []),
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return int(json.loads(out.strip().splitlines()[-1]))


def memory_shape(dim: int, layers: int, chunk: int | None, updates: int) -> None:
    size_mib = trainable_elements(make_model(dim, layers)) * 4 / 2**20
    extra = {v: memory_in_subprocess(v, dim, layers, chunk, updates) / 1024 for v in VARIANTS}
    for variant, mib in extra.items():
        print(f"    {variant:5s} {mib:7.0f} MiB  {mib / size_mib:4.2f} x the model")
    print(f"    ours - trl = {extra['ours'] - extra['trl']:+.0f} MiB")
    # Both keep three model-sized buffers (theta_0, EMA, BEMA weights: TRL's running model
    # is its third); what an update adds above them is the temporaries.
    above = {v: extra[v] - 3 * size_mib for v in ("ours", "trl")}
    print(
        f"    above the 3 buffers: ours {above['ours']:.0f} MiB, trl {above['trl']:.0f} MiB "
        f"(ours/trl = {above['ours'] / above['trl']:.3f}x)"
        if above["trl"] > 0
        else f"    above the 3 buffers: ours {above['ours']:.0f} MiB, trl {above['trl']:.0f} MiB"
    )


# -- exactness -----------------------------------------------------------------------------------


def exactness(dim: int, layers: int, chunk: int | None, steps: int) -> float:
    """Max |ours - TRL| of the BEMA weights after ``steps`` updates on moving weights (sync and
    async both)."""
    model = make_model(dim, layers, seed=1)
    ours = setup_ours(model, chunk)
    staged = setup_ours(model, chunk, stage="async")
    theirs = setup_trl(model)
    generator = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=generator), alpha=1e-3)
        ours.update(step)
        staged.update(step)
        trl_update(theirs)(step)
    trl_weights = dict(theirs.running_model.named_parameters())
    return max(
        float((value - trl_weights[name].detach()).abs().max())
        for callback in (ours, staged)
        for name, value in callback.bema_state_dict().items()
    )


# -- sharded (FSDP2) ------------------------------------------------------------------------------


def shard(model: torch.nn.Module, world: int) -> None:
    """``fully_shard`` every block (GPT-2) or layer, then the root, over ``world`` ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    blocks = getattr(getattr(model, "transformer", None), "h", None) or list(model.children())
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def sharded_child(
    dim: int, layers: int, chunk: int | None, repeats: int, rank: int, world: int, port: int
) -> dict[str, Any]:
    """In this process, rank ``rank`` of ``world`` (1: the unsharded model): its update's
    median time and the bytes its averages take."""
    import torch.distributed as dist

    torch.set_num_threads(1)  # what torchrun sets: one intra-op thread per rank
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model = make_model(dim, layers)
        model_bytes = trainable_elements(model) * 4
        if world > 1:
            shard(model, world)
        args: dict[str, Any] = {"chunk_elements": chunk} if chunk else {}
        callback = BEMACallback(update_freq=1, stage="sync", **args)
        state = callbridge.TrainState(rank=rank, world_size=world, is_main_process=rank == 0)
        callback.on_train_begin(callbridge.Run("bench", state, model=model))
        callback.update(10)  # warm-up
        samples = []
        for i in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            callback.update(11 + i)
            samples.append(time.perf_counter() - start)
        return {
            "rank": rank,
            "median": statistics.median(samples),
            "resident": callback.resident_bytes(),
            "model_bytes": model_bytes,
        }
    finally:
        dist.destroy_process_group()


def sharded_runs(
    dim: int, layers: int, chunk: int | None, repeats: int, world: int
) -> list[dict[str, Any]]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--sharded-child",
                f"{rank},{world},{port}",
                "--dims",
                str(dim),
                "--layers",
                str(layers),
                "--repeats",
                str(repeats),
                *(["--chunk", str(chunk)] if chunk else []),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for rank in range(world)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a sharded rank exited with {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def sharded_case(dim: int, layers: int, chunk: int | None, repeats: int, world: int) -> None:
    (whole,) = sharded_runs(dim, layers, chunk, repeats, 1)
    ranks = sharded_runs(dim, layers, chunk, repeats, world)
    mib = 2**20
    print(f"  unsharded, 1 process:  {whole['median'] * 1e3:7.1f} ms per update, "
          f"{whole['resident'] / mib:6.1f} MiB of averages "
          f"({whole['resident'] / whole['model_bytes']:.2f}x the trainable bytes)")  # fmt: skip
    for r in ranks:
        print(f"  FSDP2 rank {r['rank']} of {world}: {r['median'] * 1e3:7.1f} ms per update "
              f"({r['median'] / whole['median']:.2f}x unsharded), "
              f"{r['resident'] / mib:6.1f} MiB "
              f"({r['resident'] / r['model_bytes']:.2f}x the trainable bytes, "
              f"{r['resident'] / whole['resident']:.2f}x unsharded; 1/{world} = "
              f"{1 / world:.2f})")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=50e6, help="parameters per model")
    parser.add_argument(
        "--dims", default="2048,4096,gpt2",
        help="Linear(dim, dim) shapes, or gpt2 (the GPT-2 mix), comma-separated",
    )  # fmt: skip
    parser.add_argument("--busy", default="0,1,2", help="busy processes beside the update")
    parser.add_argument(
        "--world", type=int, default=2, help="ranks of the sharded case (0: skip it)"
    )
    parser.add_argument("--layers", type=int, default=None, help="layers (default: --params worth)")
    parser.add_argument("--repeats", type=int, default=7, help="timed updates per contender")
    parser.add_argument("--updates", type=int, default=2, help="updates in each memory run")
    parser.add_argument(
        "--chunk", type=int, default=None, help="our chunk_elements (default: the callback's)"
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sharded-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dims = [parse_dim(d) for d in args.dims.split(",")]
    busy_counts = [int(b) for b in args.busy.split(",")]

    if args.sharded_child:
        rank, world, port = (int(x) for x in args.sharded_child.split(","))
        layers = args.layers or layers_for(dims[0], args.params)
        print(json.dumps(sharded_child(dims[0], layers, args.chunk, args.repeats, rank, world,
                                       port)))  # fmt: skip
        return

    if args.memory_child:
        layers = args.layers or layers_for(dims[0], args.params)
        print(
            json.dumps(measure_memory(args.memory_child, dims[0], layers, args.chunk, args.updates))
        )
        return

    from callbridge.callbacks.bema import SERIAL_CHUNK, SINGLE_THREAD_CHUNK

    chunk = (f"{args.chunk} elements" if args.chunk else f"{SERIAL_CHUNK} elements, "
             f"{SINGLE_THREAD_CHUNK} where torch has 1 intra-op thread")  # fmt: skip
    cpus, threads = os.cpu_count(), torch.get_num_threads()
    print(f"bema update on the CPU, fp32; our chunk: {chunk}; "
          f"{cpus} CPUs, torch's default {threads} thread(s)")  # fmt: skip
    ratios: list[tuple[str, int, int, float]] = []
    for dim in dims:
        layers = args.layers or layers_for(dim, args.params)
        model = make_model(dim, layers)
        largest = max(p.numel() for p in model.parameters()) * 4 / 1e6
        print(f"\n{describe(dim, layers)}: {trainable_elements(model) / 1e6:.1f}M parameters, "
              f"{largest:.0f} MB in the largest one")  # fmt: skip
        del model
        print("  time per update")
        for busy, threads, ratio in time_shape(dim, layers, args.chunk, args.repeats, busy_counts):
            ratios.append((describe(dim, layers), busy, threads, ratio))
        print(f"  peak extra memory over the model (fresh process each, {args.updates} updates)")
        memory_shape(dim, layers, args.chunk, args.updates)
        diff = exactness(dim, layers, args.chunk, steps=3)
        verdict = "bit-exact" if diff == 0.0 else "NOT bit-exact"
        print(f"  ours (sync and async) vs trl after 3 updates on moving weights: "
              f"max |diff| = {diff} ({verdict})")  # fmt: skip

    print("\nours/trl per busy count (median time; the aim: at or below 1.0 everywhere)")
    for name, busy, threads, ratio in ratios:
        flag = "" if ratio <= 1.0 else "  ABOVE 1.0"
        print(f"  {name:45s} busy {busy}  threads {threads}:  {ratio:5.2f}x{flag}")

    if args.world > 1:
        dim = dims[-1]
        layers = args.layers or layers_for(dim, args.params)
        print(f"\nsharded (FSDP2, gloo, {args.world} processes), {describe(dim, layers)}, "
              f"median of {args.repeats} updates per rank")  # fmt: skip
        sharded_case(dim, layers, args.chunk, args.repeats, args.world)


if __name__ == "__main__":
    main()
