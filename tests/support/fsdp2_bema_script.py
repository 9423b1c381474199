"""A plain FSDP2 training loop (``torch.distributed.fsdp.fully_shard``) calling neutral callbacks.

``python fsdp2_bema_script.py --out DIR --config JSON --steps N [--world 2] ...``

Without ``--rank`` this process is the launcher: it starts ``--world`` ranks (this script
again, gloo on 127.0.0.1) and exits 0 when they all did, or, with ``--kill-at``, when they
all died by SIGKILL there. Each rank builds :class:`Net` (odd sizes, so that shards are
uneven; a frozen layer; a buffer), shards every layer and the root, and trains
with SGD on data seeded by step and rank, calling the configured callbacks' hooks itself
in the order the adapters do (step begin, optimizer step, step end, evaluation, save).

Evaluation runs every ``--eval-every`` steps on the same batch on every rank, with the
model in eval mode; the metric ``eval_loss`` goes to the callbacks' ``on_evaluate``.
A checkpoint every ``--ckpt-every`` steps writes the model (``torch.distributed.checkpoint``,
sharded) and each rank's callback states (``callbacks-rank<R>.pt``) to ``DIR/ckpt/step<N>``;
``--resume`` loads one back. ``--kill-at N`` SIGKILLs every rank after step N.

Rank 0 writes ``DIR/result.pt``: the final step, the evaluations' metrics, per rank the
bytes ``bema`` keeps, the trainable bytes of the full model, and the full live state dict.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

# tests/ on the path when run by file name, as the test suites see it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

IN_FEATURES = 6


class Net(torch.nn.Module):
    """frozen Linear(6, 33) -> tanh -> Linear(33, 257) -> LayerNorm -> + shift -> tanh ->
    Linear(257, 3); ``shift`` a buffer.

    LayerNorm, not BatchNorm: running statistics differ per rank under FSDP (each sees its
    own batches), and this loop's own checkpoint keeps one copy of a plain buffer.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.frozen = torch.nn.Linear(IN_FEATURES, 33)
        self.frozen.requires_grad_(False)
        self.hidden = torch.nn.Linear(33, 257)
        self.norm = torch.nn.LayerNorm(257)
        self.register_buffer("shift", torch.linspace(-0.5, 0.5, 257))
        self.out = torch.nn.Linear(257, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.frozen(x))
        out: torch.Tensor = self.out(torch.tanh(self.norm(self.hidden(h)) + self.shift))
        return out


def batch(step: int, rank: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of ``rank`` at ``step``: the same whatever ran before (resumable)."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(size, IN_FEATURES, generator=g)
    return x, torch.stack([x.sum(1), x[:, 0] - x[:, 1], x.prod(1)], dim=1)


def eval_loss(model: torch.nn.Module) -> float:
    """Loss on a fixed batch, the same on every rank, the model in eval mode."""
    x, y = batch(0, 999, size=32)
    model.eval()
    try:
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(model(x), y))
    finally:
        model.train()


def shard(model: torch.nn.Module, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for layer in (model.frozen, model.hidden, model.norm, model.out):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def call(callbacks: list[Any], hook: str, *args: Any) -> None:
    for callback in callbacks:
        getattr(callback, hook)(*args)


def save(model: torch.nn.Module, callbacks: list[Any], run: Any, folder: Path) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    call(callbacks, "on_save", run)
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(folder / "model"))
    states = [cb.state_dict() for cb in callbacks]
    torch.save(states, folder / f"callbacks-rank{dist.get_rank()}.pt")
    dist.barrier()  # the checkpoint is whole once every rank wrote its part


def load(model: torch.nn.Module, callbacks: list[Any], folder: Path) -> int:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(folder / "model"))
    set_model_state_dict(model, state["model"])
    own = folder / f"callbacks-rank{dist.get_rank()}.pt"
    # Another world size: rank 0's states, as the HF adapter does.
    path = own if own.is_file() else folder / "callbacks-rank0.pt"
    for callback, saved in zip(callbacks, torch.load(path, weights_only=False), strict=True):
        callback.load_state_dict(saved)
    return int(folder.name.removeprefix("step"))


def train(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    import callbridge

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank, world_size=args.world
    )
    torch.set_num_threads(1)
    out = Path(args.out)
    model = Net()
    trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters()
                          if p.requires_grad)  # fmt: skip
    shard(model, args.world)
    callbacks = callbridge.build(json.loads(args.config))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    start = load(model, callbacks, Path(args.resume)) if args.resume else 0
    state = callbridge.TrainState(
        global_step=start, max_steps=args.steps, is_main_process=args.rank == 0,
        rank=args.rank, world_size=args.world, resumed_from=start or None,
    )  # fmt: skip
    run = callbridge.Run("fsdp2-loop", state, model=model, output_dir=out)
    metrics: list[tuple[int, dict[str, float]]] = []
    call(callbacks, "on_train_begin", run)
    for step in range(start + 1, args.steps + 1):
        call(callbacks, "on_step_begin", run)
        x, y = batch(step, args.rank)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        state.global_step = step
        call(callbacks, "on_step_end", run)
        if args.eval_every and step % args.eval_every == 0:
            call(callbacks, "on_evaluate_begin", run)
            seen = {"eval_loss": eval_loss(model)}
            metrics.append((step, seen))
            call(callbacks, "on_evaluate", run, seen)
        if args.ckpt_every and step % args.ckpt_every == 0:
            save(model, callbacks, run, out / "ckpt" / f"step{step}")
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    call(callbacks, "on_train_end", run)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    live = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))  # fmt: skip
    bema = next(cb for cb in callbacks if type(cb).__name__ == "BEMACallback")
    resident = [0] * args.world
    dist.all_gather_object(resident, bema.resident_bytes())
    if args.rank == 0:
        torch.save(
            {"global_step": state.global_step, "metrics": metrics, "resident": resident,
             "trainable_bytes": trainable_bytes, "world_size": args.world,
             "live": dict(live)},
            out / "result.pt",
        )  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    from support.hf_models import free_port

    port = str(free_port())
    procs = [
        subprocess.Popen([sys.executable, __file__, *argv, "--rank", str(r), "--port", port])
        for r in range(args.world)
    ]
    codes = [proc.wait() for proc in procs]
    if args.kill_at is not None and all(code == -signal.SIGKILL for code in codes):
        print(f"every rank was killed after step {args.kill_at}, as asked")
        return 0
    if any(codes):
        print(f"ranks exited with {codes}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", required=True, help="output_dir of the run")
    parser.add_argument("--config", required=True, help="the callbacks configuration (JSON)")
    parser.add_argument("--steps", type=int, required=True, help="train up to this step")
    parser.add_argument("--world", type=int, default=2, help="processes")
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--ckpt-every", type=int, default=0)
    parser.add_argument("--resume", default=None, help="a checkpoint folder to resume from")
    parser.add_argument("--kill-at", type=int, default=None, help="SIGKILL every rank here")
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank is None:
        return launch(args, argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
