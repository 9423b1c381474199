"""The bad-input corpus against a callbridge source tree: clean errors, tracebacks, hangs, losses.

Every file of ``tests/fixtures/bad`` and ``tests/fixtures/malformed``, plus the inputs that
cannot be files in git (a FIFO, a 17 MB file, a 10 MB TOML, a NUL byte in a path), runs in
its own child process under a memory limit and a timeout, through ``load``, ``build``
(strict), ``check`` and ``show``. Each case is then one of:

- **clean**: ``check`` reports a problem, ``build`` raises a ``CallbridgeError``, nothing else
  escapes (a valid input counts clean when all four accept it);
- **traceback**: any step raised something else (``SystemExit`` from ``sys.exit``, a
  ``RecursionError``...), or the process ended without a word (``os._exit``);
- **hang**: the child ran out of time or memory;
- **silent loss**: a bad input that ``check`` passes (callbacks dropped or a non-callback
  accepted without a word).

Secret values from the environment that reach any output are counted as leaks.

Run it on this tree and on an older one (``git worktree add /tmp/before <commit>``)::

    python benchmarks/bad_inputs.py                      # this tree's src/
    python benchmarks/bad_inputs.py --src /tmp/before/src
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SECRETS = {
    "CB_TEST_API_KEY": "sk-live-CORPUS-4f9a1c",
    "CB_TEST_PW": "hunter2-CORPUS-77",
    "CB_TEST_TOKEN": "tok-CORPUS-123456",
    "CB_TEST_SECRET": "sec-CORPUS-9999",
}

CHILD = r"""
import contextlib, io, json, resource, sys
limit = int(sys.argv[3]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
path = json.loads(sys.argv[1])  # JSON: a NUL byte cannot travel in argv
secrets = json.loads(sys.argv[2])
import callbridge
from callbridge._cli import main
result, texts = {}, []
def step(name, fn):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            result[name] = fn()
    except callbridge.CallbridgeError as exc:
        result[name] = "error"
        texts.append(str(exc))
    except BaseException as exc:
        result[name] = "traceback:" + type(exc).__name__
    texts.append(out.getvalue())
step("load", lambda: (callbridge.load(path), "ok")[1])
step("build", lambda: (callbridge.build(path, strict=True), "ok")[1])
step("check", lambda: "problems" if callbridge.check(path) else "ok")
step("show", lambda: "problems" if main(["show", path]) else "ok")
step("show_json", lambda: "problems" if main(["show", "--json", path]) else "ok")
result["leaks"] = sum(text.count(value) for text in texts for value in secrets.values())
print("RESULT " + json.dumps(result))
"""


def cases(tmp: Path) -> list[tuple[str, str, bool]]:
    """(label, path, is_bad) for every case."""
    out = []
    for folder in ("bad", "malformed"):
        base = FIXTURES / folder
        for path in sorted(base.rglob("*")):
            if path.is_file() or path.is_symlink():
                out.append((f"{folder}/{path.relative_to(base).as_posix()}", str(path), True))
    out.append(("malformed/directory.yaml", str(FIXTURES / "malformed" / "directory.yaml"), True))
    fifo = tmp / "pipe.yaml"
    os.mkfifo(fifo)
    out.append(("runtime/fifo pipe.yaml", str(fifo), True))
    huge = tmp / "huge.yaml"
    with huge.open("w", encoding="utf-8") as stream:
        stream.write("custom_callbacks: [log]\nnotes: |\n")
        for _ in range(17 * 1024):
            stream.write("  " + "x" * 1021 + "\n")
    out.append(("runtime/17 MB yaml", str(huge), True))
    big = tmp / "big.toml"
    with big.open("w", encoding="utf-8") as stream:
        stream.write('[tool.callbacks]\ncustom_callbacks = ["log"]\n\n[data]\n')
        for i in range(170_000):
            stream.write(f'k{i} = "{"x" * 48}"\n')
    out.append(("runtime/10 MB toml (valid)", str(big), False))
    out.append(("runtime/NUL in path", "conf\0ig.yaml", True))
    return out


def run_case(src: str, path: str, timeout: float, memory_mb: int) -> dict[str, object]:
    env = dict(os.environ)
    env.update(SECRETS)
    env.pop("CALLBRIDGE_TEST_UNSET_VAR", None)
    env["PYTHONPATH"] = os.pathsep.join([src, str(FIXTURES / "plugins")])
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(path), json.dumps(SECRETS), str(memory_mb)],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
            cwd=tempfile.gettempdir(),
        )
    except subprocess.TimeoutExpired:
        return {"verdict": "hang", "why": f"no answer in {timeout:.0f} s"}
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        died = "MemoryError" in proc.stderr or proc.returncode in (-9, 137)
        why = f"exit status {proc.returncode}, no result"
        return {"verdict": "hang" if died else "traceback", "why": why}
    result = json.loads(line[len("RESULT ") :])
    steps = {k: v for k, v in result.items() if k != "leaks"}
    if any(str(v).startswith("traceback:MemoryError") for v in steps.values()):
        verdict = "hang"
    elif any(str(v).startswith("traceback:") for v in steps.values()):
        verdict = "traceback"
    else:
        verdict = "result"
    return {"verdict": verdict, "steps": steps, "leaks": result["leaks"]}


def judge(outcome: dict[str, object], bad: bool) -> str:
    verdict = str(outcome["verdict"])
    if verdict != "result":
        return verdict
    steps = outcome["steps"]
    assert isinstance(steps, dict)
    if not bad:
        return "clean" if all(v == "ok" for v in steps.values()) else "refused (valid input)"
    if steps["check"] == "ok":
        return "silent loss"
    return "clean" if steps["build"] == "error" else "silent loss"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(ROOT / "src"), help="the src/ folder to measure")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per case")
    parser.add_argument("--memory-mb", type=int, default=2048, help="address-space limit")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="one line per case")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        todo = cases(Path(tmp))
        # The valid 10 MB TOML is read five times (once per step): its parser's own time.
        slow = {"runtime/10 MB toml (valid)": 8.0}
        with ThreadPoolExecutor(ns.jobs) as pool:
            outcomes = list(
                pool.map(
                    lambda c: run_case(
                        ns.src, c[1], ns.timeout * slow.get(c[0], 1.0), ns.memory_mb
                    ),
                    todo,
                )
            )
    verdicts = Counter()
    leaks = 0
    for (label, _, bad), outcome in zip(todo, outcomes, strict=True):
        verdict = judge(outcome, bad)
        verdicts[verdict] += 1
        leaked = int(outcome.get("leaks", 0) or 0)  # type: ignore[call-overload]
        leaks += leaked
        if ns.verbose or verdict != "clean" or leaked:
            detail = outcome.get("steps") or outcome.get("why")
            print(f"  {verdict:<12} {label}  {detail}{f'  LEAKS {leaked}' if leaked else ''}")
    print(
        f"{ns.src}: {len(todo)} cases: {verdicts['clean']} clean, "
        f"{verdicts['traceback']} tracebacks, {verdicts['hang']} hangs, "
        f"{verdicts['silent loss']} silent losses"
        + (
            f", {verdicts['refused (valid input)']} valid inputs refused"
            if verdicts["refused (valid input)"]
            else ""
        )
        + f"; {leaks} secret occurrences in outputs"
    )


if __name__ == "__main__":
    main()
