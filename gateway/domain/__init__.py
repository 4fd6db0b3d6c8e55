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

from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone

__all__ = [
    "CHINA_TZ",
    "CorruptRecord",
    "Instant",
    "decode_hash",
    "decode_text",
    "format_cn_date",
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


def decode_text(value: str | bytes) -> str:
    """A reply value as text, whichever `decode_responses` the client was built with."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def decode_hash(raw: Mapping[str | bytes, str | bytes]) -> dict[str, str]:
    """HGETALL's reply as a str -> str dict."""
    return {decode_text(k): decode_text(v) for k, v in raw.items()}
