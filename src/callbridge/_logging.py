"""callbridge's own output visible by default, without doubling an application's logging.

callbridge writes to the ``callbridge`` logger (``callbridge: 3 callbacks loaded ...``,
warnings) and the ``log`` callback to ``callbridge.log``. Python shows nothing below
WARNING until the application configures logging, so a first run would print none of
it. When callbridge builds callbacks and the application has configured no logging
(the root logger has no handler, nor has ``callbridge``), it adds a handler of its own
to ``callbridge`` writing to stderr at INFO, as Lightning does for its own logger.

Once the application configures logging (``logging.basicConfig(...)``, a handler on
the root logger), that handler goes quiet and hands the level back, so every line is
printed once, by the application's handlers, at the application's levels. To silence
callbridge without configuring logging:
``logging.getLogger("callbridge").setLevel(logging.WARNING)``.
"""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "callbridge"


class DefaultHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr at INFO while the application has configured no logging of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        #: Whether :func:`install_default_handler` set the logger's level (and may undo it).
        self.set_level = False

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            # The application configured logging since: the record reaches its handlers
            # through propagation, and later records follow its levels.
            self.retire()
            return
        self.stream = sys.stderr  # the current one (tests and tools swap sys.stderr)
        super().emit(record)

    def retire(self) -> None:
        """Hand the logger's level back to the application (the handler stays, inert)."""
        logger = logging.getLogger(LOGGER_NAME)
        if self.set_level and logger.level == logging.INFO:
            logger.setLevel(logging.NOTSET)
        self.set_level = False


_HANDLER = DefaultHandler()


def install_default_handler() -> None:
    """Make callbridge's INFO output visible when the application configured no logging.

    Idempotent; does nothing when the root logger or the ``callbridge`` logger has a
    handler (the application's choice stands).
    """
    logger = logging.getLogger(LOGGER_NAME)
    if _HANDLER in logger.handlers or logger.handlers or logging.getLogger().handlers:
        return
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
        _HANDLER.set_level = True
    logger.addHandler(_HANDLER)
