# /// script
# dependencies = ["urllib3"]
# ///
"""Step time with the ``monitor`` against a slow platform, no monitor, and a naive uploader.

A pure-Python training loop (``callbridge.testing.Driver``) does a real per-step
workload (small torch matmuls, a few ms) and logs every ``--log-every`` steps. Three
variants run interleaved, side by side in one process, against one local HTTP server
on 127.0.0.1 that takes ``--server-delay`` s (default 0.5) to answer each request:

* ``none``: no callback;
* ``monitor``: callbridge's ``monitor`` (outbox on the training thread, delivery on its own);
* ``naive``: a callback that POSTs each log with urllib in ``on_log`` and waits for the answer.

Step time is measured from the first step to the last log (the monitor's flush at train
end is reported on its own). Prints medians and ratios against ``none``.

Run: ``nox -s bench -- benchmarks/monitor.py`` or ``python benchmarks/monitor.py`` with
callbridge[monitor] and torch installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

import callbridge
from callbridge.callbacks.monitor import MonitorCallback
from callbridge.testing import Driver


class SlowPlatform:
    """A local ingest endpoint that answers every request after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        owner = self
        self.delay = delay
        self.records = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(owner.delay)
                owner.records += len(json.loads(body).get("records", [None]))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ingest"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> SlowPlatform:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Workload(callbridge.Callback):
    """The training step's compute: ``matmuls`` products of ``size`` x ``size`` matrices."""

    def __init__(self, size: int, matmuls: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(size, size, generator=generator)
        self.b = torch.randn(size, size, generator=generator)
        self.matmuls = matmuls

    def on_step_end(self, run: callbridge.Run) -> None:
        x = self.a
        for _ in range(self.matmuls):
            x = torch.tanh(x @ self.b)


class Clock(callbridge.Callback):
    """First in the list: step 1 starts the clock; train_end, before the others', stops it."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_step_begin(self, run: callbridge.Run) -> None:
        if run.state.global_step == 0:
            self.start = time.perf_counter()

    def on_train_end(self, run: callbridge.Run) -> None:
        self.end = time.perf_counter()


class NaiveUploader(callbridge.Callback):
    """What the monitor replaces: a blocking POST per log, in the training thread."""

    def __init__(self, url: str) -> None:
        self.url = url

    def on_log(self, run: callbridge.Run, logs: dict[str, float]) -> None:
        body = json.dumps({"records": [{"step": run.state.global_step, "metrics": logs}]})
        request = urllib.request.Request(
            self.url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


def one_run(variant: str, url: str, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds per step, and seconds from the last log to the end of the run."""
    clock = Clock()
    extra: list[callbridge.Callback] = []
    if variant == "monitor":
        extra = [MonitorCallback(upload_url=url)]
    elif variant == "naive":
        extra = [NaiveUploader(url)]
    with tempfile.TemporaryDirectory() as tmp:
        driver = Driver(
            [clock, Workload(args.size, args.matmuls), *extra],
            max_steps=args.steps,
            steps_per_epoch=args.steps,
            logging_steps=args.log_every,
            output_dir=Path(tmp),
        )
        driver.run()
        finished = time.perf_counter()
    return (clock.end - clock.start) / args.steps, finished - clock.end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    parser.add_argument("--log-every", type=int, default=20, help="steps between logs")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per variant")
    parser.add_argument("--server-delay", type=float, default=0.5, help="seconds per request")
    parser.add_argument("--size", type=int, default=256, help="matrix size of the workload")
    parser.add_argument("--matmuls", type=int, default=8, help="matmuls per step")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a steady per-step cost; the sender thread competes for the GIL

    variants = ("none", "monitor", "naive")
    per_step: dict[str, list[float]] = {v: [] for v in variants}
    tail: dict[str, list[float]] = {v: [] for v in variants}
    with SlowPlatform(args.server_delay) as platform:
        one_run("monitor", platform.url, args)  # warm-up: imports, first connection, torch
        for _ in range(args.repeats):
            for variant in variants:
                step, end = one_run(variant, platform.url, args)
                per_step[variant].append(step)
                tail[variant].append(end)

    base = statistics.median(per_step["none"])
    print(
        f"{args.steps} steps, a log every {args.log_every}, server {args.server_delay * 1000:.0f}"
        f" ms per request, {args.repeats} interleaved repeats (medians, min-max over runs)"
    )
    print(f"{'variant':<9} {'step ms':>9} {'min-max':>15} {'vs none':>8} {'end s':>7}")
    for variant in variants:
        values = per_step[variant]
        median = statistics.median(values)
        print(
            f"{variant:<9} {median * 1e3:>9.3f} "
            f"{min(values) * 1e3:>6.3f}-{max(values) * 1e3:<8.3f} "
            f"{median / base:>7.3f}x {statistics.median(tail[variant]):>7.2f}"
        )
    print("end s: from the last step to the end of train_end (the monitor flushes there)")


if __name__ == "__main__":
    main()
