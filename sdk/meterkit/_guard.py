"""One place where background errors and losses are reported.

Background threads never let an exception reach the host application: they hand it to
:func:`background_error`, which logs it once per place and counts it. Tests flip
:data:`RAISE_BACKGROUND_ERRORS` (an autouse fixture does) so a swallowed error fails them.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

logger = logging.getLogger("meterkit")

#: Set by the test suite: background errors are kept for the test to re-raise.
RAISE_BACKGROUND_ERRORS = False
captured: list[BaseException] = []

_lock = threading.Lock()
_logged: set[object] = set()
errors: Counter[str] = Counter()


def log_once(key: object, level: int, message: str, *args: object, exc_info: BaseException | None = None) -> None:
    """Log ``message`` the first time ``key`` is seen in this process; stay quiet after."""
    with _lock:
        if key in _logged:
            return
        _logged.add(key)
    logger.log(level, message, *args, exc_info=exc_info)


def background_error(where: str, exc: BaseException) -> None:
    """Report an exception caught in a background thread of meterkit."""
    with _lock:
        errors[where] += 1
        if RAISE_BACKGROUND_ERRORS:
            captured.append(exc)
    log_once(
        ("error", where, type(exc)),
        logging.ERROR,
        "meterkit: error in %s (further ones counted, not logged)",
        where,
        exc_info=exc,
    )


def reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
