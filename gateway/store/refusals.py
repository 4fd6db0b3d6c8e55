"""Redis refusing writes: which errors mean "try again later", and one log line per interval.

Theory of operation
-------------------
Redis can be reachable and still refuse to write.  Its error replies then start with a
code (Redis' ``src/server.c`` ``shared.*err`` replies, and Redis Cluster's):

* ``OOM``: used memory above ``maxmemory`` with the ``noeviction`` policy;
* ``READONLY``: a replica (the old primary after a failover);
* ``MISCONF``: the last RDB save failed and ``stop-writes-on-bgsave-error`` is on;
* ``NOREPLICAS``: fewer good replicas than ``min-replicas-to-write``;
* ``BUSY``: a script runs longer than ``busy-reply-threshold``; ``LOADING``: the
  dataset is being loaded after a restart; ``MASTERDOWN``: a replica lost its primary;
* ``NOSCRIPT``: the script cache was flushed (redis-py loads it again by itself, but a
  pipeline or a race may still see the reply);
* ``TRYAGAIN``, ``CLUSTERDOWN``: Redis Cluster resharding or failing over;
* ``UNBLOCKED``: a blocked read (``XREADGROUP ... BLOCK``) whose stream key went away
  while it waited, e.g. with its slot to another node (``MIGRATE`` deletes it on the
  source): reading again follows the slot (logged as critical in every cluster soak
  until 2026-12-03).

Each is a write that did not happen and will happen once Redis recovers: never a reason
to forget what was done on the wire.  Inside a Lua script Redis 6.2 wraps the reply
(``Error running script (call to f_…): @user_script:12: -OOM command not allowed…``),
Redis 7 keeps its code in front; `is_write_refusal` recognises both.  Any other
``ResponseError`` (a wrong type, a script bug) is a bug of ours, not a refusal.

`RefusalLog` keeps the log readable while Redis refuses: the first refusal is logged at
once, then one line per `interval_seconds` with the counts since the last line, and one
line when writes pass again.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from twisted.logger import Logger

__all__ = ["REFUSAL_CODES", "RefusalLog", "SystemClock", "describe", "is_unavailable", "is_write_refusal", "refusal_code"]

REFUSAL_CODES = ("OOM", "READONLY", "MISCONF", "NOREPLICAS", "BUSY", "LOADING", "MASTERDOWN", "NOSCRIPT",
                 "TRYAGAIN", "CLUSTERDOWN", "UNBLOCKED")
# The code at the start of the reply, or after the "-" that Redis 6.2 puts in front of
# the inner reply of a failing redis.call() ("... @user_script:12: -OOM command ...").
_CODE = re.compile(r"(?:^|[\s:]-?)(" + "|".join(REFUSAL_CODES) + r")\b")
_CLASSES: tuple[tuple[type[BaseException], str], ...] = (
    (OutOfMemoryError, "OOM"), (ReadOnlyError, "READONLY"), (NoScriptError, "NOSCRIPT"),
    (TryAgainError, "TRYAGAIN"), (MasterDownError, "MASTERDOWN"), (ClusterDownError, "CLUSTERDOWN"))
# How often a refusal that persists is logged: the issue measured 1,541 tracebacks in
# 30 s when each batch logged its own; one line per 5 s keeps the counts and the story.
LOG_INTERVAL_SECONDS = 5.0


def refusal_code(error: BaseException) -> str | None:
    """The Redis error code (``OOM``, ``READONLY``...) when `error` is a refused write."""
    if not isinstance(error, ResponseError):
        return None
    # redis-py strips the code of the replies it has a class for (OutOfMemoryError,
    # ReadOnlyError, NoScriptError...) and keeps it in status_code (redis-py 8).
    code = getattr(error, "status_code", None)
    if code in REFUSAL_CODES:
        return str(code)
    for kind, name in _CLASSES:
        if isinstance(error, kind):
            return name
    match = _CODE.search(str(error))
    return match.group(1) if match else None


def is_write_refusal(error: BaseException) -> bool:
    """True for a Redis error reply that means "not now" (see the module docstring)."""
    return refusal_code(error) is not None


def is_unavailable(error: BaseException) -> bool:
    """True when the write did not happen for a reason that passes: Redis away
    (connection error, timeout: ``LOADING`` is a ConnectionError subclass in redis-py)
    or Redis refusing (`is_write_refusal`)."""
    return (isinstance(error, (RedisConnectionError, RedisTimeoutError, OSError, ClusterError, TryAgainError,
                               RedisClusterException))  # as gateway.store.service.REDIS_ERRORS
            or is_write_refusal(error))


def describe(error: BaseException) -> str:
    """A short name for the log: the Redis code, else the exception type."""
    return refusal_code(error) or type(error).__name__


class SystemClock:
    """``seconds()`` from the system clock, for parts that have no reactor at hand."""

    @staticmethod
    def seconds() -> float:
        return time.time()


class RefusalLog:
    """Logs a persisting Redis failure once per `interval_seconds`, with counts.

    Args:
        what: names the writer in the log ("outcome writer", "push dispatch").
        clock: IReactorTime (or anything with ``seconds()``).
        log: the Logger to write to.
    """

    def __init__(self, what: str, clock: Any, log: Logger, *,
                 interval_seconds: float = LOG_INTERVAL_SECONDS) -> None:
        self.what = what
        self.clock = clock
        self.log = log
        self.interval_seconds = interval_seconds
        self.failing = False
        self._errors: Counter[str] = Counter()
        self._items = 0
        self._since = 0.0
        self._logged_at: float | None = None

    def failed(self, error: BaseException, items: int = 0, *, kept: int = 0) -> None:
        """Count one failed attempt (of `items` records, `kept` of them kept for retry)."""
        now = self.clock.seconds()
        if not self.failing:
            self.failing = True
            self._since = now
        self._errors[describe(error)] += 1
        self._items += items
        if self._logged_at is None or now - self._logged_at >= self.interval_seconds:
            errors = ", ".join(f"{code} x{n}" for code, n in self._errors.most_common())
            self.log.error("{what}: redis unavailable or refusing writes for {seconds:.1f}s: {attempts} failed attempts "
                           "({errors}) with {items} records since the last line; {kept} kept for retry",
                           what=self.what, seconds=now - self._since, attempts=sum(self._errors.values()),
                           errors=errors, items=self._items, kept=kept)
            self._errors.clear()
            self._items = 0
            self._logged_at = now

    def succeeded(self) -> None:
        """A write passed: say so once if it had been failing."""
        if self.failing:
            self.failing = False
            self.log.info("{what}: redis takes writes again after {seconds:.1f}s", what=self.what,
                          seconds=self.clock.seconds() - self._since)
            self._errors.clear()
            self._items = 0
            self._logged_at = None
