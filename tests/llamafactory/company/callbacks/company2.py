"""``callbacks.company2.myExtraLog``: ACME's detailed logger (examples/company)."""

from acme_callbacks import DetailedLogger as myExtraLog

__all__ = ["myExtraLog"]
