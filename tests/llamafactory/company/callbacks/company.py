"""``callbacks.company.upload_monitor_to_new_platform``: ACME's monitor (examples/company)."""

from acme_callbacks import upload_monitor_to_new_platform

__all__ = ["upload_monitor_to_new_platform"]
