"""SMPP time fields (schedule_delivery_time, validity_period): SMPP 3.4 section 7.1.1.

Theory of operation
-------------------
A time field is empty (the SMSC's default) or 16 characters ``YYMMDDhhmmsstnnp``:

* absolute (``p`` is ``+`` or ``-``): a UTC offset of ``nn`` quarter hours, ``t`` tenths
  of a second.  We write UTC (``nn`` 00, ``+``): no time zone for the SMSC to get wrong.
* relative (``p`` is ``R``): a duration in years, months, days, hours, minutes and
  seconds from now; ``t`` and ``nn`` are 0.  We use days/hours/minutes/seconds only:
  a calendar month is not a fixed number of seconds.

Relative is the default for validity_period: it does not depend on the SMSC's clock.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["MAX_RELATIVE_SECONDS", "absolute_time", "parse_time", "relative_time"]

# DD has two digits: 99 days, 23:59:59 is the longest relative time without months.
MAX_RELATIVE_SECONDS: Final = 99 * 86_400 + 86_399
_TIME = re.compile(r"^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d)(\d{2})([+\-R])$")


def relative_time(seconds: float) -> str:
    """A relative time of ``seconds`` (rounded up, at least 1, at most 99 days 23:59:59)."""
    return _relative_text(min(MAX_RELATIVE_SECONDS, max(1, math.ceil(seconds))))


# Every submit asks for one, and a batch's notifications share a few values (their validity
# left, in whole seconds); 4,096 entries cover more than an hour of distinct values.
@functools.lru_cache(maxsize=4096)
def _relative_text(total: int) -> str:
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"0000{days:02d}{hours:02d}{minutes:02d}{secs:02d}000R"


def absolute_time(unix_seconds: float) -> str:
    """The instant ``unix_seconds`` as an absolute time in UTC (tenths of a second kept)."""
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return f"{moment:%y%m%d%H%M%S}{moment.microsecond // 100_000}00+"


def parse_time(value: str, *, now: float) -> float | None:
    """The Unix time a time field names (relative ones counted from ``now``); None for
    an empty field.  Raises ValueError for a malformed one."""
    if not value:
        return None
    match = _TIME.match(value)
    if match is None:
        raise ValueError(f"not an SMPP time: {value!r}")
    yy, mo, dd, hh, mi, ss, tenths, quarters, p = match.groups()
    if p == "R":
        # Years and months as 365 and 30 days (we never write them; other SMSCs may).
        days = int(yy) * 365 + int(mo) * 30
        return now + timedelta(days=days + int(dd), hours=int(hh), minutes=int(mi),
                               seconds=int(ss)).total_seconds()
    moment = datetime(2000 + int(yy), int(mo), int(dd), int(hh), int(mi), int(ss),
                      int(tenths) * 100_000, tzinfo=UTC)
    offset = timedelta(minutes=15 * int(quarters))
    return (moment - offset if p == "+" else moment + offset).timestamp()
