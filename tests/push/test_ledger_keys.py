"""The ledger's scripts touch only keys declared in KEYS (Redis Cluster routes by them),
so lane heads and due members are read first; what changes between that read and the
script is handled, against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.push.state import NotificationLedger, _declare_op, op_accepted, op_receipt
from tests.aio import on_asyncio
from tests.push.harness import code, pipeline


@on_asyncio
async def test_script_refuses_a_key_it_was_not_given(redis_url: str) -> None:
    """A ledger script asked to touch a notification that is not in its KEYS fails
    instead of building the key name itself."""
    async with pipeline(redis_url) as p:
        await p.accept(code("known"))
        with pytest.raises(ResponseError, match="not declared in KEYS: nknown"):
            await p.ledger._run(p.ledger._transition, p.clock.now, ["known", "failed", 0, 0])
        assert await p.state("known") == "queued"


@on_asyncio
async def test_two_processes_claiming_at_once_share_the_lane_without_overlap(redis_url: str) -> None:
    """Two ledgers (two processes) claiming the same lane concurrently read the same head;
    each notification is claimed by exactly one of them, and all are claimed."""
    async with pipeline(redis_url) as p:
        await p.accept(*(code(f"n{i}", to=f"139{i:08d}") for i in range(300)))
        other = Redis.from_url(redis_url, decode_responses=True)
        try:
            second = NotificationLedger(other, p.keys, 86_400)
            taken: list[str] = []
            for _ in range(40):
                a, b = await asyncio.gather(
                    p.ledger.claim(50, now=p.clock.now, lease_seconds=30, quiet_until=0),
                    second.claim(50, now=p.clock.now, lease_seconds=30, quiet_until=0))
                taken += [c.id for c in a] + [c.id for c in b]
                if not a and not b:
                    break
        finally:
            await other.aclose()
        assert sorted(taken) == sorted(f"n{i}" for i in range(300))
        assert await p.redis.zcard(p.keys.inflight) == 300


@on_asyncio
async def test_sweep_skips_a_lease_renewed_after_it_was_read(redis_url: str) -> None:
    """Recovery reads the expired leases, then the live process renews one before the
    script runs: that one stays in flight, the other is recovered."""
    async with pipeline(redis_url) as p:
        await p.accept(code("alive"), code("dead", to="13912345678"))
        await p.ledger.claim(2, now=p.clock.now, lease_seconds=30, quiet_until=0)
        later = p.clock.now + 31
        expired = await p.redis.zrangebyscore(p.keys.inflight, "-inf", later)
        assert sorted(expired) == ["alive", "dead"]
        await p.ledger.renew_leases(["alive"], deadline=later + 30)
        declared = p.ledger._declared()
        for notification_id in expired:
            declared.notification(notification_id)
        payload = await p.ledger._run(p.ledger._recover, later, [f"{later:.3f}", 2, *expired], declared)
        assert payload == ["1"]
        assert await p.state("alive") == "submitting" and await p.state("dead") == "queued"


@on_asyncio
async def test_receipt_whose_index_entry_appears_meanwhile_is_sent_again(redis_url: str) -> None:
    """A receipt looked up before its message id was indexed reaches the script after the
    entry was written: the script leaves it (its notification is not declared) and says
    so, and `apply` sends it again with the notification declared: delivered, not parked."""
    async with pipeline(redis_url) as p:
        await p.accept(code("fast"))
        await p.ledger.claim(1, now=p.clock.now, lease_seconds=30, quiet_until=0)
        receipt = op_receipt("cmcc", "DELIVRD", "000", ["m1"])
        declared = p.ledger._declared()
        _declare_op(declared, receipt)  # as resolved while m1 was not yet indexed
        await p.ledger.apply([op_accepted("fast", "cmcc", ["m1"])], now=p.clock.now)
        again = (await p.ledger._run(p.ledger._outcomes, p.clock.now, [1, 86_400, 1_000_000, *receipt], declared))[0]
        assert again == ["1"] and await p.state("fast") == "submitted"
        await p.ledger.apply([receipt], now=p.clock.now)
        assert await p.state("fast") == "delivered"
        assert await p.redis.exists(p.keys.early_receipt("cmcc", "m1")) == 0


@on_asyncio
async def test_receipt_and_its_submit_in_one_batch_is_applied(redis_url: str) -> None:
    """The accepted submit and its receipt in one batch (receipt looked up before the
    index entry existed): the script finds the entry the batch just wrote and applies it."""
    async with pipeline(redis_url) as p:
        await p.accept(code("fast"))
        await p.ledger.claim(1, now=p.clock.now, lease_seconds=30, quiet_until=0)
        await p.ledger.apply([op_accepted("fast", "cmcc", ["m1"]), op_receipt("cmcc", "DELIVRD", "000", ["m1"])],
                             now=p.clock.now)
        assert await p.state("fast") == "delivered"
        assert await p.redis.exists(p.keys.early_receipt("cmcc", "m1")) == 0


@on_asyncio
async def test_events_final_appends_only_final_states_and_off_none(redis_url: str) -> None:
    """push.events final: one event per notification, at its final state (the hash still
    records every state's time); off: no notification events at all."""
    for mode, expected in (("final", ["notification.delivered"]), ("off", [])):
        async with pipeline(redis_url, events=mode) as p:
            await p.redis.flushall()
            await p.accept(code(f"ev-{mode}"))
            await p.dispatch_all()
            [message_id] = (await p.ledger.raw(f"ev-{mode}"))["message_ids"].split()
            await p.ledger.apply([op_receipt("cmcc", "DELIVRD", "000", [message_id.lower()])], now=p.clock.now)
            raw = await p.ledger.raw(f"ev-{mode}")
            assert raw["state"] == "delivered" and raw["queued_at"] and raw["submitted_at"]
            assert [e["type"] for e in await p.events(f"ev-{mode}")] == expected
