"""The carrier link's hooks for the account's fleet-wide limits, on a Clock and
StringTransports: no submit_sm without a slot, no connection without a bind lease."""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.fleet.account import AccountLimits
from gateway.fleet.tps import SlotReservations
from gateway.ports import OutboundSms
from gateway.smpp.link import CarrierLink
from gateway.smpp.pdu import SubmitSm, Unbind
from tests.smpp.test_link import CITIZEN, RecordingSink, StringEndpoint, carrier_config


def start_link(account: AccountLimits, **config: Any) -> tuple[CarrierLink, StringEndpoint, Clock, RecordingSink]:
    clock, sink, endpoint = Clock(), RecordingSink(), StringEndpoint()
    link = CarrierLink(carrier_config(**config), sink, clock, endpoint=endpoint, jitter=lambda: 0.0,
                       account=account)
    link.startService()
    return link, endpoint, clock, sink


class ScriptedSlots:
    """AccountRateLimiter's face to the link, with slots the test grants."""

    def __init__(self) -> None:
        self.slots = SlotReservations(100.0, early_seconds=0.0)
        self.on_slots: Any = None

    def take(self, now: float) -> float:
        wait = self.slots.take(now)
        return 0.05 if wait == math.inf else wait

    def grant(self, count: int, first_offset: float, interval: float, now: float) -> None:
        self.slots.grant(count, first_offset, interval, now)
        self.on_slots()


class ScriptedLeases:
    """BindLeases' face to the link: the test says whether the next lease is granted."""

    def __init__(self, granted: bool) -> None:
        self.granted = granted
        self.held: list[str] = []
        self.released: list[str] = []
        self.on_lost: Any = None

    def holder(self, slot: str) -> str:
        return f"gw1-42-{slot}"

    def acquire(self, holder: str) -> Deferred[bool]:
        if self.granted:
            self.held.append(holder)
        return succeed(self.granted)

    def release(self, holder: str) -> Deferred[None]:
        self.released.append(holder)
        return succeed(None)

    def release_all(self) -> Deferred[None]:
        return succeed(None)


def test_submits_wait_for_the_accounts_slots() -> None:
    """Bound and with parts queued, the link sends none until the account grants slots,
    then one per slot at the slot's time."""
    slots = ScriptedSlots()
    link, endpoint, clock, _ = start_link(window=10, account=AccountLimits(rate=slots))  # type: ignore[arg-type]
    [smsc] = endpoint.smscs
    smsc.accept_bind()
    for n in range(3):
        link.submit(OutboundSms(f"n{n}", CITIZEN, "hello"))
    clock.advance(0.2)
    assert smsc.read() == []
    slots.grant(2, 0.0, 0.1, clock.seconds())
    assert [type(p) for p in smsc.read()] == [SubmitSm]
    clock.advance(0.1)
    assert [type(p) for p in smsc.read()] == [SubmitSm]
    clock.advance(1.0)
    assert smsc.read() == []  # the third waits for a slot


def test_no_connection_without_a_bind_lease_and_the_lease_follows_the_session() -> None:
    """A refused lease means no connection attempt, retried after bind_retry_seconds; a
    granted one binds; losing the session releases it; a lost lease unbinds."""
    leases = ScriptedLeases(granted=False)
    account = AccountLimits(binds=leases, bind_retry_seconds=5.0)  # type: ignore[arg-type]
    link, endpoint, clock, _ = start_link(account=account)
    assert endpoint.attempts == 0 and not link.is_bound()
    leases.granted = True
    clock.advance(4.9)
    assert endpoint.attempts == 0
    clock.advance(0.2)
    assert endpoint.attempts == 1
    [smsc] = endpoint.smscs
    smsc.accept_bind()
    assert link.is_bound() and leases.held == ["gw1-42-cmcc-transceiver-0"]
    leases.on_lost("gw1-42-cmcc-transceiver-0")
    assert [type(p) for p in smsc.read()] == [Unbind]
    smsc.protocol.connectionLost(Failure(ConnectionDone()))
    assert not link.is_bound()
    assert leases.released == []  # a lost lease is not released again (BindLeases dropped it)
    clock.advance(5.0)
    [_, again] = endpoint.smscs
    again.accept_bind()
    again.protocol.connectionLost(Failure(ConnectionDone()))
    assert leases.released == ["gw1-42-cmcc-transceiver-0"]
