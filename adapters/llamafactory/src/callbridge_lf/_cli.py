"""``callbridge-lf``: ``llamafactory-cli train`` with the YAML's ``custom_callbacks``.

    callbridge-lf train train.yaml [key=value ...]   train (same overrides as llamafactory-cli)
    callbridge-lf check train.yaml [key=value ...]   validate both readers' keys, without training

Exit status: 0 done, 1 problems in the configuration (each printed with the file, the
key and a fix; nothing was loaded), 2 usage; a distributed run exits with torchrun's status.

As ``llamafactory-cli train``, ``train`` starts one process per device under torchrun when
``FORCE_TORCHRUN`` is set or more than one accelerator is visible (``NPROC_PER_NODE``,
``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` as LLaMA-Factory reads them),
after the configuration was checked once, here.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Sequence

from callbridge import ConfigError

USAGE = """\
usage: callbridge-lf train FILE.yaml [key=value ...]
       callbridge-lf check FILE.yaml [key=value ...]

train   train with LLaMA-Factory (as `llamafactory-cli train`), building the callbacks the
        file declares under custom_callbacks with LLaMA-Factory's argument objects injected
check   report every problem of the file, LLaMA-Factory's keys and callbridge's, without
        training (exit 1 on problems)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in ("train", "check") or not rest:
        print(USAGE, end="", file=sys.stderr)
        return 2
    try:
        if command == "check":
            return _check(rest)
        from ._train import prepare, run_exp

        config = prepare(rest)
        status = _torchrun(rest)
        if status is not None:
            return status
        run_exp(config)
        # A callback that keeps the trainer (one taking ``trainer``) holds it in a reference
        # cycle, and with it the DDP model and its process group: collect it now, while
        # the interpreter runs. Released only at interpreter exit, a gloo process group
        # can abort the worker there ("terminate called without an active exception").
        gc.collect()
    except ConfigError as exc:
        _report(exc)
        return 1
    return 0


def _torchrun(args: list[str]) -> int | None:
    """Relaunch under torchrun where ``llamafactory-cli train`` would; None: train here.

    A torchrun worker (``LOCAL_RANK`` set) always trains in its own process.
    """
    if "LOCAL_RANK" in os.environ:
        return None
    from llamafactory.extras.misc import (
        find_available_port,
        get_device_count,
        is_env_enabled,
        use_kt,
        use_ray,
    )

    devices = get_device_count()
    if not (is_env_enabled("FORCE_TORCHRUN") or (devices > 1 and not use_ray() and not use_kt())):
        return None
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", os.getenv("NNODES", "1"),
        "--node_rank", os.getenv("NODE_RANK", "0"),
        "--nproc_per_node", os.getenv("NPROC_PER_NODE", str(max(devices, 1))),
        "--master_addr", os.getenv("MASTER_ADDR", "127.0.0.1"),
        "--master_port", os.getenv("MASTER_PORT", str(find_available_port())),
        "-m", "callbridge_lf", "train", *args,
    ]  # fmt: skip
    return subprocess.run(command, check=False).returncode


def _check(args: list[str]) -> int:
    from ._config import callback_problems, lf_problems, read

    config = read(args)
    problems = lf_problems(config) + callback_problems(config)
    if problems:
        _report(ConfigError(problems))
        return 1
    print(f"{config.source}: ok ({len(config.callbacks.enabled)} callbacks)")
    return 0


def _report(exc: ConfigError) -> None:
    count = len(exc.problems)
    print(f"callbridge-lf: {count} problem{'s' if count > 1 else ''}, nothing was trained:",
          file=sys.stderr)  # fmt: skip
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
