"""When a notification may go out: priority lanes, quiet hours, expiry, caps, retry delays.

Theory of operation
-------------------
This module is policy only: plain functions of (request, time as a Unix number) that the
intake and the dispatcher apply; the Redis side lives in gateway/push/state.py.

* **Lanes.**  Three ready queues, one per `Priority`: ``high`` (verification codes,
  booking messages, MO replies), ``normal`` (reminders of things that are overdue) and
  ``bulk`` (periodic reminders that can wait).  The dispatcher claims a batch with
  strict priority, except that each lower lane is offered a small reserved share of a
  full batch (`LOWER_LANE_SHARE`, 5 % each): a flood of verification codes slows bulk
  reminders down but never stops them.  With a million bulk reminders queued a new
  verification code is in the very next claim, ahead of all of them.
* **Quiet hours** (22:00-08:00 Asia/Shanghai by default): a type whose template says
  ``quiet_hours: true`` accepted or due inside the window is *scheduled* for the end of
  the window; transactional types (codes, bookings, MO replies) are never held.  A window
  whose start is after its end wraps over midnight; start == end means no quiet hours.
* **Expiry.**  A notification expires at the earlier of the caller's ``expires_at`` and
  acceptance time + the type's validity; checked at intake and again when claimed for
  submission (a reminder stuck behind an outage is not sent days late).
* **Daily cap.**  Bulk reminders per number per local day (`PushConfig.daily_cap_bulk`),
  counted at acceptance; the day is the calendar day in the quiet-hours time zone.
* **Retries.**  Transient failures wait ``initial * 2**(attempt-1)`` seconds, capped.
"""

from __future__ import annotations

import datetime as dt
import enum
import zoneinfo
from dataclasses import dataclass

__all__ = [
    "LOWER_LANE_SHARE",
    "Priority",
    "QuietHoursPolicy",
    "local_day",
    "reserved_lower_lane_slots",
    "retry_delay_seconds",
]

# Share of a full claim batch offered to each lower lane before strict priority fills the
# rest: enough that bulk moves during a verification-code flood, small enough that a
# high-priority message never waits behind more than a few percent of a batch.
LOWER_LANE_SHARE = 0.05


class Priority(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    BULK = "bulk"


def reserved_lower_lane_slots(batch: int) -> int:
    """How many of a claim of `batch` each lower lane may take before strict priority."""
    return int(batch * LOWER_LANE_SHARE)


def _parse_time_of_day(text: str) -> dt.time:
    hours, minutes = text.split(":")
    return dt.time(int(hours), int(minutes))


@dataclass(frozen=True)
class QuietHoursPolicy:
    """Quiet hours and the local calendar (for daily caps and exam-date checks).

    Args:
        start, end: "HH:MM" local times; the window is [start, end).
        timezone: IANA zone name, e.g. "Asia/Shanghai".
    """

    start: str = "22:00"
    end: str = "08:00"
    timezone: str = "Asia/Shanghai"

    def __post_init__(self) -> None:
        # Parse once; frozen, so through object.__setattr__.
        object.__setattr__(self, "_start", _parse_time_of_day(self.start))
        object.__setattr__(self, "_end", _parse_time_of_day(self.end))
        object.__setattr__(self, "_tz", zoneinfo.ZoneInfo(self.timezone))

    @property
    def tz(self) -> dt.tzinfo:
        return self._tz  # type: ignore[attr-defined, no-any-return]

    def quiet_until(self, now: float) -> float:
        """The Unix time the current quiet window ends, or 0.0 when `now` is outside it."""
        start: dt.time = self._start  # type: ignore[attr-defined]
        end: dt.time = self._end  # type: ignore[attr-defined]
        if start == end:
            return 0.0
        local = dt.datetime.fromtimestamp(now, self.tz)
        t = local.time()
        if start < end:
            if not start <= t < end:
                return 0.0
            end_date = local.date()
        elif t >= start:
            end_date = local.date() + dt.timedelta(days=1)
        elif t < end:
            end_date = local.date()
        else:
            return 0.0
        return dt.datetime.combine(end_date, end, tzinfo=self.tz).timestamp()

    def today(self, now: float) -> dt.date:
        """The local calendar date at `now`."""
        return dt.datetime.fromtimestamp(now, self.tz).date()

    def start_of_day(self, day: dt.date) -> float:
        """Unix time of local midnight at the start of `day`."""
        return dt.datetime.combine(day, dt.time(0, 0), tzinfo=self.tz).timestamp()


def local_day(now: float, policy: QuietHoursPolicy) -> str:
    """The local day as YYYYMMDD: the bucket of the daily cap."""
    return policy.today(now).strftime("%Y%m%d")


def retry_delay_seconds(attempt: int, initial_seconds: float, max_seconds: float) -> float:
    """Delay before the attempt after failed attempt number `attempt` (1-based)."""
    exponent = max(0, attempt - 1)
    if exponent > 60:  # 2**60 s is past any cap; avoid float overflow
        return max_seconds
    return min(initial_seconds * (2.0 ** exponent), max_seconds)
