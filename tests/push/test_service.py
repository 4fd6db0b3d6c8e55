"""PushService on the reactor with a real redis-server: the loops take work from the
stream to the carrier, stop drains in-flight submits, and a Redis restart in the
middle loses nothing (the loops log, back off and carry on)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from gateway.config import PushConfig
from gateway.ports import SubmitAccepted
from gateway.push.render import load_templates
from gateway.push.service import PushService
from gateway.store.bridge import wait_deferred
from gateway.store.embedded import RedisServerProcess
from gateway.store.keys import Keys
from gateway.store.service import make_client
from tests.aio import on_asyncio
from tests.push.harness import TEMPLATES_FILE, EventWaiter, ScriptedLink

CODE = json.dumps({"code": "246810", "minutes": "5"})


# push.ledger_engine: the tests the service's failure handling depends on run with both
ENGINES = pytest.mark.parametrize("engine", ["scripts", "steps"])


def start(redis: Any, links: list[ScriptedLink], engine: str = "scripts", **kw: Any) -> PushService:
    service = PushService(redis, Keys(), PushConfig(claim_idle_seconds=1.0, ledger_engine=engine),
                          load_templates(TEMPLATES_FILE),
                          links, reactor, drain_timeout_seconds=5.0, backoff_initial_seconds=0.05,
                          backoff_max_seconds=0.2, **kw)
    service.startService()
    return service


async def xadd(redis: Any, notification_id: str, to: str = "13800138000") -> None:
    await redis.xadd(Keys().notify_stream, {"id": notification_id, "type": "verification_code",
                                            "to": to, "params": CODE})


@ENGINES
@on_asyncio
async def test_running_service_submits_stream_entries(redis_url: str, engine: str) -> None:
    """With the service running, an XADDed request is submitted without any manual step."""
    redis = make_client(redis_url)
    link = ScriptedLink("cmcc", ("138",))
    service = start(redis, [link], engine)
    try:
        await xadd(redis, "svc-1")
        assert await EventWaiter(redis, Keys()).wait_for("svc-1", {"submitted"}) == "submitted"
        assert [s.reference for s in link.submitted] == ["svc-1"]
    finally:
        await wait_deferred(service.stopService())
        await redis.aclose()


@on_asyncio
async def test_each_carriers_unmatched_receipt_series_are_listed_from_the_start(redis_url: str) -> None:
    """The per-carrier counters that Gateway12123ReceiptsUnmatched subtracts are there at 0
    for every carrier before its first receipt: a missing series would drop that carrier
    from the alert's arithmetic."""
    from gateway import metrics

    names = ("gateway12123_push_receipts_early_total", "gateway12123_push_receipts_early_applied_total",
             "gateway12123_push_receipts_unparked_total")
    assert all(metrics.REGISTRY.get_sample_value(name, {"carrier": "series-probe"}) is None for name in names)
    redis = make_client(redis_url)
    service = start(redis, [ScriptedLink("series-probe", ("199",))])
    try:
        assert all(metrics.REGISTRY.get_sample_value(name, {"carrier": "series-probe"}) == 0.0 for name in names)
    finally:
        await wait_deferred(service.stopService())
        await redis.aclose()


@on_asyncio
async def test_stop_waits_for_in_flight_submits(redis_url: str) -> None:
    """stopService returns only after the held submit's outcome is recorded."""
    redis = make_client(redis_url)
    link = ScriptedLink("cmcc", ("138",), script=["hold"])
    service = start(redis, [link])
    await xadd(redis, "drain-1")
    await wait_deferred(link.when_held())
    stopped = service.stopService()
    assert not stopped.called
    _, d = link.held.pop()
    d.callback(SubmitAccepted("cmcc", ("ff01",)))
    await wait_deferred(stopped)
    assert await redis.hget(Keys().notification("drain-1"), "state") == "submitted"
    await redis.aclose()


@ENGINES
@on_asyncio
async def test_redis_restart_loses_nothing(tmp_path: Path, engine: str) -> None:
    """Redis stops and comes back (AOF): the loops log the outage, recover, and go on."""
    server = RedisServerProcess(data_dir=tmp_path / "redis")
    server.start()
    redis = make_client(server.url, reconnect_max_delay_seconds=0.2)
    link = ScriptedLink("cmcc", ("138",))
    service = start(redis, [link], engine)
    outage_seen: Deferred[None] = Deferred()

    def observe(event: dict[str, Any]) -> None:
        if "redis unavailable" in (event.get("log_format") or "") and not outage_seen.called:
            outage_seen.callback(None)

    globalLogPublisher.addObserver(observe)
    try:
        await xadd(redis, "before")
        assert await EventWaiter(redis, Keys()).wait_for("before", {"submitted"}) == "submitted"
        server.stop()
        await wait_deferred(outage_seen)
        server.start()
        await xadd(redis, "after", to="13912345678")
        waiter = EventWaiter(redis, Keys())
        assert await waiter.wait_for("after", {"submitted"}) == "submitted"
        assert await redis.hget(Keys().notification("before"), "state") == "submitted"
        assert [s.reference for s in link.submitted] == ["before", "after"]
    finally:
        globalLogPublisher.removeObserver(observe)
        await wait_deferred(service.stopService())
        await redis.aclose()
        server.stop()


@ENGINES
@pytest.mark.parametrize("next_start_reads", ["the same file", "it as an earlier version's"])
@on_asyncio
async def test_outcomes_redis_refuses_until_the_stop_are_recorded_at_the_next_start(
        redis_url: str, tmp_path: Path, next_start_reads: str, engine: str) -> None:
    """Redis refuses writes (OOM) from before a submit's response until after the stop:
    the stop saves the outcome to the hand-over file instead of leaving it to the lease,
    and the next start records it first: the notification ends submitted and the second
    service sends nothing again.  The same when the next start is a version that keeps
    the file elsewhere (state_dir moved from the config's folder to the working one)."""
    from tests.store.test_refusals import OOM, refusing

    redis = make_client(redis_url)
    handed_over = tmp_path / "push-unrecorded-outcomes.json"
    first_link = ScriptedLink("cmcc", ("138",), script=["hold"])
    service = start(redis, [first_link], engine, unrecorded_outcomes_file=handed_over, redis_scope="test")
    service.drain_timeout_seconds = 1.0
    await redis.set("filler", "x" * 10_000)
    await xadd(redis, "handover-1")
    await wait_deferred(first_link.when_held())
    with refusing(redis_url, *OOM):
        _, held = first_link.held.pop()
        held.callback(SubmitAccepted("cmcc", ("ab01",)))
        await wait_deferred(service.stopService())
        assert handed_over.exists(), "the stop did not hand the refused outcome over"
        assert await redis.hget(Keys().notification("handover-1"), "state") == "submitting"
    second_link = ScriptedLink("cmcc", ("138",))
    if next_start_reads == "the same file":
        second = start(redis, [second_link], engine, unrecorded_outcomes_file=handed_over, redis_scope="test")
    else:
        second = start(redis, [second_link], engine, unrecorded_outcomes_file=tmp_path / "run" / handed_over.name,
                       earlier_unrecorded_outcomes_files=[handed_over], redis_scope="test")
    try:
        assert await EventWaiter(redis, Keys()).wait_for("handover-1", {"submitted"}) == "submitted"
        assert await redis.hget(Keys().notification("handover-1"), "message_ids") == "ab01"
        await second.writer.flushed()
        assert not handed_over.exists()
        assert second_link.submitted == []
    finally:
        await wait_deferred(second.stopService())
        await redis.aclose()


@pytest.mark.timeout(20)  # the spin this guards against never yields: the alarm ends it
@on_asyncio
async def test_dispatch_loop_yields_with_more_in_flight_than_its_maximum(redis_url: str) -> None:
    """With more notifications in flight than push.max_in_flight (a replayed claim can
    bring that), the dispatch loop waits like an idle one.  It used to go round without
    awaiting anything, and the whole process froze: no log, no /healthz, no SIGTERM
    (seen after a Cluster master failover, 2026-12-02)."""
    redis = make_client(redis_url)
    link = ScriptedLink("cmcc", ("138",))
    service = start(redis, [link])
    try:
        await xadd(redis, "before")
        assert await EventWaiter(redis, Keys()).wait_for("before", {"submitted"}) == "submitted"
        service.dispatcher.max_in_flight = -1  # free_slots() < 0, as with one batch too many
        started = time.monotonic()
        for _ in range(10):
            await asyncio.sleep(0.05)  # returns only when the reactor gets to run
        # A spinning loop is ended only by pytest-timeout's alarm (raised in it) after 20 s.
        assert time.monotonic() - started < 10.0
    finally:
        await wait_deferred(service.stopService())
        await redis.aclose()
