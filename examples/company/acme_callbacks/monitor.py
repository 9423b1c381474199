"""The company monitoring platform: callbridge's built-in ``monitor``, configured for it."""

from __future__ import annotations

from typing import Any

from callbridge.callbacks.monitor import MonitorCallback

#: The outbox file inside the run's output directory (kept apart from other monitors').
OUTBOX = "acme-monitor.sqlite"


def upload_monitor_to_new_platform(
    upload_url: str,
    api_key: str | None = None,
    project_name: str = "default",
    upload_interval: int = 50,
    **kw: Any,
) -> MonitorCallback:
    """Send training events to the ACME platform (a factory: callbridge accepts functions).

    Every event becomes a record with an idempotency key, kept in a durable local
    outbox and POSTed by a background thread: training never waits for the platform,
    and nothing is lost when it is slow or down (see callbridge's ``monitor``).

    Args:
        upload_url: the platform's ingest endpoint (``http://`` or ``https://``).
        api_key: the bearer token; masked in ``callbridge show``, logs and errors.
        project_name: the platform project the records belong to.
        upload_interval: records per request at most.
        **kw: any other ``monitor`` argument (``timeout``, ``flush_timeout``,
            ``max_retries``, ``outbox``...).
    """
    kw.setdefault("outbox", OUTBOX)
    return MonitorCallback(
        upload_url=upload_url,
        api_key=api_key,
        project_name=project_name,
        upload_interval=upload_interval,
        **kw,
    )
