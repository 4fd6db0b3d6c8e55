"""The dispatcher against a real redis-server with scripted carrier links: priority
lanes, quiet hours and expiry at claim time, prefix routing and failover, retries with
backoff, dead-letter retry, and lease recovery after a crash."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.ports import SubmitFailed
from gateway.push.deadletters import list_dead_letters, retry_dead_letters
from gateway.push.intake import IntakeConsumer
from tests.aio import on_asyncio
from tests.push.harness import (
    CMCC_NUMBER,
    CUCC_NUMBER,
    MORNING,
    POLICY,
    ScriptedLink,
    code,
    inspection,
    pipeline,
    points,
)


@on_asyncio
async def test_verification_code_overtakes_a_bulk_backlog(redis_url: str) -> None:
    """With thousands of bulk reminders queued, a code accepted last is submitted first."""
    async with pipeline(redis_url, daily_cap_bulk=10, batch_size=100) as p:
        backlog = [inspection(f"bulk-{i}", to=f"138{i:08d}") for i in range(3000)]
        for start in range(0, len(backlog), 500):
            await p.accept(*backlog[start:start + 500])
        await p.accept(code("otp"))
        assert await p.dispatcher.dispatch_once() == 100
        submitted = [sms.reference for sms in p.links[0].submitted]
        assert submitted[0] == "otp"
        assert submitted[1:] == [f"bulk-{i}" for i in range(99)]


@on_asyncio
async def test_lower_lanes_get_a_small_share_during_a_flood(redis_url: str) -> None:
    """A full batch of high-priority work still lets 5 % bulk through (no starvation)."""
    async with pipeline(redis_url, batch_size=100) as p:
        await p.accept(*(code(f"otp-{i}", to=f"139{i:08d}") for i in range(300)))
        await p.accept(inspection("bulk-0"))
        await p.dispatcher.dispatch_once()
        lanes = [sms.reference.split("-")[0] for sms in p.links[0].submitted]
        assert lanes.count("bulk") == 1 and lanes.count("otp") == 99


@on_asyncio
async def test_queued_reminder_reaching_quiet_hours_waits_for_morning(redis_url: str) -> None:
    """A reminder queued at 21:59 but claimed at 22:01 is scheduled for 08:00, not sent."""
    async with pipeline(redis_url, now=MORNING + 11 * 3600 + 59 * 60) as p:
        await p.accept(inspection("late"), code("otp"))
        p.clock.advance(2 * 60)
        await p.dispatch_all()
        assert [sms.reference for sms in p.links[0].submitted] == ["otp"]
        assert await p.state("late") == "scheduled"
        morning = POLICY.quiet_until(p.clock.now)
        assert await p.redis.zscore(p.keys.scheduled, "late") == morning
        p.clock.now = morning
        assert await p.ledger.promote_due(now=morning) == 1
        await p.dispatch_all()
        assert await p.state("late") == "submitted"


@on_asyncio
async def test_expired_before_submit_is_not_sent(redis_url: str) -> None:
    """A code whose 10-minute validity passed while queued becomes expired, unsent."""
    async with pipeline(redis_url) as p:
        await p.accept(code("slow"))
        p.clock.advance(601)
        await p.dispatch_all()
        assert p.links[0].submitted == []
        assert await p.state("slow") == "expired"


@on_asyncio
async def test_numbers_route_by_longest_prefix(redis_url: str) -> None:
    """138... goes to the carrier with 138, 1703... to the MVNO segment over 170."""
    links = [ScriptedLink("cmcc", ("138", "170")), ScriptedLink("mvno", ("1703",)), ScriptedLink("cucc", ("130",))]
    async with pipeline(redis_url, links) as p:
        await p.accept(code("a", to=CMCC_NUMBER), code("b", to="17031234567"), code("c", to="17001234567"),
                       code("d", to=CUCC_NUMBER))
        await p.dispatch_all()
        assert [s.reference for s in links[0].submitted] == ["a", "c"]
        assert [s.reference for s in links[1].submitted] == ["b"]
        assert [s.reference for s in links[2].submitted] == ["d"]
        raw = await p.ledger.raw("b")
        assert raw["state"] == "submitted" and raw["carrier"] == "mvno" and raw["message_ids"]


@on_asyncio
async def test_unbound_carrier_fails_over(redis_url: str) -> None:
    """When the number's carrier link is down, another carrier takes the message."""
    async with pipeline(redis_url) as p:
        p.links[0].bound = False
        await p.accept(code("fo"))
        await p.dispatch_all()
        assert [s.reference for s in p.links[1].submitted] == ["fo"]
        assert (await p.ledger.raw("fo"))["carrier"] == "cucc"


@on_asyncio
async def test_permanent_refusal_fails_over_then_fails(redis_url: str) -> None:
    """A permanent refusal moves the message to the next carrier; refused everywhere, it fails."""
    async with pipeline(redis_url) as p:
        refusal = SubmitFailed("invalid destination", transient=False, status="ESME_RINVDSTADR")
        p.links[0].script = [refusal]
        await p.accept(code("perm"))
        await p.dispatch_all()
        raw = await p.ledger.raw("perm")
        assert raw["state"] == "submitted" and raw["carrier"] == "cucc" and raw["failed_carriers"] == "cmcc"

        p.links[0].script = [refusal]
        p.links[1].script = [refusal]
        await p.accept(code("dead"))
        await p.dispatch_all()
        raw = await p.ledger.raw("dead")
        assert raw["state"] == "failed"
        assert raw["error"] == "cucc: ESME_RINVDSTADR invalid destination"
        assert await p.redis.zscore(p.keys.dead_letters, "dead") is not None


@on_asyncio
async def test_no_bound_carrier_keeps_work_queued(redis_url: str) -> None:
    """With every link down nothing is claimed; the work waits in its lane."""
    async with pipeline(redis_url) as p:
        for link in p.links:
            link.bound = False
        await p.accept(code("wait"))
        assert await p.dispatcher.dispatch_once() == 0
        assert await p.state("wait") == "queued"


@on_asyncio
async def test_transient_failures_retry_with_backoff_then_fail(redis_url: str) -> None:
    """Throttled submits are retried after 2 s, then 4 s; after max_attempts the state is failed."""
    async with pipeline(redis_url, max_attempts=3) as p:
        throttled = SubmitFailed("throttled", transient=True, status="ESME_RTHROTTLED")
        p.links[0].script = [throttled, throttled, throttled]
        await p.accept(code("flaky"))
        await p.dispatch_all()
        raw = await p.ledger.raw("flaky")
        assert raw["state"] == "scheduled" and raw["scheduled_reason"] == "retry"
        assert float(raw["due_at"]) == p.clock.now + 2
        p.clock.advance(1.9)
        assert await p.ledger.promote_due(now=p.clock.now) == 0
        p.clock.advance(0.1)
        assert await p.ledger.promote_due(now=p.clock.now) == 1
        await p.dispatch_all()
        assert float((await p.ledger.raw("flaky"))["due_at"]) == p.clock.now + 4
        p.clock.advance(4)
        await p.ledger.promote_due(now=p.clock.now)
        await p.dispatch_all()
        raw = await p.ledger.raw("flaky")
        assert raw["state"] == "failed" and raw["attempts"] == "3"
        assert raw["error"] == "cmcc: ESME_RTHROTTLED throttled"
        assert len(p.links[0].submitted) == 3


def link_lost() -> SubmitFailed:
    return SubmitFailed("link lost", transient=True, response_unknown=True, link_down=True)


async def retry_due(p: Any, seconds: float = 2.0) -> None:
    p.clock.advance(seconds)
    await p.ledger.promote_due(now=p.clock.now)
    await p.dispatch_all()


@on_asyncio
async def test_link_going_away_does_not_spend_attempts(redis_url: str) -> None:
    """Five submits cut off by lost links, then one accepted: submitted on its first
    attempt, each cut-off scheduled 2 s later as link_down and counted as a possible
    duplicate (the submit_sm may have reached the carrier)."""
    async with pipeline(redis_url, max_attempts=3) as p:
        p.links[0].script = [link_lost() for _ in range(5)]
        await p.accept(code("flap"))
        await p.dispatch_all()
        raw = await p.ledger.raw("flap")
        assert raw["state"] == "scheduled" and raw["scheduled_reason"] == "link_down"
        assert float(raw["due_at"]) == p.clock.now + 2 and raw["attempts"] == "0"
        for _ in range(5):
            await retry_due(p)
        raw = await p.ledger.raw("flap")
        assert raw["state"] == "submitted" and raw["attempts"] == "1"
        assert raw["link_losses"] == "5" and raw["possible_duplicates"] == "5"
        assert len(p.links[0].submitted) == 6


@on_asyncio
async def test_link_losses_beyond_the_cap_spend_attempts_until_failed(redis_url: str) -> None:
    """With max_link_losses 2, the third cut-off counts as an attempt: a link that never
    holds ends the notification failed after 2 free and 3 counted submits."""
    async with pipeline(redis_url, max_attempts=3, max_link_losses=2) as p:
        p.links[0].script = [link_lost() for _ in range(10)]
        await p.accept(code("doomed"))
        await p.dispatch_all()
        for _ in range(6):
            await retry_due(p, 60)
        raw = await p.ledger.raw("doomed")
        assert raw["state"] == "failed" and raw["error"] == "cmcc: link lost"
        assert raw["attempts"] == "3" and raw["link_losses"] == "5"
        assert len(p.links[0].submitted) == 5


@on_asyncio
async def test_unknown_response_counts_a_possible_duplicate(redis_url: str) -> None:
    """A submit whose response never came is retried and flagged as a possible duplicate."""
    async with pipeline(redis_url) as p:
        p.links[0].script = [SubmitFailed("response timeout", transient=True, response_unknown=True)]
        await p.accept(code("maybe"))
        await p.dispatch_all()
        assert (await p.ledger.raw("maybe"))["possible_duplicates"] == "1"


@on_asyncio
async def test_dead_letter_retry_revalidates_and_sends(redis_url: str) -> None:
    """A failed notification retried from the dead letters is accepted afresh and sent."""
    async with pipeline(redis_url, max_attempts=1) as p:
        p.links[0].script = [SubmitFailed("queue full", transient=True, status="ESME_RMSGQFUL")]
        await p.accept(points("dl"))
        await p.dispatch_all()
        [row] = await list_dead_letters(p.redis, p.keys)
        assert row["id"] == "dl" and row["state"] == "failed" and row["to"] == "138****8000"
        assert [r["retried"] for r in await retry_dead_letters(p.redis, p.keys, ["dl", "nope"])] == [True, False]
        consumer = IntakeConsumer(p.intake, p.redis, p.keys, group="gateway", consumer="t")
        await consumer.ensure_group()
        await consumer.read_once()
        raw = await p.ledger.raw("dl")
        assert raw["state"] == "queued" and raw.get("attempts", "0") == "0" and raw["source"] == "retry"
        assert await list_dead_letters(p.redis, p.keys) == []
        await p.dispatch_all()
        assert await p.state("dl") == "submitted"


@on_asyncio
async def test_lost_lease_puts_the_message_back_counting_a_possible_duplicate(redis_url: str) -> None:
    """A claim whose process died (lease not renewed) is queued again at the front."""
    async with pipeline(redis_url) as p:
        p.links[0].script = ["hold"]
        await p.accept(code("crash"), code("other", to="13912345678"))
        await p.dispatcher.dispatch_once()
        await p.writer.flushed()
        assert await p.state("crash") == "submitting"
        assert (await p.ledger.raw("crash"))["submit_started_at"]
        # The process "dies": nobody renews; the lease (30 s) runs out.
        assert await p.ledger.recover_expired_leases(now=p.clock.now + 29) == 0
        assert await p.ledger.recover_expired_leases(now=p.clock.now + 31) == 1
        raw = await p.ledger.raw("crash")
        assert raw["state"] == "queued" and raw["possible_duplicates"] == "1"
        assert await p.redis.zrange(p.keys.lane("high"), 0, 0) == ["crash"]


@on_asyncio
async def test_claim_sent_again_with_its_token_gets_the_same_batch(redis_url: str) -> None:
    """A claim repeated with its token (its reply was lost) returns the batch it took,
    with the same attempt numbers, and takes nothing new from the lanes."""
    async with pipeline(redis_url) as p:
        await p.accept(*(code(f"c{i}", to=f"139{i:08d}") for i in range(5)))
        first = await p.ledger.claim(3, now=p.clock.now, lease_seconds=30, quiet_until=0, token="t1")
        again = await p.ledger.claim(3, now=p.clock.now, lease_seconds=30, quiet_until=0, token="t1")
        assert [c.id for c in first] == [c.id for c in again] == ["c0", "c1", "c2"]
        assert [c.attempts for c in again] == [1, 1, 1] and again[0].digits == "13900000000"
        assert await p.redis.zcard(p.keys.lane("high")) == 2
        fresh = await p.ledger.claim(3, now=p.clock.now, lease_seconds=30, quiet_until=0, token="t2")
        assert [c.id for c in fresh] == ["c3", "c4"]


@on_asyncio
async def test_claim_replayed_after_its_lease_ran_out_gives_nothing_back(redis_url: str) -> None:
    """Once recovery has put a lost claim's batch back and another claim took it, the old
    token returns nothing: the batch is never submitted twice by token."""
    async with pipeline(redis_url) as p:
        await p.accept(code("late"))
        await p.ledger.claim(1, now=p.clock.now, lease_seconds=30, quiet_until=0, token="old")
        assert await p.ledger.recover_expired_leases(now=p.clock.now + 31) == 1
        taken = await p.ledger.claim(1, now=p.clock.now + 31, lease_seconds=30, quiet_until=0, token="new")
        assert [c.id for c in taken] == ["late"]
        assert await p.ledger.claim(1, now=p.clock.now + 32, lease_seconds=30, quiet_until=0, token="old") == []


@on_asyncio
async def test_claim_that_ran_in_some_partitions_only_is_replayed_within_its_size(redis_url: str) -> None:
    """A claim over several partitions whose script ran in some and failed in another
    (that partition's master away) is sent again with its token: the partitions that
    ran replay their share, and only the rest of `n` is taken anew.  Taking a full `n`
    besides put more than max_in_flight in flight; the dispatcher then returned at once
    without awaiting and the reactor froze (a Cluster failover, 2026-12-02)."""
    async with pipeline(redis_url, partitions=2) as p:
        # 4 notifications in partition 0, 20 in partition 1; partition 1's script fails.
        ids: dict[int, list[str]] = {0: [], 1: []}
        i = 0
        while len(ids[0]) < 4 or len(ids[1]) < 20:
            part = p.keys.partition_of(f"c{i}")
            if len(ids[part]) < (4 if part == 0 else 20):
                ids[part].append(f"c{i}")
            i += 1
        await p.accept(*(code(n, to=f"139{int(n[1:]):08d}") for n in ids[0] + ids[1]))
        ledger = p.ledger
        real = ledger._claim_partition

        async def partition_1_away(partition: int, *args: Any, **kwargs: Any) -> Any:
            if partition == 1:
                await asyncio.sleep(0.3)  # partition 0's script runs meanwhile
                raise RedisConnectionError("master away")
            return await real(partition, *args, **kwargs)

        ledger._claim_partition = partition_1_away  # type: ignore[method-assign]
        with pytest.raises(RedisConnectionError):
            await ledger.claim(8, now=p.clock.now, lease_seconds=30, quiet_until=0, token="t")
        ledger._claim_partition = real  # type: ignore[method-assign]
        assert await p.redis.zcard(p.keys.partition(0).lane("high")) == 0  # partition 0 took its 4
        again = await ledger.claim(8, now=p.clock.now, lease_seconds=30, quiet_until=0, token="t")
        assert sorted(c.id for c in again if c.id in ids[0]) == sorted(ids[0])
        assert len(again) == 8, [c.id for c in again]


class ReplyLostLedger:
    """The ledger, except that the first claim runs in Redis and then its reply is lost
    (as when the connection drops or redis-server restarts right after the script)."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        claimed = await self.ledger.claim(*args, **kwargs)
        if not self.lost:
            self.lost = len(claimed)
            raise RedisConnectionError("Connection closed by server.")
        return claimed


@on_asyncio
async def test_claim_whose_reply_was_lost_is_submitted_once_without_waiting(redis_url: str) -> None:
    """The dispatcher's next claim carries the lost claim's token, so that batch goes out
    at once, each message once, and no possible duplicate is counted."""
    async with pipeline(redis_url) as p:
        await p.accept(*(code(f"m{i}", to=f"139{i:08d}") for i in range(4)))
        p.dispatcher.ledger = ReplyLostLedger(p.ledger)  # type: ignore[assignment]
        with pytest.raises(RedisConnectionError):
            await p.dispatcher.dispatch_once()
        assert p.dispatcher.ledger.lost == 4  # type: ignore[attr-defined]
        await p.dispatch_all()
        assert sorted(sms.reference for sms in p.links[0].submitted) == ["m0", "m1", "m2", "m3"]
        for i in range(4):
            raw = await p.ledger.raw(f"m{i}")
            assert raw["state"] == "submitted" and raw["attempts"] == "1" and "possible_duplicates" not in raw
        assert await p.redis.zcard(p.keys.inflight) == 0


@on_asyncio
async def test_a_claim_past_its_fence_may_not_be_sent_nor_renewed(redis_url: str) -> None:
    """The claim fence (a tenth of the lease early, on the process's own clock): while
    renewals keep the lease, the link may send; once the lease may have run out (a paused
    process, Redis away), the link is told not to send, and a late renewal neither revives
    the claim nor lengthens the lease that another process may hold by now."""
    async with pipeline(redis_url) as p:
        p.links[0].script = ["hold", "hold"]
        await p.accept(code("waits"), code("other", to="13912345678"))
        await p.dispatcher.dispatch_once()
        waits, other = (sms for sms, _ in p.links[0].held)
        assert waits.may_send is not None and other.may_send is not None
        p.clock.advance(20)
        assert await p.dispatcher.renew_leases_once() == 2
        p.clock.advance(26.9)  # 27 s (30 less a tenth) after the renewal was sent
        assert waits.may_send() and other.may_send()
        p.clock.advance(0.2)
        assert not waits.may_send() and not other.may_send()
        assert await p.dispatcher.renew_leases_once() == 0  # past the fence: not renewed
        assert not other.may_send()
        assert await p.ledger.recover_expired_leases(now=p.clock.now + 3.5) == 2


@on_asyncio
async def test_renewed_lease_is_not_recovered(redis_url: str) -> None:
    """A live process renews its leases, so a slow submit is not taken back."""
    async with pipeline(redis_url) as p:
        p.links[0].script = ["hold"]
        await p.accept(code("slow"))
        await p.dispatcher.dispatch_once()
        p.clock.advance(25)
        assert await p.dispatcher.renew_leases_once() == 1
        assert await p.ledger.recover_expired_leases(now=p.clock.now + 10) == 0
        sms, d = p.links[0].held.pop()
        d.callback(__import__("gateway.ports", fromlist=["SubmitAccepted"]).SubmitAccepted("cmcc", ("AB01",)))
        await p.writer.flushed()
        await p.dispatcher.idle()
        assert await p.state("slow") == "submitted"
        assert await p.redis.zcard(p.keys.inflight) == 0


@on_asyncio
async def test_auto_channel_failed_sms_goes_to_voice(redis_url: str) -> None:
    """channel auto: an SMS that fails (retries used up) is handed to the voice stream."""
    async with pipeline(redis_url, max_attempts=1) as p:
        p.links[0].script = [SubmitFailed("queue full", transient=True, status="ESME_RMSGQFUL")]
        await p.accept(code("call", channel="auto"))
        await p.dispatch_all()
        assert await p.state("call") == "failed"
        [(_, request)] = await p.redis.xrange(p.keys.voice_requests)
        assert request["id"] == "call" and request["to"] == CMCC_NUMBER
