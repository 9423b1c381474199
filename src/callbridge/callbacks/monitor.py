"""``monitor``: training events to an HTTP endpoint, through a durable local outbox."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import attrs

from .._outbox import Outbox, OutboxError, leftovers, open_for_run
from .._protocol import Callback, Run
from .._secrets import mask_text, mask_url, url_secrets
from ._delivery import Delivery, safe_url, url_problem, urllib3_missing
from ._paths import in_output_dir

logger = logging.getLogger("callbridge.monitor")

OUTBOX_NAME = "callbridge-monitor.sqlite"
#: The longest a request, a backoff or the train-end flush may be set to last (one day):
#: longer is a typo (or ``inf``), and would park training or a thread for good.
MAX_SECONDS = 86_400.0


def _http_url(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    problem = url_problem(value)
    if problem is not None:
        raise ValueError(f"{attribute.name}: {problem}")


def _seconds(*, zero: bool) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """A validator: a finite number of seconds, above 0 (or 0 if ``zero``), at most a day."""
    low = "0 <=" if zero else "0 <"

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value >= 0 if zero else value > 0)
            and value <= MAX_SECONDS
        )
        if not ok:
            raise ValueError(
                f"{attribute.name} must be a finite number of seconds, {low} {attribute.name} "
                f"<= {MAX_SECONDS:g} (got {value!r})"
            )

    return check


def _count(low: int, high: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and attribute.name == "max_retries":
            return
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(
                f"{attribute.name} must be an integer, {low} <= {attribute.name} <= {high} "
                f"(got {value!r})"
            )

    return check


def _url_repr(value: str | None) -> str:
    return repr(value if value is None else mask_url(value))


def _plain(value: Any) -> Any:
    """JSON-ready: non-finite floats become null, unknown objects their ``str``."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        number = float(value)  # tensors and numpy scalars
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


@attrs.define
class MonitorCallback(Callback):
    """Send training events to an HTTP endpoint, never blocking training and losing nothing.

    Every event (train_begin, log, evaluate, save, train_end, exception) becomes a
    record with an idempotency key (see :meth:`key`) and the run's ``tags`` (e.g. the
    stage of a ``training_stage`` callback), appended to a SQLite outbox on the
    training thread; a background thread claims, POSTs and removes them once the
    server answers 2xx (see ``callbridge.callbacks._delivery`` for retries, dead
    letters and deadlines). An outbox that cannot be used falls back to a fresh file
    (named in a warning), so the run's records always have a home. At train end the
    outbox is flushed for at most ``flush_timeout`` seconds; what remains is delivered
    by the next run with the same outbox or by ``callbridge monitor flush``.

    The run id is in :meth:`state_dict`: a run resumed from a checkpoint continues it.
    Its records carry ``resume`` (how many times the run was resumed) and
    ``retrained`` (true for steps an earlier attempt had already recorded).

    Args:
        upload_url: where records are POSTed as ``{"records": [...]}`` (None: the
            outbox only); http or https with a host. Its userinfo and query are masked
            in the repr and in the outbox.
        api_key: sent as ``Authorization: Bearer <api_key>``; never logged or stored.
        project_name: sent with every record.
        upload_interval: records per request at most, 1 to 10000 (requests go out as
            soon as records wait; batches form while a request is in flight).
        timeout: seconds for a whole request (connect, send, the complete answer).
        max_retries: retries after a failed attempt before delivery gives up for this run
            (it gives up after ``max_retries + 1`` failures in a row)
            (None: keep trying until train end).
        backoff: the first delay between attempts, doubled after each failure.
        max_backoff: the longest delay between attempts.
        flush_timeout: the longest wait for delivery at train end.
        outbox: the SQLite file; a relative path is taken inside the run's output
            directory (default: ``callbridge-monitor.sqlite`` there).

    Every duration is a finite number of seconds up to a day (``timeout`` above 0).

    Raises:
        ValueError: a setting that cannot work (``inf``, ``nan``, out of range, a URL
            without a host or with spaces, a port out of range).
        ModuleNotFoundError: an ``upload_url`` without urllib3 (the ``monitor`` extra).
    """

    rank_zero_only: ClassVar[bool] = True

    # The repr masks the URL's userinfo and query: a token often travels there.
    upload_url: str | None = attrs.field(default=None, validator=_http_url, repr=_url_repr)
    api_key: str | None = attrs.field(default=None, repr=False)
    project_name: str = "default"
    upload_interval: int = attrs.field(default=50, validator=_count(1, 10_000))
    timeout: float = attrs.field(default=10.0, validator=_seconds(zero=False))
    max_retries: int | None = attrs.field(default=None, validator=_count(0, 1_000_000))
    backoff: float = attrs.field(default=0.5, validator=_seconds(zero=True))
    max_backoff: float = attrs.field(default=30.0, validator=_seconds(zero=True))
    flush_timeout: float = attrs.field(default=30.0, validator=_seconds(zero=True))
    # A str from Python code works as well as a Path (the config coerces; code may not).
    outbox: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))

    run_id: str | None = attrs.field(default=None, init=False)
    seq: int = attrs.field(default=0, init=False)
    #: How many times this run was resumed (0: the first attempt).
    resume: int = attrs.field(default=0, init=False)
    _box: Outbox | None = attrs.field(default=None, init=False, repr=False)
    delivery: Delivery | None = attrs.field(default=None, init=False, repr=False)
    _restored: dict[str, Any] | None = attrs.field(default=None, init=False, repr=False)
    _attempt: str = attrs.field(default="", init=False, repr=False)
    _resumed_at: int = attrs.field(default=0, init=False, repr=False)
    _reached: int = attrs.field(default=-1, init=False, repr=False)
    _written: int = attrs.field(default=-1, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # Found here, not by the delivery thread at its first send: `check` constructs
        # neutral callbacks, so a missing extra is reported before training.
        if self.upload_url is not None:
            missing = urllib3_missing()
            if missing is not None:
                raise ModuleNotFoundError(
                    f"monitor with an upload_url: {missing} (or leave upload_url unset to keep "
                    f"the records in the outbox only)"
                )

    def outbox_path(self, run: Run) -> Path:
        """Where this run's outbox lives."""
        path = self.outbox if self.outbox is not None else Path(OUTBOX_NAME)
        return in_output_dir(run, path) or Path.cwd() / path

    def record(self, run: Run, event: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """Policy: what a record says (override to add fields; keep it plain JSON)."""
        state = run.state
        return {
            "idempotency_key": self.key(self.seq),
            "run_id": self.run_id,
            "seq": self.seq,
            "resume": self.resume,
            "retrained": self.resume > 0 and self._resumed_at < state.global_step <= self._reached,
            "project": self.project_name,
            "event": event,
            "step": state.global_step,
            "epoch": _plain(state.epoch),
            "metrics": {str(k): _plain(v) for k, v in metrics.items()},
            "tags": dict(run.tags),
            "timestamp": time.time(),
        }

    def key(self, seq: int) -> str:
        """The idempotency key of record ``seq`` of this attempt.

        ``<run_id>:<seq>`` in a run's first attempt; ``<run_id>:r<resume>-<nonce>:<seq>``
        after a resume (a resume may start from an older checkpoint than the last one,
        and its records must not take the keys of records already sent).
        """
        if self.resume == 0:
            return f"{self.run_id}:{seq}"
        return f"{self.run_id}:r{self.resume}-{self._attempt}:{seq}"

    def state_dict(self) -> dict[str, Any]:
        """The run id and resume count: a resumed run continues the same run."""
        if self.run_id is None:
            return {}
        return {"run_id": self.run_id, "resume": self.resume}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Taken up by the next ``on_train_begin`` (the adapters restore state before it)."""
        if isinstance(state.get("run_id"), str):
            self._restored = dict(state)

    def _secrets(self) -> list[str]:
        own = [self.api_key] if self.api_key else []
        return own + (url_secrets(self.upload_url) if self.upload_url else [])

    def _add(self, run: Run, event: str, metrics: dict[str, Any]) -> None:
        if self._box is None:
            return
        self.seq += 1
        body = self.record(run, event, metrics)
        key, text = str(body["idempotency_key"]), json.dumps(body, separators=(",", ":"))
        step = run.state.global_step
        # The run's highest step is kept in the outbox for a resume to read; written only
        # when it grows (evaluate and save share their step with a log).
        track = self.run_id if step > self._written else None
        try:
            self._box.add(key, text, run_id=track, step=step)
        except (sqlite3.Error, OutboxError) as exc:
            # The outbox broke under the run (disk, corruption): move to a fallback and
            # keep the record, rather than lose it and every one after it.
            self._switch(f"{self._box.path}: {type(exc).__name__}: {exc}")
            self._box.add(key, text, run_id=self.run_id, step=step)
        self._written = max(self._written, step)
        if self.delivery is not None:
            self.delivery.notify()

    def _open(self, path: Path, *, skip: Path | None = None) -> None:
        box, warning = open_for_run(path, skip=skip)
        if warning is not None:
            logger.warning("callbridge monitor: %s", warning)
        if skip is None:
            for other in leftovers(path):
                if other != box.path:
                    logger.warning(
                        "callbridge monitor: records of an earlier run wait in %s (its outbox "
                        "could not be used then); deliver them with `callbridge monitor flush %s`",
                        other,
                        other,
                    )
        self._box = box
        if self.upload_url is None:
            return
        # Stored for `monitor flush`, without credentials: those never rest on disk.
        box.set_meta("upload_url", mask_url(self.upload_url))
        self.delivery = Delivery(
            box.path,
            self.upload_url,
            self.api_key,
            batch_size=self.upload_interval,
            timeout=self.timeout,
            max_retries=self.max_retries,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
        )
        self.delivery.start()

    def _switch(self, reason: str) -> None:
        old, delivery = self._box, self.delivery
        assert old is not None
        logger.warning("callbridge monitor: the outbox failed during the run (%s)", reason)
        if delivery is not None:
            delivery.stop()
        self._box, self.delivery = None, None
        with contextlib.suppress(sqlite3.Error):
            old.close()
        self._open(old.path, skip=old.path)

    def on_train_begin(self, run: Run) -> None:
        if self._box is None:
            self._open(self.outbox_path(run))
        assert self._box is not None
        restored, self._restored = self._restored, None
        self.seq, self._written = 0, -1
        if restored is None:
            self.run_id, self.resume, self._attempt = uuid.uuid4().hex, 0, ""
        else:
            self.run_id = str(restored["run_id"])
            counted = _int(self._box.get_meta(f"resumes:{self.run_id}"))
            self.resume = max(_int(restored.get("resume")), counted) + 1
            self._box.set_meta(f"resumes:{self.run_id}", str(self.resume))
            self._attempt = uuid.uuid4().hex[:8]
            self._resumed_at = run.state.global_step
            # The highest step an earlier attempt recorded: steps up to it are trained again.
            self._reached = _int(self._box.get_meta(f"step:{self.run_id}"), -1)
        self._add(run, "train_begin", {})

    def on_log(self, run: Run, logs: dict[str, float]) -> None:
        self._add(run, "log", dict(logs))

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self._add(run, "evaluate", dict(metrics))

    def on_save(self, run: Run) -> None:
        self._add(run, "save", {})

    def on_train_end(self, run: Run) -> None:
        self._add(run, "train_end", {})
        self._finish()

    def on_exception(self, run: Run, exc: BaseException) -> None:
        # The text goes to disk and to the platform: secret values in it are masked (the
        # environment's secret-looking variables, this monitor's key, any URL's credentials).
        error = mask_text(f"{type(exc).__name__}: {exc}", self._secrets())
        self._add(run, "exception", {"error": error})
        self._finish()

    def _finish(self) -> None:
        box, delivery = self._box, self.delivery
        if box is None:
            return
        self._box, self.delivery = None, None
        try:
            if delivery is None:
                logger.info(
                    "callbridge monitor: no upload_url; %d records kept in %s",
                    box.count(),
                    box.path,
                )
                return
            delivery.flush(self.flush_timeout, box.count)
            remaining = box.count()
            level = logging.INFO if remaining == 0 and delivery.dead == 0 else logging.WARNING
            dead = f", {delivery.dead} refused (dead letters)" if delivery.dead else ""
            logger.log(
                level,
                "callbridge monitor: delivered %d records to %s%s; %d remain in %s%s",
                delivery.delivered,
                safe_url(delivery.url),
                dead,
                remaining,
                box.path,
                f" (deliver them with `callbridge monitor flush {box.path}`)" if remaining else "",
            )
        finally:
            box.close()


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
