"""Core traffic-police data shared by the SMS and voice channels.

Theory of operation
-------------------
The core systems (exam scheduling, licence and vehicle registers) own the records and write
them into Redis; the gateway reads them to answer citizens and changes exactly one thing
itself: it cancels an exam booking when the citizen asks by phone or SMS (seeds 001 and
003: "cancel before the booking window closes; afterwards only in person at the vehicle
administration office, at least one day before the exam").  Everything else is read-only.

* `bookings`: exam plans and bookings, `BookingStore`, the identity check by booking
  number, and `BookingCancellation`, one Lua script over keys that share the Redis
  Cluster hash tag ``{plan:<id>}``, so two channels cancelling at once cancel once and
  release one seat.
* `people`: `Person` (licence points, status, expiry, user class), `PersonStore`, the
  identity check by caller id plus the last six characters of the ID number, and the
  GB 11643 check digit.
* `vehicles`: `Vehicle` (plate, owner, inspection due date, status), `VehicleStore`.
* `sample`: a realistic demo/test data set relative to a given day.

The key schema is gateway/store/keys.py, documented in docs/redis-schema.md.  All stores
take a `redis.asyncio.Redis` (either `decode_responses` setting works) and a `Keys`; time
is always a parameter (`now`: an aware datetime or Unix seconds), never read from a clock
here, so the Twisted shells pass `reactor.seconds()` and tests pass what they like.

Phone and ID numbers leave this package as `PhoneNumber` / `IdNumber`, which mask
themselves when printed; the summary texts for citizens never contain a whole ID number.

This module holds the small primitives the three record modules share.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone

__all__ = [
    "CHINA_TZ",
    "CorruptRecord",
    "Instant",
    "decode_hash",
    "decode_text",
    "format_cn_date",
    "format_cn_time",
    "from_unix",
    "iso_time",
    "parse_iso_date",
    "to_unix",
]

# China Standard Time.  A fixed +08:00 offset rather than zoneinfo("Asia/Shanghai"): China
# has had no daylight saving since 1991, and this needs no tzdata on minimal hosts.
CHINA_TZ = timezone(timedelta(hours=8), "CST")

Instant = datetime | float | int


class CorruptRecord(ValueError):
    """A record in Redis breaks the schema (missing field, unknown value, dangling index).

    This is a core-system data error, not bad citizen input: callers log it and answer
    "please try later / contact the office" rather than guessing.
    """


def to_unix(now: Instant) -> float:
    """Unix seconds from an aware datetime or a number; a naive datetime is refused."""
    if isinstance(now, datetime):
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("naive datetime: pass an aware datetime (Asia/Shanghai) or Unix seconds")
        return now.timestamp()
    return float(now)


def from_unix(seconds: float) -> datetime:
    """The aware China-time datetime of a Unix timestamp."""
    return datetime.fromtimestamp(seconds, CHINA_TZ)


def iso_time(seconds: float) -> str:
    """ISO 8601 with the +08:00 offset, to the second: 2026-11-27T17:00:00+08:00."""
    return from_unix(seconds).replace(microsecond=0).isoformat()


def parse_iso_date(text: str, *, field: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CorruptRecord(f"{field} is not an ISO date") from None


def format_cn_date(day: date) -> str:
    """2026年11月30日 (no zero padding, as Chinese notices write dates)."""
    return f"{day.year}年{day.month}月{day.day}日"


_CLOCK = re.compile(r"([01]?\d|2[0-3])[:：]([0-5]\d)")
_HALF_DAY_WORDS = ("凌晨", "早上", "上午", "中午", "下午", "晚上", "全天")


def half_day(hour: int) -> str:
    """上午 before noon, 下午 from noon: how a written notice qualifies a clock time."""
    return "上午" if hour < 12 else "下午"


def clock_12(hour: int, minute: int) -> str:
    """8:30, 2:00: the clock after 上午/下午 (afternoon hours as people say them)."""
    return f"{hour if hour <= 12 else hour - 12}:{minute:02d}"


def format_cn_time(text: str) -> str | None:
    """上午8:30, 下午2:00至4:00, 上午 (kept); None when not a time or a half-day word.

    From what core systems send: 08:30, 14:00-16:00, 上午, 下午.
    """
    text = text.strip()
    if text in _HALF_DAY_WORDS:
        return text
    times = [(int(m[1]), int(m[2])) for m in _CLOCK.finditer(text)]
    rest = _CLOCK.sub("", text).strip()
    if len(times) == 1 and rest == "":
        h, m = times[0]
        return half_day(h) + clock_12(h, m)
    if len(times) == 2 and rest in ("-", "~", "～", "至", "—", "–"):
        (h1, m1), (h2, m2) = times
        second = clock_12(h2, m2) if half_day(h1) == half_day(h2) else half_day(h2) + clock_12(h2, m2)
        return f"{half_day(h1)}{clock_12(h1, m1)}至{second}"
    return None


def decode_text(value: str | bytes) -> str:
    """A reply value as text, whichever `decode_responses` the client was built with."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def decode_hash(raw: Mapping[str | bytes, str | bytes]) -> dict[str, str]:
    """HGETALL's reply as a str -> str dict."""
    return {decode_text(k): decode_text(v) for k, v in raw.items()}
