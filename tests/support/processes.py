"""Running a Python script in a child process, the way the tests need it.

The child leads its own process group, so that on a timeout whatever it started
(DDP ranks, a server thread's process) is killed with it instead of hanging on; a
failure or a hang becomes an ``AssertionError`` carrying the child's output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def run_child(
    command: Sequence[str],
    *,
    cwd: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run ``command``; its result, or fail with its output if it fails or outlives ``timeout``.

    ``timeout`` guards against a hang; it is no check of speed.
    """
    name = " ".join(os.path.basename(str(part)) for part in command[1:]) or str(command[0])
    with subprocess.Popen(
        list(command),
        cwd=cwd,
        env=None if env is None else dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise AssertionError(
                f"{name} ran past {timeout} s (a hang?)\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
            ) from None
    if proc.returncode != 0:
        raise AssertionError(
            f"{name} exited with {proc.returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )
    return subprocess.CompletedProcess(list(command), proc.returncode, stdout, stderr)


def finish_attempt(proc: subprocess.Popen[str], root: Path, attempt: str) -> dict[str, Any]:
    """Wait for a ``preemption_script.py`` attempt; its result, with its output.

    The attempt wrote its output to ``root/<attempt>.log`` and its result to
    ``root/run/result-<attempt>.json``; a failure fails with the output.
    """
    try:
        code = proc.wait(timeout=300)  # a guard against a hang, no check of speed
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    output = (root / f"{attempt}.log").read_text(encoding="utf-8")
    assert code == 0, output
    result: dict[str, Any] = json.loads((root / "run" / f"result-{attempt}.json").read_text())
    result["output"] = output
    return result
