"""PushService on the reactor with a real redis-server: the loops take work from the
stream to the carrier, stop drains in-flight submits, and a Redis restart in the
middle loses nothing (the loops log, back off and carry on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def start(redis: Any, links: list[ScriptedLink], **kw: Any) -> PushService:
    service = PushService(redis, Keys(), PushConfig(claim_idle_seconds=1.0), load_templates(TEMPLATES_FILE),
                          links, reactor, drain_timeout_seconds=5.0, backoff_initial_seconds=0.05,
                          backoff_max_seconds=0.2, **kw)
    service.startService()
    return service


async def xadd(redis: Any, notification_id: str, to: str = "13800138000") -> None:
    await redis.xadd(Keys().notify_stream, {"id": notification_id, "type": "verification_code",
                                            "to": to, "params": CODE})


@on_asyncio
async def test_running_service_submits_stream_entries(redis_url: str) -> None:
    """With the service running, an XADDed request is submitted without any manual step."""
    redis = make_client(redis_url)
    link = ScriptedLink("cmcc", ("138",))
    service = start(redis, [link])
    try:
        await xadd(redis, "svc-1")
        assert await EventWaiter(redis, Keys()).wait_for("svc-1", {"submitted"}) == "submitted"
        assert [s.reference for s in link.submitted] == ["svc-1"]
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


@on_asyncio
async def test_redis_restart_loses_nothing(tmp_path: Path) -> None:
    """Redis stops and comes back (AOF): the loops log the outage, recover, and go on."""
    server = RedisServerProcess(data_dir=tmp_path / "redis")
    server.start()
    redis = make_client(server.url, reconnect_max_delay_seconds=0.2)
    link = ScriptedLink("cmcc", ("138",))
    service = start(redis, [link])
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
