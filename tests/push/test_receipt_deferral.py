"""Submits first: receipts wait while the dispatcher has a backlog (sans-IO part with a
Clock and a recording writer; the backlog signal against a real redis-server)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gateway.ports import DeliveryReceipt
from gateway.push.receipts import ReceiptRecorder
from gateway.push.worker import BACKLOG_SECONDS
from tests.aio import on_asyncio
from tests.push.harness import code, pipeline


class RecordingWriter:
    """Stands in for OutcomeWriter: keeps each op and the Deferred it handed out."""

    def __init__(self) -> None:
        self.added: list[tuple[Any, Deferred[None]]] = []

    def add(self, op: Any, *, keep: bool = True) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.added.append((op, d))
        return d


class Backlog:
    def __init__(self) -> None:
        self.waiting = True

    def __call__(self) -> bool:
        return self.waiting


def receipt(message_id: str) -> DeliveryReceipt:
    return DeliveryReceipt(carrier="cmcc", message_id=message_id, state="DELIVRD", error_code="000")


def recorder(max_defer: float = 0.5) -> tuple[ReceiptRecorder, RecordingWriter, Clock, Backlog]:
    writer, clock, backlog = RecordingWriter(), Clock(), Backlog()
    rec = ReceiptRecorder(writer, clock, busy=backlog, max_defer_seconds=max_defer)  # type: ignore[arg-type]
    return rec, writer, clock, backlog


def test_without_a_backlog_a_receipt_is_recorded_at_once() -> None:
    rec, writer, _, backlog = recorder()
    backlog.waiting = False
    d = rec.record_receipt(receipt("a1"))
    assert len(writer.added) == 1 and rec.held == 0
    writer.added[0][1].callback(None)
    assert d.called


def test_receipts_wait_for_the_backlog_to_clear() -> None:
    """Held while submits wait; recorded (and only then answered) once they are gone."""
    rec, writer, clock, backlog = recorder()
    d1, d2 = rec.record_receipt(receipt("a1")), rec.record_receipt(receipt("a2"))
    assert writer.added == [] and rec.held == 2
    clock.advance(0.2)
    assert writer.added == [] and not d1.called
    backlog.waiting = False
    clock.advance(0.05)
    assert [op[5] for op, _ in writer.added] == ["a1", "a2"] and rec.held == 0
    assert not d1.called  # not acknowledged before it is in Redis
    for _, d in writer.added:
        d.callback(None)
    assert d1.called and d2.called


def test_a_receipt_waits_at_most_max_defer_seconds() -> None:
    rec, writer, clock, _ = recorder(max_defer=0.5)
    rec.record_receipt(receipt("a1"))
    clock.advance(0.3)
    rec.record_receipt(receipt("a2"))
    clock.advance(0.15)
    assert writer.added == []
    clock.advance(0.1)  # a1 has waited 0.55 s: everything held goes
    assert len(writer.added) == 2 and rec.held == 0 and not clock.getDelayedCalls()


def test_a_failed_write_fails_the_held_receipt() -> None:
    """Redis away: the link must not acknowledge, so the carrier sends it again."""
    rec, writer, clock, backlog = recorder()
    d = rec.record_receipt(receipt("a1"))
    backlog.waiting = False
    clock.advance(0.05)
    writer.added[0][1].errback(ConnectionError("redis away"))
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(ConnectionError)


def test_stopping_releases_the_held_and_defers_no_more() -> None:
    rec, writer, clock, _ = recorder()
    rec.record_receipt(receipt("a1"))
    rec.stop_deferring()
    assert len(writer.added) == 1 and not clock.getDelayedCalls()
    rec.record_receipt(receipt("a2"))
    assert len(writer.added) == 2


def test_zero_max_defer_never_holds() -> None:
    rec, writer, _, _ = recorder(max_defer=0)
    rec.record_receipt(receipt("a1"))
    assert len(writer.added) == 1


@on_asyncio
async def test_a_full_claim_is_a_backlog_and_a_partial_one_is_not(redis_url: str) -> None:
    async with pipeline(redis_url, batch_size=2) as p:
        await p.accept(code("c1"), code("c2", to="13912345678"), code("c3", to="13712345678"))
        assert not p.dispatcher.backlogged()
        assert await p.dispatcher.dispatch_once() == 2
        assert p.dispatcher.backlogged()
        p.clock.advance(BACKLOG_SECONDS)
        assert not p.dispatcher.backlogged()
        assert await p.dispatcher.dispatch_once() == 1
        assert not p.dispatcher.backlogged()
