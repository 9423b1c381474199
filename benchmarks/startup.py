"""What ``import callbridge`` and building a config add to a Python start, measured side by side.

Three commands run in fresh interpreters, interleaved (a, b, c, a, b, c...) so
that drift in the machine hits them alike, and the medians are compared:

a. ``python -c pass``: the bare interpreter, the floor;
b. ``python -c "import callbridge"``;
c. import, ``callbridge.load`` and ``callbridge.build`` of a 20-entry config of
   built-in callbacks (``log`` and ``early_stopping`` with arguments);
d. ``callbridge check`` of that config, as the console script runs it (what a
   pre-commit hook or a CI job pays).

Then ``python -X importtime`` on (c) names the imports that cost the most beyond
what the bare interpreter imports anyway: the list to trim from. The targets: (b)
within 50 ms of the bare interpreter, (d) within 120 ms wall; the core must not
import torch, transformers or lightning on the way.

``--baseline DIR`` measures a second copy of the core side by side, in the same
interleaved runs (``DIR`` holds the ``callbridge`` package, e.g. an older commit's
``src``: ``git archive OLD src | tar -x -C /tmp/old`` then ``--baseline /tmp/old/src``).

Run: ``nox -s bench -- benchmarks/startup.py`` or ``python benchmarks/startup.py -n 50``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 60.0  # (c) above bare
IMPORT_TARGET_MS = 50.0  # (b) above bare
CHECK_TARGET_MS = 120.0  # (d), wall
CHECK_CODE = "import sys\nfrom callbridge._cli import main\nsys.exit(main())\n"
FRAMEWORKS = ("torch", "transformers", "trl", "lightning", "pytorch_lightning", "numpy")

# (c): what a training script does before its trainer exists. It prints the frameworks
# it imported so that the same code can check the core stays free of them.
BUILD_CODE = """\
import sys
import callbridge
callbacks = callbridge.build(callbridge.load(sys.argv[1]))
assert len(callbacks) == {entries}, len(callbacks)
if len(sys.argv) > 2:
    print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in {frameworks!r})))
"""


def write_config(path: Path, entries: int) -> None:
    """A ``[tool.callbacks]`` table of ``entries`` built-ins, alternating log and early_stopping."""
    lines = ["[tool.callbacks]", "strict = true", "custom_callbacks = ["]
    for i in range(entries):
        if i % 2 == 0:
            lines.append(
                f'  {{ name = "log", args = {{ level = "info", logger_name = "bench.log{i}", '
                f'jsonl = "metrics-{i}.jsonl" }} }},'
            )
        else:
            lines.append(
                '  { name = "early_stopping", args = { '
                f'early_stopping_patience = "${{BENCH_PATIENCE:-{i}}}", '
                f'early_stopping_threshold = 0.0{i}, metric = "eval_loss", mode = "min" }} }},'
            )
    lines.append("]")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# As on a user's machine: bytecode is written once and then read. Some environments
# (this CI image among them) set PYTHONDONTWRITEBYTECODE, which would make every run
# recompile every module from source and measure the compiler instead of the import.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


#: Per case, the CPU milliseconds (user + system) of each run: steadier than wall time
#: on a machine that other work keeps busy, where waiting for a core inflates the wall.
CPU_MS: dict[str, list[float]] = {}


def run_once(cmd: list[str], env: dict[str, str] | None = None, name: str = "") -> float:
    """Wall milliseconds of one fresh interpreter running ``cmd`` (its CPU time to CPU_MS)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # stderr too: a build prints its "callbridge: N callbacks loaded" line there.
    subprocess.run(
        cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env or ENV
    )
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    CPU_MS.setdefault(name, []).append(cpu)
    return wall


def importtimes(cmd: list[str]) -> dict[str, tuple[float, float]]:
    """``-X importtime``: module -> (self ms, cumulative ms) of one run."""
    proc = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]],
        check=True,
        capture_output=True,
        text=True,
        env=ENV,
    )
    times: dict[str, tuple[float, float]] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
        times[name.strip()] = (int(self_us) / 1000, int(cumulative_us) / 1000)
    return times


def median_importtimes(cmd: list[str], runs: int) -> dict[str, tuple[float, float]]:
    """Per module, the median self and cumulative ms over ``runs`` runs."""
    samples = [importtimes(cmd) for _ in range(runs)]
    names = set().union(*samples)
    return {
        name: (
            statistics.median(s[name][0] for s in samples if name in s),
            statistics.median(s[name][1] for s in samples if name in s),
        )
        for name in names
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=30, help="runs per case (default 30)")
    parser.add_argument("--entries", type=int, default=20, help="callbacks in the config")
    parser.add_argument("--top", type=int, default=8, help="import offenders to list")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="a folder holding another copy of the callbridge package, measured side by side",
    )
    parser.add_argument(
        "--fail-over",
        type=float,
        metavar="MS",
        help=f"exit 1 if (c) is more than MS above bare (the target is {TARGET_MS:g})",
    )
    ns = parser.parse_args(argv)
    py = ns.python

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "callbacks.toml"
        write_config(config, ns.entries)
        build_code = BUILD_CODE.format(entries=ns.entries, frameworks=FRAMEWORKS)
        cases = {
            "bare interpreter (-c pass)": [py, "-c", "pass"],
            "import callbridge": [py, "-c", "import callbridge"],
            f"import + load + build ({ns.entries} entries)": [py, "-c", build_code, str(config)],
            f"callbridge check ({ns.entries} entries)": [
                py,
                "-c",
                CHECK_CODE,
                "check",
                str(config),
            ],
        }
        envs = dict.fromkeys(cases, ENV)
        if ns.baseline:
            # The same commands with the other copy first on the path.
            old_env = dict(
                ENV,
                PYTHONPATH=os.pathsep.join(
                    [
                        str(Path(ns.baseline).resolve()),
                        *([ENV["PYTHONPATH"]] if ENV.get("PYTHONPATH") else []),
                    ]
                ),
            )
            for name, cmd in list(cases.items())[1:]:
                cases[f"baseline: {name}"] = cmd
                envs[f"baseline: {name}"] = old_env
        env_note = {k: os.environ[k] for k in ("BENCH_PATIENCE",) if k in os.environ}

        for name, cmd in cases.items():  # warm the file cache and the bytecode caches
            run_once(cmd, envs[name])
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(ns.runs):
            for name, cmd in cases.items():
                samples[name].append(run_once(cmd, envs[name], name))
        medians = {name: statistics.median(values) for name, values in samples.items()}

        build_cmd = list(cases.values())[2]
        bare = median_importtimes([py, "-c", "pass"], runs=5)
        full = median_importtimes(build_cmd, runs=5)
        loaded = subprocess.run(
            [*build_cmd, "--frameworks"], check=True, capture_output=True, text=True
        ).stdout.strip()

    version = subprocess.run(
        [py, "-c", "import sys; print(sys.version.split()[0])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    floor = medians["bare interpreter (-c pass)"]
    print(f"callbridge startup: Python {version}, {ns.runs} interleaved runs per case, medians")
    if env_note:
        print(f"  environment: {env_note}")
    print(
        f"  {'case':<50} {'ms':>8} {'above bare':>11} {'x bare':>7} {'spread (p10-p90)':>18}"
        f" {'cpu ms':>7}"
    )
    for index, (name, value) in enumerate(medians.items()):
        values = sorted(samples[name])
        p10, p90 = values[len(values) // 10], values[max(0, (len(values) * 9) // 10 - 1)]
        above = f"+{value - floor:.1f}" if index else "-"
        spread = f"{p10:.1f}-{p90:.1f}"
        cpu = statistics.median(CPU_MS[name])
        print(f"  {name:<50} {value:8.1f} {above:>11} {value / floor:7.2f} {spread:>18} {cpu:7.1f}")

    delta = list(medians.values())[2] - floor
    import_delta = list(medians.values())[1] - floor
    check_ms = list(medians.values())[3]
    for what, value, target in (
        ("import callbridge within", import_delta, IMPORT_TARGET_MS),
        ("build under", delta, TARGET_MS),
    ):
        verdict = "ok" if value < target else "OVER"
        print(f"  target: {what} {target:g} ms above bare: {verdict} ({value:.1f} ms)")
    verdict = "ok" if check_ms < CHECK_TARGET_MS else "OVER"
    print(
        f"  target: callbridge check ({ns.entries} entries) within {CHECK_TARGET_MS:g} ms: "
        f"{verdict} ({check_ms:.1f} ms)"
    )
    frameworks = loaded.split()
    print(f"  frameworks imported by (c): {', '.join(frameworks) if frameworks else 'none'}")

    extra = {name: t for name, t in full.items() if name not in bare}
    top = sorted(extra.items(), key=lambda item: item[1][1], reverse=True)[: ns.top]
    print()
    print(f"Top {ns.top} cumulative imports of (c) beyond the bare interpreter")
    print("(python -X importtime, median of 5 runs; a package's time includes its children):")
    print(f"  {'cumulative ms':>13} {'self ms':>8}  module")
    for name, (self_ms, cumulative_ms) in top:
        print(f"  {cumulative_ms:13.1f} {self_ms:8.1f}  {name}")
    owners: dict[str, float] = {}
    for name, (self_ms, _) in extra.items():
        owner = name.split(".")[0].lstrip("_")
        owners[owner] = owners.get(owner, 0.0) + self_ms
    by_owner = sorted(owners.items(), key=lambda item: item[1], reverse=True)[: ns.top]
    print("Self time by top-level package (who to trim: callbridge's own modules or a dependency):")
    print("  " + ", ".join(f"{owner} {ms:.1f} ms" for owner, ms in by_owner))

    if ns.fail_over is not None and delta > ns.fail_over:
        print(f"FAIL: {delta:.1f} ms above bare exceeds {ns.fail_over:g} ms", file=sys.stderr)
        return 1
    if frameworks:
        print("FAIL: the core imported a framework at import or build time", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
