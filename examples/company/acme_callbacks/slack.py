"""``SlackNotifier``: training start, progress and completion messages to a Slack webhook."""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from typing import Any, ClassVar
from urllib.parse import urlsplit

import attrs

import callbridge

logger = logging.getLogger("acme.slack")

_STOP = None  # the worker's end-of-queue mark


def _host(url: str) -> str:
    """What a log line may say about the webhook: its host (the path holds the secret)."""
    return urlsplit(url).hostname or "?"


@attrs.define
class SlackNotifier(callbridge.Callback):
    """Post ``{"text": ...}`` to a Slack incoming webhook at train begin, every N steps, at end.

    Messages go out on a daemon thread, one at a time and in order, each with a short
    timeout; a failing webhook is logged (once, then at debug level) and never stops or
    slows training. At train end the notifier waits at most ``flush_timeout`` seconds
    for the messages still queued. Main process only.

    Args:
        webhook_url: the incoming-webhook URL (its path is a secret: masked like a key);
            empty or None turns the notifier off.
        api_key: sent as ``Authorization: Bearer <api_key>`` (for a relay that wants one).
        token: the same, for relays that call it a token (``api_key`` wins).
        notify_on_start: post when training begins.
        notify_on_complete: post when training ends (or fails).
        notify_interval: post every this many optimizer steps (0: never).
        run_name: named in every message (default: the run's output directory name).
        timeout: seconds per request.
        flush_timeout: the longest wait for queued messages at train end.
    """

    rank_zero_only: ClassVar[bool] = True

    webhook_url: str | None = attrs.field(default=None, repr=False)  # its path is a secret
    api_key: str | None = attrs.field(default=None, repr=False)
    token: str | None = attrs.field(default=None, repr=False)
    notify_on_start: bool = True
    notify_on_complete: bool = True
    notify_interval: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    run_name: str | None = None
    timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    flush_timeout: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))

    sent: int = attrs.field(default=0, init=False)
    failed: int = attrs.field(default=0, init=False)
    _last_logs: dict[str, float] = attrs.field(factory=dict, init=False, repr=False)
    _queue: queue.Queue[str | None] | None = attrs.field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False, repr=False)

    # --- hooks -------------------------------------------------------------------------------

    def on_train_begin(self, run: callbridge.Run) -> None:
        self._last_logs = {}
        if not self.webhook_url:
            logger.info("acme slack: no webhook_url; notifications are off")
            return
        self._start()
        if self.notify_on_start:
            steps = f" for {run.state.max_steps} steps" if run.state.max_steps else ""
            self._post(f":rocket: {self._name(run)}: training started ({run.framework}){steps}")

    def on_log(self, run: callbridge.Run, logs: dict[str, float]) -> None:
        self._last_logs.update(logs)

    def on_step_end(self, run: callbridge.Run) -> None:
        step = run.state.global_step
        if self.notify_interval and step > 0 and step % self.notify_interval == 0:
            total = f"/{run.state.max_steps}" if run.state.max_steps else ""
            self._post(f"{self._name(run)}: step {step}{total}{self._metrics()}")

    def on_train_end(self, run: callbridge.Run) -> None:
        if self.notify_on_complete:
            self._post(
                f":white_check_mark: {self._name(run)}: training complete at step "
                f"{run.state.global_step}{self._metrics()}"
            )
        self._finish()

    def on_exception(self, run: callbridge.Run, exc: BaseException) -> None:
        if self.notify_on_complete:
            self._post(
                f":x: {self._name(run)}: training failed at step {run.state.global_step}: "
                f"{type(exc).__name__}"
            )
        self._finish()

    # --- mechanics ---------------------------------------------------------------------------

    def _name(self, run: callbridge.Run) -> str:
        if self.run_name:
            return self.run_name
        return run.output_dir.name if run.output_dir is not None else "training"

    def _metrics(self) -> str:
        shown = [f"{k}={v:.4g}" for k, v in self._last_logs.items() if isinstance(v, float)]
        return f" ({', '.join(shown[:4])})" if shown else ""

    def _start(self) -> None:
        self._queue = queue.Queue()
        self._thread = threading.Thread(
            target=self._serve, args=(self._queue,), name="acme-slack", daemon=True
        )
        self._thread.start()

    def _post(self, text: str) -> None:
        """Queue one message (cheap: the training thread never touches the network)."""
        if self._queue is not None:
            self._queue.put(text)

    def _finish(self) -> None:
        """Send what is queued, waiting at most ``flush_timeout`` s; then stop the worker."""
        box, thread = self._queue, self._thread
        self._queue, self._thread = None, None
        if box is None or thread is None:
            return
        box.put(_STOP)
        thread.join(self.flush_timeout)
        if thread.is_alive():
            logger.warning(
                "acme slack: messages still queued after %.1f s; giving up on them",
                self.flush_timeout,
            )

    def _serve(self, box: queue.Queue[str | None]) -> None:
        while (text := box.get()) is not _STOP:
            self._send(text)

    def _send(self, text: str) -> None:
        assert self.webhook_url is not None
        headers = {"Content-Type": "application/json"}
        secret = self.api_key or self.token
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        request = urllib.request.Request(
            self.webhook_url,
            data=json.dumps({"text": text}).encode(),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts: never raised
            self.failed += 1
            level = logging.WARNING if self.failed == 1 else logging.DEBUG
            reason: Any = getattr(exc, "reason", None) or type(exc).__name__
            logger.log(level, "acme slack: cannot post to %s (%s)", _host(self.webhook_url), reason)
        else:
            self.sent += 1
