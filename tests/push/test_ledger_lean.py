"""What the ledger's scripts leave out to save Redis work, against a real redis-server:
the EXPIRE at a final state when the record already lives long enough, the events
stream's trim on every XADD (by a script's first XADD instead), and a new claim's read of
a claim list that cannot exist yet."""

from __future__ import annotations

from gateway.push.state import AcceptItem, NotificationLedger, op_failed, op_receipt
from tests.aio import on_asyncio
from tests.push.harness import code, pipeline

RETENTION = 86_400


@on_asyncio
async def test_final_state_keeps_a_longer_ttl_and_renews_a_shorter_one(redis_url: str) -> None:
    """Delivered within its validity, a record keeps the TTL set at acceptance (retention
    plus the validity left), which is longer than the retention: no EXPIRE, and no TTL read
    either (the receipt's HMGET has expires_at).  Delivered after its validity ran out, it
    gets the retention again.  A final state reached without expires_at at hand (a failed
    submit) asks the TTL, and renews one that became shorter."""
    async with pipeline(redis_url, retention_seconds=RETENTION) as p:
        await p.accept(code("early"), code("late", to="13912345678"), code("failed", to="13712345678"))
        key = p.keys.notification("early")
        accepted_ttl = await p.redis.ttl(key)
        assert accepted_ttl > RETENTION + 60  # retention + the code's validity
        await p.dispatch_all()
        await p.redis.config_resetstat()
        [message_id] = (await p.ledger.raw("early"))["message_ids"].split()
        await p.ledger.apply([op_receipt("cmcc", "DELIVRD", "000", [message_id.lower()])], now=p.clock.now)
        stats = await p.redis.info("commandstats")
        assert "cmdstat_ttl" not in stats and "cmdstat_expire" not in stats
        assert await p.state("early") == "delivered"
        assert accepted_ttl - 5 <= await p.redis.ttl(key) <= accepted_ttl

        late = await p.ledger.raw("late")
        p.clock.now = float(late["expires_at"]) + 120  # the receipt comes after the validity
        [message_id] = late["message_ids"].split()
        await p.ledger.apply([op_receipt("cmcc", "DELIVRD", "000", [message_id.lower()])], now=p.clock.now)
        assert await p.state("late") == "delivered"
        assert RETENTION - 5 <= await p.redis.ttl(p.keys.notification("late")) <= RETENTION

        # the generic path: TTL read, EXPIRE when shorter than the retention
        await p.redis.expire(p.keys.notification("failed"), 100)
        await p.redis.hset(p.keys.notification("failed"), mapping={"state": "submitting"})
        await p.ledger.apply([op_failed("failed", "refused", False)], now=p.clock.now)
        assert await p.state("failed") == "failed"
        assert RETENTION - 5 <= await p.redis.ttl(p.keys.notification("failed")) <= RETENTION


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
async def test_claim_and_submit_run_no_xtrim_and_no_lrange(redis_url: str) -> None:
    """The calls a script makes once, whatever its batch, count at the few notifications
    per script a carrier's TPS limit leaves: a claim with a new token asks EXISTS of its
    claim list and reads nothing more, and the events stream is trimmed by the first XADD
    (MAXLEN ~), not by an XTRIM of its own.  The events are all there."""
    async with pipeline(redis_url) as p:
        await p.accept(code("lean-1"), code("lean-2", to="13912345678"))
        await p.redis.config_resetstat()
        await p.dispatch_all()
        stats = await p.redis.info("commandstats")
        assert "cmdstat_xtrim" not in stats and "cmdstat_lrange" not in stats
        assert stats["cmdstat_exists"]["calls"] >= 1  # the claim list was asked about
        assert {await p.state("lean-1"), await p.state("lean-2")} == {"submitted"}
        kinds = [fields["type"] for _, fields in await p.redis.xrange(p.keys.events_stream)]
        assert kinds.count("notification.submitting") == 2 and kinds.count("notification.submitted") == 2


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


@on_asyncio
async def test_intake_stream_keeps_what_another_consumer_holds(redis_url: str) -> None:
    """The accept script trims the intake stream below the first entry the consumer group
    still needs: entries another consumer read and has not acknowledged stay (with what
    follows them) and can still be claimed; unread entries stay; once everything read is
    acknowledged, only the unread remain."""
    async with pipeline(redis_url) as p:
        await p.redis.flushall()
        stream, group = p.keys.notify_stream, "gw"
        await p.redis.xgroup_create(stream, group, id="0", mkstream=True)
        entries = [await p.redis.xadd(stream, {"k": str(k)}) for k in range(7)]
        held = await p.redis.xreadgroup(group, "a", {stream: ">"}, count=3)
        ours = await p.redis.xreadgroup(group, "b", {stream: ">"}, count=3)
        assert [e[0] for e in held[0][1]] == entries[:3] and [e[0] for e in ours[0][1]] == entries[3:6]

        def items(ids: list[str]) -> list[AcceptItem]:
            return [AcceptItem(id=f"trim-{e}", type="verification_code", disposition="queue", lane="high",
                               fields={"to": "13812345678", "text": "x"}, entry_id=e) for e in ids]

        await p.ledger.accept(items(entries[3:6]), now=p.clock.now, stream=(stream, group))
        assert await p.redis.xlen(stream) == 7  # a's pending entries come first: nothing trimmed
        claimed = await p.redis.xautoclaim(stream, group, "b", 0, "0", count=10)
        assert [e[0] for e in claimed[1]] == entries[:3]
        await p.ledger.accept(items(entries[:3]), now=p.clock.now, stream=(stream, group))
        assert [e[0] for e in await p.redis.xrange(stream)] == entries[6:]  # the unread one
        assert (await p.redis.xpending(stream, group))["pending"] == 0


@on_asyncio
async def test_entry_with_nothing_to_record_releases_what_was_kept_behind_it(redis_url: str) -> None:
    """An entry acknowledged without a record (ack_only: e.g. an empty entry) that other
    consumers' recorded entries were kept behind: acknowledging it trims them too."""
    async with pipeline(redis_url) as p:
        await p.redis.flushall()
        stream, group = p.keys.notify_stream, "gw"
        await p.redis.xgroup_create(stream, group, id="0", mkstream=True)
        entries = [await p.redis.xadd(stream, {"k": str(k)}) for k in range(3)]
        await p.redis.xreadgroup(group, "a", {stream: ">"}, count=1)
        await p.redis.xreadgroup(group, "b", {stream: ">"}, count=2)
        await p.ledger.accept([AcceptItem(id=f"kept-{e}", type="verification_code", disposition="queue", lane="high",
                                          fields={"to": "13812345678", "text": "x"}, entry_id=e)
                               for e in entries[1:]], now=p.clock.now, stream=(stream, group))
        assert await p.redis.xlen(stream) == 3
        await p.ledger.ack_only(stream, group, entries[:1])
        assert await p.redis.xlen(stream) == 0
        assert (await p.redis.xpending(stream, group))["pending"] == 0
