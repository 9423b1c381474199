"""Delivering an outbox over HTTP: claims, batches, retries, dead letters, hard deadlines.

Mechanics of the ``monitor`` callback and of ``callbridge monitor flush``. A sender
claims a batch (so that two processes sharing an outbox never send the same record),
POSTs it, and removes it after a 2xx answer. What happens otherwise:

* transient (connection errors, the request's deadline, 408, 429, 5xx): retried with
  exponential backoff and jitter (``Retry-After`` honoured, up to 10 minutes);
* the records are refused (any other 4xx, e.g. 400, 409, 413, 422): the batch is
  split in halves until the refused record is alone, which moves to the dead letters
  (``monitor show`` lists them, ``monitor flush --retry-dead`` sends them again);
  the rest goes on;
* the sender is refused (401, 403, 404, 405, 407, 410, 414, 426, 431: a wrong key or
  URL, no record's fault): logged once, delivery stops, every record stays.

Each request has a hard deadline (``timeout`` s for all of it: connect, send and the
whole answer), enforced by closing the socket, so a server that trickles a byte now
and then cannot hold a sender past it. Secrets: the API key travels in the
``Authorization`` header only; a URL's userinfo becomes a Basic header; urllib3's
log lines are masked while a sender runs.
"""

from __future__ import annotations

import contextlib
import email.utils
import importlib.util
import json
import logging
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._outbox import Outbox, owner_id
from .._secrets import mask_text, mask_url, url_secrets

logger = logging.getLogger("callbridge.monitor")

#: The longest ``Retry-After`` obeyed, so that a confused server cannot park the sender.
MAX_RETRY_AFTER = 600.0
#: What a claim outlives the request's own deadline by (then another sender may take it).
LEASE_MARGIN = 30.0
INSTALL_HINT = "pip install 'callbridge[monitor]'"

_HINTS = {
    401: "check api_key (sent as 'Authorization: Bearer ...')",
    403: "check api_key and its permissions for this project",
    404: "check upload_url",
    405: "check upload_url (the endpoint does not accept POST)",
}
# Answers that blame the sender, not a record: every record would get the same.
SENDER_REFUSALS = frozenset({401, 403, 404, 405, 407, 410, 414, 426, 431})
TRANSIENT = frozenset({408, 429})
# A request target's query in a log line: `"POST /ingest?token=abc HTTP/1.1"`.
_TARGET_QUERY = re.compile(r"(\s/[^\s?]*)\?(\S*)")


def urllib3_missing() -> str | None:
    """A sentence with the install line when urllib3 (the ``monitor`` extra) is absent."""
    try:
        found = importlib.util.find_spec("urllib3") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return f"sending records needs urllib3, the 'monitor' extra: {INSTALL_HINT}"


def safe_url(url: str) -> str:
    """``scheme://host:port/path``: no userinfo or query, where a credential might hide.

    Never raises (a URL that does not parse comes back masked instead).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except (ValueError, TypeError):
        return mask_url(url)
    return f"{parts.scheme}://{host}{port}{parts.path}"


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as an upload URL (None: nothing); never quotes a secret."""
    if not isinstance(url, str):
        return f"expected an http:// or https:// URL (got a {type(url).__name__})"
    shown = mask_url(url)
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return f"expected a URL without spaces or control characters (got {shown!r})"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"expected a valid URL (got {shown!r}: {exc})"
    if parts.scheme not in ("http", "https"):
        return f"expected an http:// or https:// URL (got {shown!r})"
    if not parts.hostname:
        return f"expected a URL with a host, as in https://mon.example.com/ingest (got {shown!r})"
    if port == 0:
        return f"expected a port between 1 and 65535 (got {shown!r})"
    return None


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# --- urllib3's log lines, masked while a sender runs -------------------------------------------

_URLLIB3_LOGGERS = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
)


class _MaskUrllib3(logging.Filter):
    """Rewrites urllib3's records: request targets' queries and known secrets masked."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: Counter[str] = Counter()
        self.users = 0
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's business
            return True
        masked = _TARGET_QUERY.sub(lambda m: f"{m.group(1)}?{'***' if m.group(2) else ''}", message)
        with self.lock:  # senders come and go on other threads
            secrets = list(self.secrets)
        masked = mask_text(masked, secrets, environment=False)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


_FILTER = _MaskUrllib3()


@contextlib.contextmanager
def masked_urllib3_logs(secrets: Iterable[str]) -> Iterator[None]:
    """Mask ``secrets`` and request queries in urllib3's log records for the block's duration.

    A filter on a logger sees only that logger's own records (not its children's), so
    it goes on each urllib3 logger; nested and concurrent uses share it.
    """
    values = [s for s in secrets if s]
    with _FILTER.lock:
        _FILTER.secrets.update(values)
        _FILTER.users += 1
        if _FILTER.users == 1:
            for name in _URLLIB3_LOGGERS:
                logging.getLogger(name).addFilter(_FILTER)
    try:
        yield
    finally:
        with _FILTER.lock:
            _FILTER.secrets.subtract(values)
            _FILTER.secrets = +_FILTER.secrets  # drop the values no sender holds any more
            _FILTER.users -= 1
            if _FILTER.users == 0:
                for name in _URLLIB3_LOGGERS:
                    logging.getLogger(name).removeFilter(_FILTER)


# --- a pool whose sockets can be cut at a deadline ---------------------------------------------


class _Sockets:
    """The live sockets of one sender, so that a deadline can cut them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: list[socket.socket] = []

    def add(self, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            with self.lock:
                self.live = [s for s in self.live if s.fileno() != -1]
                self.live.append(sock)

    def cut(self) -> None:
        """Shut every socket down: a blocked read returns at once (the request fails)."""
        with self.lock:
            live, self.live = self.live, []
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _pool_manager(sockets: _Sockets, timeout: float) -> Any:
    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class Conn(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            sockets.add(sock)
            return sock

    class SConn(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            sockets.add(sock)
            return sock

        def connect(self) -> None:
            super().connect()
            sockets.add(self.sock)  # the TLS socket took over the plain one's descriptor

    class Pool(HTTPConnectionPool):
        ConnectionCls = Conn

    class SPool(HTTPSConnectionPool):
        ConnectionCls = SConn

    manager = urllib3.PoolManager(
        retries=False, timeout=urllib3.Timeout(connect=timeout, read=timeout)
    )
    manager.pool_classes_by_scheme = {"http": Pool, "https": SPool}
    return manager


class Delivery:
    """Drains an outbox to ``url``: on a daemon thread (:meth:`start`) or inline (:meth:`run`).

    Args:
        path: the outbox file; the thread opens its own connection to it.
        url: where records are POSTed, ``{"records": [...]}`` per request.
        api_key: sent as ``Authorization: Bearer <api_key>`` if given.
        batch_size: records per request at most.
        timeout: seconds for a whole request (connect, send, the complete answer).
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
        self.dead = 0
        self.failed_attempts = 0
        #: Why the server refused the sender (no secret in it); delivery stopped.
        self.refused: str | None = None
        self.gave_up = False
        self.owner = owner_id()
        self._sockets = _Sockets()
        self._stop = threading.Event()
        self._wake = threading.Event()  # new records: ends an idle wait
        self._kick = threading.Event()  # flush or stop: ends a backoff wait once
        self._progress = threading.Event()
        self._thread: threading.Thread | None = None
        self._target, self._headers = self._prepare(url, api_key)

    def __repr__(self) -> str:
        return f"Delivery({str(self.path)!r}, {safe_url(self.url)!r}, delivered={self.delivered})"

    @staticmethod
    def _prepare(url: str, api_key: str | None) -> tuple[str, dict[str, str]]:
        """The URL to request (userinfo removed) and the headers (credentials in them)."""
        headers = {"Content-Type": "application/json", "User-Agent": "callbridge-monitor"}
        try:
            parts = urlsplit(url)
            userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        except ValueError:
            return url, headers
        if userinfo:
            url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        elif userinfo:
            import base64
            from urllib.parse import unquote

            token = base64.b64encode(unquote(userinfo).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return url, headers

    @property
    def secrets(self) -> list[str]:
        """Values this sender must never print: the API key and the URL's credentials."""
        return [*url_secrets(self.url), *([self._api_key] if self._api_key else [])]

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
            timeout: the longest wait (a request in flight at the deadline is cut).
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
        """Stop the thread (cutting a request in flight), waiting up to ``timeout`` s."""
        self._stop.set()
        self._kick.set()
        self._wake.set()
        self._sockets.cut()
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
            with contextlib.suppress(Exception):
                outbox.release(self.owner)
            outbox.close()
            self._progress.set()

    # --- inline use (the CLI) ----------------------------------------------------------------

    def run(self, outbox: Outbox, timeout: float) -> None:
        """Deliver on this thread until the outbox is empty, delivery stops, or ``timeout`` s."""
        try:
            self._drain(outbox, until_empty=True, deadline=time.monotonic() + timeout)
        finally:
            outbox.release(self.owner)

    # --- the loop ----------------------------------------------------------------------------

    def _drain(self, outbox: Outbox, *, until_empty: bool, deadline: float | None) -> None:
        pool = _pool_manager(self._sockets, self.timeout)
        try:
            with masked_urllib3_logs(self.secrets):
                self._loop(pool, outbox, until_empty=until_empty, deadline=deadline)
        finally:
            pool.clear()

    def _loop(
        self, pool: Any, outbox: Outbox, *, until_empty: bool, deadline: float | None
    ) -> None:
        lease = self.timeout + LEASE_MARGIN
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return
            self._wake.clear()  # before claiming: a record added after it wakes us
            batch = outbox.claim(self.owner, self.batch_size, lease)
            if not batch:
                if until_empty:
                    return  # empty, or the rest is another live sender's
                self._wake.wait(1.0)
                continue
            delay = self._attempt(pool, outbox, batch, deadline)
            self._progress.set()
            if self.done:
                outbox.release(self.owner)
                return
            if delay:
                if deadline is not None:
                    delay = min(delay, max(deadline - time.monotonic(), 0.0))
                self._kick.wait(delay)
                self._kick.clear()

    def _attempt(
        self, pool: Any, outbox: Outbox, batch: list[tuple[str, str]], deadline: float | None
    ) -> float:
        """Deliver one claimed batch; returns the delay before the next attempt (0: none)."""
        good: list[tuple[str, str]] = []
        for key, body in batch:
            try:
                record = json.loads(body)
            except (ValueError, RecursionError):
                record = None
            if isinstance(record, dict):
                good.append((key, body))
            else:  # damaged in the outbox: no server would take it, and it must not block
                outbox.bury(key, "damaged in the outbox: its body is not a JSON object")
                self.dead += 1
                logger.error(
                    "callbridge monitor: record %r in %s is damaged (not a JSON object); moved "
                    "to the dead letters",
                    key,
                    self.path,
                )
        if not good:
            return 0.0
        outcome = self._send_split(pool, outbox, good, deadline)
        if outcome is None:
            if self.failed_attempts:
                logger.info(
                    "callbridge monitor: delivering to %s again after %d failed attempts",
                    safe_url(self.url),
                    self.failed_attempts,
                )
            self.failed_attempts = 0
            return 0.0
        problem, wait = outcome
        if self.refused is not None:
            return 0.0  # logged once by _refuse; delivery stops
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

    def _send_split(
        self,
        pool: Any,
        outbox: Outbox,
        batch: list[tuple[str, str]],
        deadline: float | None,
        *,
        split: bool = False,
    ) -> tuple[str, float | None] | None:
        """Send ``batch``, halving it on a refusal until the refused record stands alone.

        Returns None when the batch is settled (delivered, or refused records buried),
        else ``(problem, Retry-After)`` of a transient failure or a sender refusal.
        """
        if split:
            # Each half is a new request: renew the claim first, so that a long search for
            # the refused record never outlives it (another sender could then take these).
            held = outbox.renew(self.owner, [key for key, _ in batch], self.timeout + LEASE_MARGIN)
            batch = [(key, body) for key, body in batch if key in held]
            if not batch:
                return None
        result = self._post(pool, batch, deadline)
        if result is None:
            outbox.remove([key for key, _ in batch])
            self.delivered += len(batch)
            return None
        status, reason, problem, wait = result
        if status is None or status in TRANSIENT or status >= 500:
            return problem, wait
        if status in SENDER_REFUSALS:
            self._refuse(status, reason, len(batch), outbox)
            return problem, None
        if len(batch) > 1:
            half = len(batch) // 2
            for part in (batch[:half], batch[half:]):
                outcome = self._send_split(pool, outbox, part, deadline, split=True)
                if outcome is not None:
                    return outcome
            return None
        key = batch[0][0]
        why = f"HTTP {status}{' ' + reason if reason else ''}"
        outbox.bury(key, f"refused by {safe_url(self.url)}: {why}")
        self.dead += 1
        logger.error(
            "callbridge monitor: %s refused record %r with %s; moved to the dead letters of %s "
            "(see `callbridge monitor show`, send again with `callbridge monitor flush %s "
            "--retry-dead`); the other records go on",
            safe_url(self.url),
            key,
            why,
            self.path,
            self.path,
        )
        return None

    def _post(
        self, pool: Any, batch: list[tuple[str, str]], deadline: float | None
    ) -> tuple[int | None, str, str, float | None] | None:
        """One POST under a hard deadline: None on 2xx, else (status, reason, problem, wait)."""
        import urllib3

        body = ('{"records":[' + ",".join(text for _, text in batch) + "]}").encode()
        limit = self.timeout
        if deadline is not None:
            limit = max(min(limit, deadline - time.monotonic()), 0.001)
        cut = threading.Timer(limit, self._sockets.cut)
        cut.daemon = True
        started = time.monotonic()
        cut.start()
        try:
            response = pool.request(
                "POST",
                self._target,
                body=body,
                headers=self._headers,
                retries=False,
                redirect=False,
                timeout=urllib3.Timeout(connect=limit, read=limit),
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if time.monotonic() - started >= limit * 0.99:
                problem = f"no complete answer within {limit:g} s"
            else:
                # urllib3's messages name the host and the error, never the request's headers.
                problem = mask_text(f"{type(exc).__name__}: {exc}", self.secrets)
            return None, "", problem, None
        finally:
            cut.cancel()
        status = int(response.status)
        if 200 <= status < 300:
            return None
        reason = str(response.reason or "")
        problem = f"HTTP {status} {reason}".rstrip()
        return status, reason, problem, retry_after(response.headers.get("Retry-After"))

    def _refuse(self, status: int, reason: str | None, size: int, outbox: Outbox) -> None:
        hint = _HINTS.get(status, "the server does not accept this sender")
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
