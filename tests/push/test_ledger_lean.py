"""What the ledger's scripts leave out to save Redis work, against a real redis-server:
the EXPIRE at a final state when the record already lives long enough, and the events
stream's trim on every XADD (once per script instead)."""

from __future__ import annotations

from gateway.push.state import NotificationLedger, op_receipt
from tests.aio import on_asyncio
from tests.push.harness import code, pipeline

RETENTION = 86_400


@on_asyncio
async def test_final_state_keeps_a_longer_ttl_and_renews_a_shorter_one(redis_url: str) -> None:
    """Delivered within its validity, a record keeps the TTL set at acceptance (retention
    plus the validity left), which is longer than the retention: no EXPIRE.  One whose TTL
    has become shorter than the retention (final after its validity ran out) gets the
    retention again."""
    async with pipeline(redis_url, retention_seconds=RETENTION) as p:
        await p.accept(code("early"), code("late", to="13912345678"))
        key = p.keys.notification("early")
        accepted_ttl = await p.redis.ttl(key)
        assert accepted_ttl > RETENTION + 60  # retention + the code's validity
        await p.redis.expire(p.keys.notification("late"), 100)
        await p.dispatch_all()
        for notification_id in ("early", "late"):
            [message_id] = (await p.ledger.raw(notification_id))["message_ids"].split()
            await p.ledger.apply([op_receipt("cmcc", "DELIVRD", "000", [message_id.lower()])], now=p.clock.now)
            assert await p.state(notification_id) == "delivered"
        assert accepted_ttl - 5 <= await p.redis.ttl(key) <= accepted_ttl
        assert RETENTION - 5 <= await p.redis.ttl(p.keys.notification("late")) <= RETENTION


@on_asyncio
async def test_events_stream_stays_near_its_cap(redis_url: str) -> None:
    """The events stream is trimmed (MAXLEN ~) once per script: after 400 notifications'
    events with a cap of 50 it holds about the cap (whole stream nodes of 100 entries are
    dropped), not every event."""
    async with pipeline(redis_url) as p:
        await p.redis.flushall()
        ledger = NotificationLedger(p.redis, p.keys, RETENTION, events_maxlen=50)
        p.intake.ledger = ledger
        for batch in range(8):
            await p.accept(*(code(f"cap-{batch}-{i}", to=f"139{batch:03d}{i:05d}") for i in range(50)))
        assert await p.redis.zcard(p.keys.lane("high")) + await p.redis.zcard(p.keys.lane("normal")) == 400
        assert 50 <= await p.redis.xlen(p.keys.events_stream) <= 50 + 100 + 50


@on_asyncio
async def test_parts_beyond_the_first_read_are_checked_one_by_one(redis_url: str) -> None:
    """A receipt reads the first four parts' receipts with the state; a six-part message
    is delivered only when every part is, whichever part comes last."""
    async with pipeline(redis_url) as p:
        p.links[0].parts = 6
        await p.accept(code("six"))
        await p.dispatch_all()
        message_ids = (await p.ledger.raw("six"))["message_ids"].split()
        order = [0, 1, 2, 3, 5, 4]
        for done, part in enumerate(order, 1):
            await p.ledger.apply([op_receipt("cmcc", "DELIVRD", "000", [message_ids[part].lower()])],
                                 now=p.clock.now)
            assert await p.state("six") == ("delivered" if done == len(order) else "submitted")
        raw = await p.ledger.raw("six")
        assert [raw[f"p{k}"] for k in range(6)] == ["DELIVRD"] * 6
