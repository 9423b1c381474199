"""A real HTTP endpoint on 127.0.0.1 (a thread of the test process), scripted per request.

Shared by the monitor suites (core, cross-framework) and the company example's tests:
it stores monitor records by idempotency key, as a real platform would, and keeps
every JSON body it accepted (a Slack-style webhook posts ``{"text": ...}``).
No framework is imported here.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What the server does with one request: "ok", an HTTP status such as "503", "429", "401",
# "400" (answered with no body), "reset" (close the socket without answering), "slow" (answer
# after the client gave up), "hold" (wait for the test to release it), "trickle" (send the
# answer one byte every ``trickle_seconds``, never finishing within any sane deadline).
Action = str


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        owner = self.server.owner
        body = self.rfile.read(int(self.headers["Content-Length"]))
        action = owner.next_action()
        owner.authorizations.append(self.headers.get("Authorization"))
        owner.request_lines.append(self.requestline)
        if owner.judge is not None and action == "ok":
            action = owner.judge(json.loads(body)) or action
        if action == "trickle":
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
            try:
                for byte in answer:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if owner.release.wait(owner.trickle_seconds):
                        break
            except OSError:  # the client hung up, as it should
                pass
            self.close_connection = True
            return
        if action == "reset":
            self.close_connection = True
            return
        if action == "hold":
            owner.first_request.set()
            owner.released = owner.release.wait(10)
        if action == "slow":
            time.sleep(owner.slow_seconds)
        if action.isdigit():
            self.send_response(int(action))
            if action == "429":
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        owner.accept(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output to the test's own lines


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Server


class Server:
    """A monitoring endpoint that stores records by idempotency key (as a real one would).

    Args:
        script: the action for the n-th request (1-based).
        up: start listening now; otherwise the port is bound but refuses connections
            until :meth:`up`.
    """

    def __init__(self, script: Callable[[int], Action] = lambda n: "ok", *, up: bool = True):
        self.script = script
        self.requests = 0
        self.received: Counter[str] = Counter()  # deliveries per key, duplicates included
        self.stored: dict[str, dict[str, Any]] = {}
        self.bodies: list[Any] = []  # every accepted JSON body, in arrival order
        self.authorizations: list[str | None] = []
        self.request_lines: list[str] = []  # "POST /ingest?... HTTP/1.1", as received
        #: Decides per accepted body (the parsed JSON) instead of the script: an action or None.
        self.judge: Callable[[Any], Action | None] | None = None
        self.slow_seconds = 0.0
        self.trickle_seconds = 1.5
        self.first_request = threading.Event()
        self.release = threading.Event()
        self.released = False
        self._lock = threading.Lock()
        # Bound but not listening until `up`: connections are refused, the port is ours.
        self.httpd = _Server(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        self.httpd.owner = self
        self.httpd.server_bind()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ingest"
        self._thread: threading.Thread | None = None
        if up:
            self.up()

    def up(self) -> None:
        self.httpd.server_activate()
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()

    def next_action(self) -> Action:
        with self._lock:
            self.requests += 1
            return self.script(self.requests)

    def accept(self, payload: Any) -> None:
        with self._lock:
            self.bodies.append(payload)
            records = payload.get("records", []) if isinstance(payload, dict) else []
            for record in records:
                key = record["idempotency_key"]
                self.received[key] += 1
                self.stored[key] = record


def serving() -> Iterator[Callable[..., Server]]:
    """The body of a ``serve`` fixture: ``yield from serving()``.

    The test starts servers with ``serve(script, up=...)``; every one is closed after it.
    """
    servers: list[Server] = []

    def start(script: Callable[[int], Action] = lambda n: "ok", *, up: bool = True) -> Server:
        server = Server(script, up=up)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def records_across_a_kill(server: Server, *, batch: int = 50) -> list[dict[str, Any]]:
    """What ``server`` keeps of a monitored run killed and resumed: checked, then returned.

    At least once: a batch the server acknowledged just before the kill, but that the dead
    process could not remove from its outbox, is sent again by the resumed run. Only such
    records of the killed attempt come twice (the server keeps one per key), at most one
    batch of them, and the whole run keeps one run id.
    """
    records = list(server.stored.values())
    again = {key for key, n in server.received.items() if n > 1}
    assert all(server.stored[key]["resume"] == 0 for key in again)
    assert len(again) <= batch  # one batch (upload_interval) at most
    assert len({r["run_id"] for r in records}) == 1  # one run id across the kill
    return records
