"""``monitor``: training events to an HTTP endpoint, through a durable local outbox."""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import attrs

from .._outbox import Outbox
from .._protocol import Callback, Run
from ._delivery import Delivery, safe_url

logger = logging.getLogger("callbridge.monitor")

OUTBOX_NAME = "callbridge-monitor.sqlite"


def _http_url(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(f"{attribute.name} must be an http:// or https:// URL (got {value!r})")


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
    record with an idempotency key ``<run_id>:<seq>`` and the run's ``tags`` (e.g. the
    stage of a ``training_stage`` callback), appended to a SQLite outbox on
    the training thread; a background thread POSTs them in batches and removes
    them once the server answers 2xx. At train end the outbox is flushed for at
    most ``flush_timeout`` seconds; what remains is delivered by the next run with
    the same outbox or by ``callbridge monitor flush``.

    Args:
        upload_url: where records are POSTed as ``{"records": [...]}`` (None: the
            outbox only).
        api_key: sent as ``Authorization: Bearer <api_key>``; never logged or stored.
        project_name: sent with every record.
        upload_interval: records per request at most (requests go out as soon as
            records wait; batches form while a request is in flight).
        timeout: seconds for connecting and for the answer, per request.
        max_retries: retries after a failed attempt before delivery gives up for this run
            (it gives up after ``max_retries + 1`` failures in a row)
            (None: keep trying until train end).
        backoff: the first delay between attempts, doubled after each failure.
        max_backoff: the longest delay between attempts.
        flush_timeout: the longest wait for delivery at train end.
        outbox: the SQLite file; a relative path is taken inside the run's output
            directory (default: ``callbridge-monitor.sqlite`` there).
    """

    rank_zero_only: ClassVar[bool] = True

    upload_url: str | None = attrs.field(default=None, validator=_http_url)
    api_key: str | None = attrs.field(default=None, repr=False)
    project_name: str = "default"
    upload_interval: int = attrs.field(default=50, validator=attrs.validators.ge(1))
    timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    max_retries: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0))
    )
    backoff: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    max_backoff: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    flush_timeout: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    # A str from Python code works as well as a Path (the config coerces; code may not).
    outbox: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))

    run_id: str | None = attrs.field(default=None, init=False)
    seq: int = attrs.field(default=0, init=False)
    _box: Outbox | None = attrs.field(default=None, init=False, repr=False)
    delivery: Delivery | None = attrs.field(default=None, init=False, repr=False)

    def outbox_path(self, run: Run) -> Path:
        """Where this run's outbox lives."""
        path = self.outbox if self.outbox is not None else Path(OUTBOX_NAME)
        if path.is_absolute():
            return path
        return (Path(run.output_dir) if run.output_dir is not None else Path.cwd()) / path

    def record(self, run: Run, event: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """Policy: what a record says (override to add fields; keep it plain JSON)."""
        state = run.state
        return {
            "idempotency_key": f"{self.run_id}:{self.seq}",
            "run_id": self.run_id,
            "seq": self.seq,
            "project": self.project_name,
            "event": event,
            "step": state.global_step,
            "epoch": _plain(state.epoch),
            "metrics": {str(k): _plain(v) for k, v in metrics.items()},
            "tags": dict(run.tags),
            "timestamp": time.time(),
        }

    def _add(self, run: Run, event: str, metrics: dict[str, Any]) -> None:
        if self._box is None:
            return
        self.seq += 1
        body = self.record(run, event, metrics)
        self._box.add(str(body["idempotency_key"]), json.dumps(body, separators=(",", ":")))
        if self.delivery is not None:
            self.delivery.notify()

    def on_train_begin(self, run: Run) -> None:
        if self._box is None:
            path = self.outbox_path(run)
            self._box = Outbox(path)
            if self.upload_url is not None:
                self._box.set_meta("upload_url", self.upload_url)
                self.delivery = Delivery(
                    path,
                    self.upload_url,
                    self.api_key,
                    batch_size=self.upload_interval,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                    backoff=self.backoff,
                    max_backoff=self.max_backoff,
                )
                self.delivery.start()
        self.run_id = uuid.uuid4().hex
        self.seq = 0
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
        self._add(run, "exception", {"error": f"{type(exc).__name__}: {exc}"})
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
            level = logging.INFO if remaining == 0 else logging.WARNING
            logger.log(
                level,
                "callbridge monitor: delivered %d records to %s; %d remain in %s%s",
                delivery.delivered,
                safe_url(delivery.url),
                remaining,
                box.path,
                f" (deliver them with `callbridge monitor flush {box.path}`)" if remaining else "",
            )
        finally:
            box.close()
