"""Delivering an outbox over HTTP: batches, retries with backoff, acknowledgement.

Mechanics of the ``monitor`` callback and of ``callbridge monitor flush``. A record
leaves the outbox only after a 2xx answer. Connection errors, timeouts, 5xx and
429 are retried with exponential backoff and jitter (``Retry-After`` honoured);
any other answer is a refusal: logged once, delivery stops, records stay.
The API key goes in the ``Authorization`` header only, never in a message.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._outbox import Outbox

logger = logging.getLogger("callbridge.monitor")

#: The longest ``Retry-After`` obeyed, so that a confused server cannot park the sender.
MAX_RETRY_AFTER = 600.0

_HINTS = {
    401: "check api_key (sent as 'Authorization: Bearer ...')",
    403: "check api_key and its permissions for this project",
    404: "check upload_url",
    413: "lower upload_interval (records per request)",
}


def safe_url(url: str) -> str:
    """``scheme://host:port/path``: no user info or query, where a credential might hide."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class Delivery:
    """Drains an outbox to ``url``: on a daemon thread (:meth:`start`) or inline (:meth:`run`).

    Args:
        path: the outbox file; the thread opens its own connection to it.
        url: where records are POSTed, ``{"records": [...]}`` per request.
        api_key: sent as ``Authorization: Bearer <api_key>`` if given.
        batch_size: records per request at most.
        timeout: seconds for connecting and for reading the answer.
        max_retries: failed attempts in a row before giving up (None: never).
        backoff: the first delay between attempts; it doubles up to ``max_backoff``.
        max_backoff: the longest delay between attempts.
    """

    def __init__(
        self,
        path: Path,
        url: str,
        api_key: str | None = None,
        *,
        batch_size: int = 50,
        timeout: float = 10.0,
        max_retries: int | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.url = url
        self._api_key = api_key
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.delivered = 0
        self.failed_attempts = 0
        #: Why the server refused records (no secret in it); delivery stopped.
        self.refused: str | None = None
        self.gave_up = False
        self._stop = threading.Event()
        self._wake = threading.Event()  # new records: ends an idle wait
        self._kick = threading.Event()  # flush or stop: ends a backoff wait once
        self._progress = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Delivery({str(self.path)!r}, {safe_url(self.url)!r}, delivered={self.delivered})"

    @property
    def done(self) -> bool:
        """Whether delivery stopped for good (refused, or gave up after ``max_retries``)."""
        return self.refused is not None or self.gave_up

    # --- background use (the callback) -------------------------------------------------------

    def start(self) -> None:
        """Deliver on a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._serve, name="callbridge-monitor", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """New records wait (cheap: called on the training thread)."""
        self._wake.set()

    def flush(self, timeout: float, pending: Callable[[], int]) -> None:
        """Wait up to ``timeout`` s for the outbox to empty, then stop the thread.

        Args:
            timeout: the longest wait.
            pending: a callable returning how many records wait (the caller's connection).
        """
        deadline = time.monotonic() + timeout
        self._kick.set()
        self._wake.set()
        thread = self._thread
        while (
            thread is not None
            and thread.is_alive()
            and pending() > 0
            and time.monotonic() < deadline
        ):
            self._progress.wait(min(0.05, max(deadline - time.monotonic(), 0.0)))
            self._progress.clear()
        self.stop(max(deadline - time.monotonic(), 0.0))

    def stop(self, timeout: float = 0.0) -> None:
        """Stop the thread, waiting up to ``timeout`` s (it is a daemon: exit never waits)."""
        self._stop.set()
        self._kick.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _serve(self) -> None:
        try:
            outbox = Outbox(self.path)
        except Exception:  # a dying thread must say why (logged with traceback); training goes on
            logger.exception("callbridge monitor: cannot open the outbox %s", self.path)
            return
        try:
            self._drain(outbox, until_empty=False, deadline=None)
        except Exception:  # as above: logged, and the records stay in the outbox
            logger.exception("callbridge monitor: delivery stopped; records stay in %s", self.path)
        finally:
            outbox.close()
            self._progress.set()

    # --- inline use (the CLI) ----------------------------------------------------------------

    def run(self, outbox: Outbox, timeout: float) -> None:
        """Deliver on this thread until the outbox is empty, delivery stops, or ``timeout`` s."""
        self._drain(outbox, until_empty=True, deadline=time.monotonic() + timeout)

    # --- the loop ----------------------------------------------------------------------------

    def _drain(self, outbox: Outbox, *, until_empty: bool, deadline: float | None) -> None:
        import urllib3  # the optional extra `monitor`; only a sender needs it

        pool = urllib3.PoolManager(
            retries=False, timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout)
        )
        try:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    return
                self._wake.clear()  # before peeking: a record added after it wakes us
                batch = outbox.peek(self.batch_size)
                if not batch:
                    if until_empty:
                        return
                    self._wake.wait(1.0)
                    continue
                delay = self._attempt(pool, outbox, batch)
                self._progress.set()
                if self.done:
                    return
                if delay:
                    if deadline is not None:
                        delay = min(delay, max(deadline - time.monotonic(), 0.0))
                    self._kick.wait(delay)
                    self._kick.clear()
        finally:
            pool.clear()

    def _attempt(self, pool: Any, outbox: Outbox, batch: list[tuple[str, str]]) -> float:
        """POST one batch; returns the delay before the next attempt (0 after a success)."""
        import urllib3

        body = ('{"records":[' + ",".join(text for _, text in batch) + "]}").encode()
        headers = {"Content-Type": "application/json", "User-Agent": "callbridge-monitor"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        wait: float | None = None
        try:
            response = pool.request(
                "POST", self.url, body=body, headers=headers, retries=False, redirect=False
            )
        except urllib3.exceptions.HTTPError as exc:
            # urllib3's messages name the host and the error, never the request's headers.
            problem = f"{type(exc).__name__}: {exc}"
        else:
            status = response.status
            if 200 <= status < 300:
                outbox.remove([key for key, _ in batch])
                self.delivered += len(batch)
                if self.failed_attempts:
                    logger.info(
                        "callbridge monitor: delivering to %s again after %d failed attempts",
                        safe_url(self.url),
                        self.failed_attempts,
                    )
                self.failed_attempts = 0
                return 0.0
            if status != 429 and status < 500:
                self._refuse(status, response.reason, len(batch))
                return 0.0
            problem = f"HTTP {status} {response.reason or ''}".rstrip()
            wait = retry_after(response.headers.get("Retry-After"))
        self.failed_attempts += 1
        if self.failed_attempts == 1:
            logger.warning(
                "callbridge monitor: cannot deliver to %s (%s); retrying with backoff, "
                "records wait in %s",
                safe_url(self.url),
                problem,
                self.path,
            )
        else:
            logger.debug("callbridge monitor: attempt %d failed: %s", self.failed_attempts, problem)
        if self.max_retries is not None and self.failed_attempts > self.max_retries:
            self.gave_up = True
            logger.warning(
                "callbridge monitor: gave up on %s after %d failed attempts; %d records stay "
                "in %s (deliver them with `callbridge monitor flush %s`)",
                safe_url(self.url),
                self.failed_attempts,
                outbox.count(),
                self.path,
                self.path,
            )
            return 0.0
        if wait is not None:
            return wait
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** (self.failed_attempts - 1))
        return ceiling * (0.5 + random.random() / 2)  # jitter: senders do not retry in step

    def _refuse(self, status: int, reason: str | None, size: int) -> None:
        hint = _HINTS.get(status, "the server does not accept these records")
        self.refused = (
            f"the server at {safe_url(self.url)} refused {size} records with HTTP {status}"
            f"{' ' + reason if reason else ''}: {hint}"
        )
        logger.error(
            "callbridge monitor: %s; delivery stopped, records stay in %s "
            "(deliver them later with `callbridge monitor flush %s`)",
            self.refused,
            self.path,
            self.path,
        )
