"""Receipts against a real redis-server: correlation by carrier message id, receipts that
beat the submit response, multi-part messages, duplicates, id variants, and the voice
hand-off of an undeliverable channel-auto notification."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import DeferredList

from gateway import metrics
from gateway.ports import DeliveryReceipt, SubmitAccepted
from gateway.push.receipts import lookup_candidates, number_tails
from gateway.push.state import current_layout
from gateway.smpp.receipts import canonical_message_id, message_id_candidates
from tests.aio import on_asyncio
from tests.push.harness import CMCC_NUMBER, code, pipeline, points

RECEIPT_TIMEOUT = 172_800  # the ledger's default: two days


def receipt(message_id: str, state: str = "DELIVRD", carrier: str = "cmcc", err: str = "000",
            source_addr: str = "", destination_addr: str = "") -> DeliveryReceipt:
    return DeliveryReceipt(carrier=carrier, message_id=message_id, state=state, error_code=err,
                           source_addr=source_addr, destination_addr=destination_addr)


def wrong_number_count() -> float:
    return metrics.REGISTRY.get_sample_value("gateway12123_push_receipts_wrong_number_total") or 0.0


async def record(p, *receipts: DeliveryReceipt) -> None:  # type: ignore[no-untyped-def]
    """Hand receipts over in one reactor turn, as a link does, and wait for them."""
    from gateway.store.bridge import wait_deferred

    await wait_deferred(DeferredList([p.receipts.record_receipt(r) for r in receipts], fireOnOneErrback=True))


@on_asyncio
async def test_receipt_marks_the_notification_delivered(redis_url: str) -> None:
    """DELIVRD for the message id of a one-part message makes it delivered."""
    async with pipeline(redis_url) as p:
        await p.accept(code("one"))
        await p.dispatch_all()
        [message_id] = (await p.ledger.raw("one"))["message_ids"].split()
        await record(p, receipt(message_id.upper()))
        raw = await p.ledger.raw("one")
        assert raw["state"] == "delivered" and raw["p0"] == "DELIVRD" and raw["delivered_at"]
        assert [e["type"] for e in await p.events("one")] == [
            "notification.queued", "notification.submitting", "notification.submitted", "notification.delivered"]


@on_asyncio
async def test_multipart_is_delivered_when_every_part_is(redis_url: str) -> None:
    """A two-part message stays submitted after one part's receipt, delivered after both."""
    async with pipeline(redis_url) as p:
        p.links[0].parts = 2
        await p.accept(points("two"))
        await p.dispatch_all()
        first, second = (await p.ledger.raw("two"))["message_ids"].split()
        await record(p, receipt(second))
        assert await p.state("two") == "submitted"
        await record(p, receipt(first, "ACCEPTD"))
        assert await p.state("two") == "submitted"
        await record(p, receipt(first))
        view = await p.ledger.get("two")
        assert view is not None and view["state"] == "delivered" and view["part_states"] == ["DELIVRD", "DELIVRD"]


@on_asyncio
async def test_when_only_part_one_asked_its_receipt_alone_delivers(redis_url: str) -> None:
    """receipt_parts "first": part 1's DELIVRD makes a two-part message delivered; only
    part 1's id is indexed, so a stray receipt for part 2 finds nothing to change."""
    async with pipeline(redis_url) as p:
        p.links[0].parts, p.links[0].receipt_parts = 2, 1
        await p.accept(points("first"))
        await p.dispatch_all()
        raw = await p.ledger.raw("first")
        first, second = raw["message_ids"].split()
        assert raw["receipt_parts"] == "1" and raw["parts"] == "2"
        assert await p.redis.exists(p.keys.message_id("cmcc", canonical_message_id(second))) == 0
        await record(p, receipt(first, "ACCEPTD"))
        assert await p.state("first") == "submitted"
        await record(p, receipt(first))
        view = await p.ledger.get("first")
        assert view is not None and view["state"] == "delivered" and view["part_states"] == ["DELIVRD", ""]


@pytest.mark.parametrize("partitions", [1, 4])
@on_asyncio
async def test_when_only_the_last_part_asked_its_receipt_alone_decides(redis_url: str, partitions: int) -> None:
    """receipt_parts "last" (SMPP clients that ask on the last part only, SMSCs that report
    a long message once under its last part's id): only that id is indexed, as part 2, and
    its receipt alone makes the message delivered or undeliverable; part 1's id finds
    nothing.  Unpartitioned and partitioned (the index entries written by the writer)."""
    async with pipeline(redis_url, partitions=partitions) as p:
        p.links[0].parts, p.links[0].receipt_parts, p.links[0].receipt_from_last = 2, 1, True
        await p.accept(points("ok", to="13800000001"), points("bad", to="13800000002"))
        await p.dispatch_all()
        ids = {n: (await p.ledger.raw(n))["message_ids"].split() for n in ("ok", "bad")}
        assert (await p.ledger.raw("ok"))["receipt_parts"] == "1"
        for first, _ in ids.values():
            assert await p.redis.exists(p.keys.message_id("cmcc", canonical_message_id(first))) == 0
        await record(p, receipt(ids["ok"][1], "ACCEPTD"))
        assert await p.state("ok") == "submitted"
        await record(p, receipt(ids["ok"][1]), receipt(ids["bad"][1], "UNDELIV"))
        view = await p.ledger.get("ok")
        assert view is not None and view["state"] == "delivered" and view["part_states"] == ["", "DELIVRD"]
        assert await p.state("bad") == "undeliverable"


@on_asyncio
async def test_parts_that_got_one_id_are_delivered_by_its_receipt(redis_url: str) -> None:
    """An SMSC that answers every part of a long message with the message's one id, and
    sends one receipt for it: delivered.  Before 2026-12-05 the receipt was taken as part
    2's (the last index entry written) and the message waited for part 1's until it
    ended unconfirmed."""
    async with pipeline(redis_url) as p:
        p.links[0].script = ["hold"]
        p.links[0].parts = 2
        await p.accept(points("long", to="13800000042"))
        await p.dispatcher.dispatch_once()
        [(_, accepted)] = p.links[0].held
        accepted.callback(SubmitAccepted("cmcc", ("5A5", "5a5")))
        await p.writer.flushed()
        raw = await p.ledger.raw("long")
        assert raw["parts"] == "2" and raw["receipt_parts"] == "1" and raw["message_ids"] == "5A5 5a5"
        await record(p, receipt("5A5", source_addr="13800000042"))
        view = await p.ledger.get("long")
        assert view is not None and view["state"] == "delivered" and view["part_states"] == ["DELIVRD", ""]


@on_asyncio
async def test_submit_that_asked_for_no_receipt_indexes_no_message_id(redis_url: str) -> None:
    """receipt_parts 0 (registered_delivery 0): submitted is where it ends; its id is not
    indexed, so nothing waits in Redis for a receipt that will not come."""
    async with pipeline(redis_url) as p:
        p.links[0].receipt_parts = 0
        await p.accept(code("quiet"))
        await p.dispatch_all()
        raw = await p.ledger.raw("quiet")
        assert raw["state"] == "submitted" and raw["receipt_parts"] == "0"
        assert await p.redis.exists(p.keys.message_id("cmcc", canonical_message_id(raw["message_ids"]))) == 0
        assert await p.redis.zcard(p.keys.awaiting_receipt) == 0
        p.clock.advance(RECEIPT_TIMEOUT + 1)
        assert await p.ledger.close_overdue_receipts(now=p.clock.now) == (0, 0)
        assert await p.state("quiet") == "submitted"


@on_asyncio
async def test_a_grace_holds_the_receipt_timeout_back_and_keeps_the_real_times(redis_url: str) -> None:
    """close_overdue_receipts(grace_seconds=g) closes a notification only g seconds past
    its receipt timeout (a receipt kept in another partition lands first), and records
    the real time and wait, not the cutoff's."""
    async with pipeline(redis_url) as p:
        await p.accept(code("late"))
        await p.dispatch_all()
        p.clock.advance(RECEIPT_TIMEOUT + 5)
        assert await p.ledger.close_overdue_receipts(now=p.clock.now, grace_seconds=10) == (0, 0)
        assert await p.state("late") == "submitted"
        p.clock.advance(6)
        assert await p.ledger.close_overdue_receipts(now=p.clock.now, grace_seconds=10) == (1, 1)
        raw = await p.ledger.raw("late")
        assert raw["state"] == "unconfirmed" and float(raw["unconfirmed_at"]) == pytest.approx(p.clock.now)
        assert raw["error"] == f"no receipt within {RECEIPT_TIMEOUT + 11} s"


@on_asyncio
async def test_receipt_that_never_comes_ends_unconfirmed(redis_url: str) -> None:
    """No receipt within push.receipt_timeout_seconds: unconfirmed (final), with the
    reason and an event; a receipt that comes later is noted and changes no state."""
    async with pipeline(redis_url) as p:
        await p.accept(code("silent"))
        await p.dispatch_all()
        submitted_at = p.clock.now
        assert await p.redis.zscore(p.keys.awaiting_receipt, "silent") == submitted_at + RECEIPT_TIMEOUT
        p.clock.advance(RECEIPT_TIMEOUT - 1)
        assert await p.ledger.close_overdue_receipts(now=p.clock.now) == (0, 0)
        assert await p.state("silent") == "submitted"
        p.clock.advance(2)
        assert await p.ledger.close_overdue_receipts(now=p.clock.now) == (1, 1)
        raw = await p.ledger.raw("silent")
        assert raw["state"] == "unconfirmed" and raw["unconfirmed_at"]
        assert raw["error"] == f"no receipt within {RECEIPT_TIMEOUT + 1} s"
        assert await p.redis.zcard(p.keys.awaiting_receipt) == 0
        [event] = [e for e in await p.events("silent") if e["type"] == "notification.unconfirmed"]
        assert event["error"] == raw["error"] and "to" not in event
        await record(p, receipt(raw["message_ids"]))
        raw = await p.ledger.raw("silent")
        assert raw["state"] == "unconfirmed" and raw["late_receipt"] == "DELIVRD"
        assert "notification.delivered" not in [e["type"] for e in await p.events("silent")]


@on_asyncio
async def test_receipt_in_time_leaves_nothing_awaiting(redis_url: str) -> None:
    """A final receipt takes the notification out of the awaiting set: the timeout then
    finds nothing, and an undeliverable one stays undeliverable."""
    async with pipeline(redis_url) as p:
        await p.accept(code("ok"), code("bad", to="13912345678"))
        await p.dispatch_all()
        assert await p.redis.zcard(p.keys.awaiting_receipt) == 2
        ok = (await p.ledger.raw("ok"))["message_ids"]
        bad = (await p.ledger.raw("bad"))["message_ids"]
        await record(p, receipt(ok), receipt(bad, "UNDELIV"))
        assert await p.redis.zcard(p.keys.awaiting_receipt) == 0
        p.clock.advance(RECEIPT_TIMEOUT + 1)
        assert await p.ledger.close_overdue_receipts(now=p.clock.now) == (0, 0)
        assert [await p.state("ok"), await p.state("bad")] == ["delivered", "undeliverable"]


@on_asyncio
async def test_receipt_timeout_zero_waits_for_ever(redis_url: str) -> None:
    """receipt_timeout_seconds 0: nothing is put in the awaiting set."""
    async with pipeline(redis_url, receipt_timeout_seconds=0) as p:
        await p.accept(code("patient"))
        await p.dispatch_all()
        assert await p.redis.zcard(p.keys.awaiting_receipt) == 0
        p.clock.advance(10 * RECEIPT_TIMEOUT)
        assert await p.ledger.close_overdue_receipts(now=p.clock.now) == (0, 0)
        assert await p.state("patient") == "submitted"


@on_asyncio
async def test_when_only_part_one_asked_its_undeliverable_receipt_ends_it(redis_url: str) -> None:
    """receipt_parts "first": UNDELIV for part 1 makes the message undeliverable."""
    async with pipeline(redis_url) as p:
        p.links[0].parts, p.links[0].receipt_parts = 3, 1
        await p.accept(points("lost"))
        await p.dispatch_all()
        first = (await p.ledger.raw("lost"))["message_ids"].split()[0]
        await record(p, receipt(first, "UNDELIV", err="011"))
        assert await p.state("lost") == "undeliverable"


@on_asyncio
async def test_one_undeliverable_part_makes_the_message_undeliverable(redis_url: str) -> None:
    """UNDELIV for any part ends the notification undeliverable with the error code."""
    async with pipeline(redis_url) as p:
        p.links[0].parts = 2
        await p.accept(points("bad"))
        await p.dispatch_all()
        first, second = (await p.ledger.raw("bad"))["message_ids"].split()
        await record(p, receipt(first), receipt(second, "UNDELIV", err="011"))
        raw = await p.ledger.raw("bad")
        assert raw["state"] == "undeliverable" and raw["receipt_state"] == "UNDELIV"
        [event] = [e for e in await p.events("bad") if e["type"] == "notification.undeliverable"]
        assert event["error_code"] == "011"


@on_asyncio
async def test_duplicate_receipts_are_harmless(redis_url: str) -> None:
    """The same receipt three times gives one delivered state change; a late UNDELIV changes nothing."""
    async with pipeline(redis_url) as p:
        await p.accept(code("dupe"))
        await p.dispatch_all()
        [message_id] = (await p.ledger.raw("dupe"))["message_ids"].split()
        await record(p, receipt(message_id), receipt(message_id))
        await record(p, receipt(message_id), receipt(message_id, "UNDELIV"))
        assert await p.state("dupe") == "delivered"
        types = [e["type"] for e in await p.events("dupe")]
        assert types.count("notification.delivered") == 1 and "notification.undeliverable" not in types


@on_asyncio
async def test_receipt_before_submit_response_is_applied_later(redis_url: str) -> None:
    """A receipt that arrives before the submit_sm_resp is parked and applied with the ids."""
    async with pipeline(redis_url) as p:
        p.links[0].script = ["hold"]
        await p.accept(code("fast"))
        await p.dispatcher.dispatch_once()
        await record(p, receipt("CMCC00000777"))
        assert await p.state("fast") == "submitting"
        assert await p.redis.exists(p.keys.early_receipt("cmcc", "cmcc00000777"))
        _, d = p.links[0].held.pop()
        d.callback(SubmitAccepted("cmcc", ("CMCC00000777",)))
        await p.writer.flushed()
        raw = await p.ledger.raw("fast")
        assert raw["state"] == "delivered"
        assert not await p.redis.exists(p.keys.early_receipt("cmcc", "cmcc00000777"))
        # Added and removed by the same script: removed (nothing to time out).
        assert await p.redis.zcard(p.keys.awaiting_receipt) == 0


@on_asyncio
async def test_receipt_id_in_another_base_or_padding_is_found(redis_url: str) -> None:
    """Receipts quoting the id zero-padded, in another case or in decimal still match."""
    async with pipeline(redis_url) as p:
        p.links[0].script = ["hold", "hold"]
        await p.accept(code("hex"), code("pad", to="13912345678"))
        await p.dispatcher.dispatch_once()
        (_, d1), (_, d2) = p.links[0].held
        d1.callback(SubmitAccepted("cmcc", ("1A2B",)))
        d2.callback(SubmitAccepted("cmcc", ("abc9",)))
        await p.writer.flushed()
        await record(p, receipt(str(0x1A2B)), receipt("0000ABC9"))
        assert await p.state("hex") == "delivered"
        assert await p.state("pad") == "delivered"


@pytest.mark.parametrize("partitions", [1, 4])
@on_asyncio
async def test_early_receipt_is_not_taken_by_another_message_whose_id_it_reads_as(
        redis_url: str, partitions: int) -> None:
    """An SMSC counting in decimal: "ten" went out as 10 and is delivered; the receipt of
    "sixteen" (16, whose hex form is "10") comes before its submit_sm_resp is recorded.
    It names sixteen's number, so "ten" passes it over and it is parked, then applied to
    "sixteen".  Before 2026-12-05 "ten" took it as a late duplicate and "sixteen" waited
    for a receipt that had come."""
    async with pipeline(redis_url, partitions=partitions) as p:
        p.links[0].script = ["hold", "hold"]
        await p.accept(code("ten", to="13800000010"), code("sixteen", to="13800000016"))
        await p.dispatcher.dispatch_once()
        held = {sms.reference: d for sms, d in p.links[0].held}
        ten, sixteen = held["ten"], held["sixteen"]
        ten.callback(SubmitAccepted("cmcc", ("10",)))
        await p.writer.flushed()
        await record(p, receipt("10", source_addr="13800000010", destination_addr="12123"))
        assert await p.state("ten") == "delivered"
        refused = wrong_number_count()
        await record(p, receipt("16", "UNDELIV", source_addr="8613800000016", destination_addr="12123"))
        assert wrong_number_count() == refused + 1
        assert await p.redis.exists(p.keys.early_receipt("cmcc", "16"))
        sixteen.callback(SubmitAccepted("cmcc", ("16",)))
        await p.writer.flushed()
        assert await p.state("sixteen") == "undeliverable" and await p.state("ten") == "delivered"


@on_asyncio
async def test_receipt_is_applied_only_to_the_number_it_names_when_an_smsc_reuses_an_id(redis_url: str) -> None:
    """Two SMSC nodes behind one address gave two live messages the same id: the index
    names the later one.  The earlier one's UNDELIV (its number in source_addr) does not
    end the later one: it ends the earlier one, found among the id's previous entries
    (before 2026-12-05 it waited for nothing and ended unconfirmed); the later one's
    receipt ends the later one, also from an SMSC that swaps the addresses, and one
    without numbers is applied as before."""
    async with pipeline(redis_url) as p:
        p.links[0].script = ["hold", "hold", "hold"]
        await p.accept(code("first", to="13800000001"), code("second", to="13800000002"),
                       code("third", to="13800000003"))
        await p.dispatcher.dispatch_once()
        held = {sms.reference: d for sms, d in p.links[0].held}
        first, second, third = held["first"], held["second"], held["third"]
        first.callback(SubmitAccepted("cmcc", ("777",)))
        second.callback(SubmitAccepted("cmcc", ("777",)))
        third.callback(SubmitAccepted("cmcc", ("999",)))
        await p.writer.flushed()
        await record(p, receipt("777", "UNDELIV", source_addr="+8613800000001"))
        assert await p.state("second") == "submitted" and await p.state("first") == "undeliverable"
        await record(p, receipt("777", source_addr="12123", destination_addr="13800000002"))
        assert await p.state("second") == "delivered"
        await record(p, receipt("999", "UNDELIV"))
        assert await p.state("third") == "undeliverable"


@on_asyncio
async def test_a_receipt_with_a_masked_number_is_matched_by_its_id(redis_url: str) -> None:
    """An SMSC that masks the handset in its receipts (86138****5678): the digits left are
    not a number to check, so the receipt is applied by its id alone.  Read as a number,
    its digits (861385678) would have named another handset and every receipt of that
    SMSC been refused."""
    async with pipeline(redis_url) as p:
        await p.accept(code("masked", to="13812345678"))
        await p.dispatch_all()
        [message_id] = (await p.ledger.raw("masked"))["message_ids"].split()
        await record(p, receipt(message_id, source_addr="86138****5678", destination_addr="12123"))
        assert await p.state("masked") == "delivered"


def test_number_tails_name_a_handset_however_it_is_written() -> None:
    assert number_tails("13800138000", "12123") == "00138000"
    assert number_tails("+86 138-0013-8000", "008613800138000") == "00138000"
    assert number_tails("", "106912123001") == "12123001"
    assert number_tails("", "") == ""
    # masked by the SMSC: no number to compare (the digits left are not the handset's)
    assert number_tails("86138****5678", "12123") == ""
    assert number_tails("+86 138xxxx5678", "10690012123") == "90012123"


def test_receipt_ops_kept_by_an_older_gateway_are_read_in_todays_layout() -> None:
    assert current_layout(["X", "cmcc", "DELIVRD", "000", 2, "a1", "161"]) == [
        "X", "cmcc", "DELIVRD", "000", "", "", 2, "a1", "161"]
    assert current_layout(["Y", "n1", "0", "DELIVRD", "000"]) == ["Y", "n1", "0", "DELIVRD", "000", ""]
    today = ["X", "cmcc", "DELIVRD", "000", "00138000", "", 1, "a1"]
    assert current_layout(today) == today


@on_asyncio
async def test_auto_channel_undeliverable_goes_to_voice(redis_url: str) -> None:
    """channel auto: an undeliverable SMS is handed to the voice stream once."""
    async with pipeline(redis_url) as p:
        await p.accept(code("call-me", channel="auto"))
        await p.dispatch_all()
        [message_id] = (await p.ledger.raw("call-me"))["message_ids"].split()
        await record(p, receipt(message_id, "UNDELIV"))
        await record(p, receipt(message_id, "UNDELIV"))
        [(_, request)] = await p.redis.xrange(p.keys.voice_requests)
        assert request["id"] == "call-me" and request["to"] == CMCC_NUMBER
        assert not request["text"].startswith("【交管12123】")
        # The voice side records its outcome through the ledger (the AMI helper does this).
        assert await p.ledger.transition("call-me", "delivered", now=p.clock.now, channel="voice",
                                         call_outcome="answered")
        raw = await p.ledger.raw("call-me")
        assert raw["state"] == "delivered" and raw["call_outcome"] == "answered"


@on_asyncio
async def test_sms_channel_undeliverable_does_not_call(redis_url: str) -> None:
    """channel sms (the default): undeliverable stays undeliverable, no call."""
    async with pipeline(redis_url) as p:
        await p.accept(code("sms-only"))
        await p.dispatch_all()
        [message_id] = (await p.ledger.raw("sms-only"))["message_ids"].split()
        await record(p, receipt(message_id, "EXPIRED"))
        assert await p.state("sms-only") == "undeliverable"
        assert await p.redis.xlen(p.keys.voice_requests) == 0


@on_asyncio
async def test_transition_contract_for_other_components(redis_url: str) -> None:
    """ledger.transition sets state, <state>_at and fields; the event omits personal fields."""
    async with pipeline(redis_url) as p:
        await p.accept(code("t"))
        assert await p.ledger.transition("t", "failed", now=123.0, channel="voice", call_outcome="busy",
                                         to="13800138000")
        raw = await p.ledger.raw("t")
        assert raw["state"] == "failed" and raw["failed_at"] == "123.000" and raw["call_outcome"] == "busy"
        event = (await p.events("t"))[-1]
        assert event["type"] == "notification.failed" and event["call_outcome"] == "busy"
        assert "to" not in event
        assert await p.redis.zscore(p.keys.dead_letters, "t") is not None
        assert not await p.ledger.transition("missing", "failed", now=1.0)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(min_value=0, max_value=10**30).map(str),
                 st.integers(min_value=0, max_value=16**30).map(lambda v: format(v, "X")),
                 st.text(alphabet="0123456789abcdefABCDEF-xyz ", max_size=45)))
def test_fast_lookup_matches_the_general_candidates(raw: str) -> None:
    """lookup_candidates gives the canonical forms of smpp.receipts.message_id_candidates."""
    general = {canonical_message_id(c) for c in message_id_candidates(raw) if c}
    general.discard("")
    assert set(lookup_candidates(raw)) == general
    if general:
        assert lookup_candidates(raw)[0] == canonical_message_id(raw)
