"""Identity on the phone (issue 12 items 5 and 6), against the FastAGI service on a real
redis-server, with the Asterisk-faithful client of tests/peers as the caller.

Before the fix: the caller id of the owner and the booking number alone cancelled the
exam; five spoofed calls from the owner's number locked the owner out for an hour; 60
caller numbers guessing one booking got 60 answers; and an unknown booking number cost
one Redis round trip less than someone else's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.logger import LogEvent, globalLogPublisher

from gateway import metrics
from gateway.domain import from_unix
from gateway.domain.bookings import BookingStatus, BookingStore
from gateway.domain.sample import SAMPLE_CALLER, SAMPLE_CALLER_AFTER_DEADLINE, load_sample
from gateway.ivr.actions import CallContext, VoiceActions
from gateway.privacy import PhoneNumber
from gateway.store.bridge import wait_deferred
from tests.aio import on_asyncio, redis_client
from tests.ivr.test_fastagi import KEYS, fastagi, id_suffix
from tests.peers.fastagi_client import AsteriskFastAgiClient, place_call

WAY_FORWARD = "12123/attempts_way_forward"
NOW = 1_764_000_000.0


def ends_on_verdict(_: int, line: str) -> bool:
    return "not_verified" in line or "attempts_way_forward" in line or "booking_readback" in line


def played(client: AsteriskFastAgiClient) -> list[str]:
    return [p.what for p in client.played]


def stranger(n: int) -> str:
    """The n-th spoofed caller number (China Mobile 139 numbers nobody has on record)."""
    return f"1391234{n:04d}"


@on_asyncio
async def test_caller_id_and_booking_number_alone_do_not_cancel(redis_url: str) -> None:
    """From the owner's number, the right booking number with a wrong ID suffix is not
    verified and the booking stays booked (before: cancelled on the booking number alone)."""
    async with fastagi(redis_url) as h:
        booking = h.summary.cancellable_booking
        client = await h.call(callerid=SAMPLE_CALLER, inputs=["2", booking + "#", "000000", "1", "#"],
                              hangup_at=ends_on_verdict)
        assert "12123/not_verified" in played(client)
        assert not any("booking_readback" in name for name in played(client))
        stored = await BookingStore(h.redis, KEYS).get(booking)
        assert stored is not None and stored.status is BookingStatus.BOOKED


@on_asyncio
async def test_owners_id_suffix_does_not_cancel_someone_elses_booking(redis_url: str) -> None:
    """The second factor belongs to the booking's holder: the caller's own ID suffix with
    another person's booking number is not verified."""
    async with fastagi(redis_url) as h:
        booking = h.summary.after_deadline_booking  # SAMPLE_CALLER_AFTER_DEADLINE's
        client = await h.call(callerid=SAMPLE_CALLER, inputs=["2", booking + "#", id_suffix(SAMPLE_CALLER)],
                              hangup_at=ends_on_verdict)
        assert "12123/not_verified" in played(client)


@on_asyncio
async def test_spoofed_calls_do_not_lock_the_owner_out(redis_url: str) -> None:
    """attempts_per_hour failed calls spoofing the owner's number, guessing booking numbers,
    leave the owner's own booking open to them (before: locked out for an hour)."""
    async with fastagi(redis_url, attempts_per_hour=5) as h:
        for n in range(5):
            guess = await h.call(callerid=SAMPLE_CALLER, inputs=["1", f"2026120{n}{n:03d}#"], hangup_at=ends_on_verdict)
            assert "12123/not_verified" in played(guess)
        owner = await h.call(callerid=SAMPLE_CALLER, inputs=["1", h.summary.cancellable_booking + "#", "#"])
        assert any("booking_readback" in name for name in played(owner))
        assert WAY_FORWARD not in played(owner)


@on_asyncio
async def test_many_caller_numbers_guessing_one_booking_get_the_per_booking_answers(redis_url: str) -> None:
    """Fifteen spoofed numbers guessing the ID suffix of one booking, all at once: only
    attempts_per_booking_per_day (10) get a verdict, the others hear the way forward
    (before: every one of them got an answer)."""
    held_before = metrics.ivr_identity_limited.labels("booking")._value.get()
    async with fastagi(redis_url, attempts_per_booking_per_day=10) as h:
        booking = h.summary.cancellable_booking
        calls = [place_call(reactor, h.port, "12123", callerid=stranger(n), uniqueid=f"1764460950.{n}",
                            inputs=["2", booking + "#", f"{n:06d}"], hangup_at=ends_on_verdict)
                 for n in range(15)]
        results = await wait_deferred(DeferredList(calls, fireOnOneErrback=True, consumeErrors=True))
        await wait_deferred(h.service.when_idle())
        heard = [played(client) for _, client in results]
        assert sum("12123/not_verified" in names for names in heard) == 10
        assert sum(WAY_FORWARD in names for names in heard) == 5
        assert metrics.ivr_identity_limited.labels("booking")._value.get() - held_before == 5
        assert int(await h.redis.get(KEYS.ivr_attempts_booking(booking))) == 10
        assert 0 < await h.redis.ttl(KEYS.ivr_attempts_booking(booking)) <= 86_400


@on_asyncio
async def test_enumeration_is_counted_and_repeat_guessers_are_held(redis_url: str) -> None:
    """Past enumeration_failures_per_minute, failures are counted in the metric and a number
    that already failed gets no further check (the way forward instead)."""
    suspected_before = metrics.ivr_enumeration_suspected._value.get()
    logged: list[LogEvent] = []
    globalLogPublisher.addObserver(logged.append)
    async with fastagi(redis_url, enumeration_failures_per_minute=5) as h:
        try:
            for n in range(6):
                await h.call(callerid=stranger(100 + n), inputs=["1", f"2026121{n}{n:03d}#"], hangup_at=ends_on_verdict)
        finally:
            globalLogPublisher.removeObserver(logged.append)
        assert metrics.ivr_enumeration_suspected._value.get() - suspected_before >= 1
        assert any("enumeration suspected" in e.get("log_format", "") for e in logged)
        again = await h.call(callerid=stranger(100), inputs=["1", "20261219999#"], hangup_at=ends_on_verdict)
        assert WAY_FORWARD in played(again) and "12123/not_verified" not in played(again)


@on_asyncio
async def test_lock_out_tells_the_way_forward_and_reaches_an_agent(redis_url: str) -> None:
    """A held check says how to go on (SMS from the phone on record, or an agent) and 0
    transfers the caller to the agents within the service hours."""
    async with fastagi(redis_url, attempts_per_hour=1, service_hours="00:00-00:00") as h:
        await h.call(callerid=SAMPLE_CALLER, inputs=["1", "20991231999#"], hangup_at=ends_on_verdict)
        client = await h.call(callerid=SAMPLE_CALLER, inputs=["1", "20991231999#", "0"])
        assert WAY_FORWARD in played(client)
        assert client.variables == {"IVR_TRANSFER_QUEUE": "12123-agents"}


async def _commands_of_check(r: Any, actions: VoiceActions, caller: str, entry: str) -> Mapping[str, int]:
    """Redis commands (by name, with their number of calls) that one status check ran."""
    await r.config_resetstat()
    context = CallContext(caller=PhoneNumber.cn_mobile(caller), variables={"identity": entry}, now=NOW)
    result = await actions.run("booking_status", context)
    assert result.outcome == "not_verified"
    stats = await r.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()
            if name not in ("cmdstat_config", "cmdstat_info")}


@on_asyncio
async def test_no_such_booking_and_not_yours_cost_the_same_redis_work(redis_url: str) -> None:
    """An unknown booking number and someone else's run the same Redis commands, the same
    number of times (before: the unknown one skipped the booking read)."""
    async with redis_client(redis_url) as r:
        summary = await load_sample(r, KEYS, today=from_unix(NOW).date())
        actions = VoiceActions(r, KEYS, attempts_per_hour=1000, attempts_per_caller_per_hour=1000)
        # One check first: the script is loaded and the caller's and the global counters
        # exist, as they would for both checks alike in a call.
        await _commands_of_check(r, actions, SAMPLE_CALLER, "20991231998")
        someone_elses = await _commands_of_check(r, actions, SAMPLE_CALLER, summary.after_deadline_booking)
        unknown = await _commands_of_check(r, actions, SAMPLE_CALLER, "20991231999")
        assert someone_elses == unknown
        assert someone_elses.get("cmdstat_hgetall") == 1
        assert SAMPLE_CALLER_AFTER_DEADLINE != SAMPLE_CALLER
