"""Shared pieces of the push pipeline tests: a business clock, a scripted carrier link,
and a pipeline (ledger, writer, intake, dispatcher, receipts) on the real redis-server.

`ManualClock` gives the components a time the test sets (quiet hours, expiry, backoff)
while `callLater` runs on the real reactor, so the coalescing writer still flushes at the
end of the reactor turn.  `ScriptedLink` is the in-test CarrierLink for dispatcher logic:
it answers each submit as scripted (accept with N parts, fail, or hold for the test to
fire).  End-to-end tests use the real link and simulator instead (test_end_to_end.py).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed

from gateway.ports import OutboundSms, SubmitAccepted, SubmitFailed
from gateway.push.intake import Intake, IntakeRequest
from gateway.push.queue import QuietHoursPolicy
from gateway.push.receipts import ReceiptRecorder
from gateway.push.render import TemplateSet, load_templates
from gateway.push.routing import PrefixRouter
from gateway.push.state import NotificationLedger, OutcomeWriter
from gateway.push.worker import Dispatcher
from gateway.store.keys import Keys
from tests.push.steps_twin import Twins

# The longest XREAD BLOCK a test helper sends: redis-py 8's clients default to a 5 s
# socket_timeout, and a BLOCK longer than that ends in "TimeoutError: Timeout reading
# from 127.0.0.1" instead of an empty reply whenever nothing happens for 5 s (a loaded
# machine, or a notification that never reaches the state waited for).  Helpers loop on
# shorter reads until their own deadline.
READ_BLOCK_LIMIT_MS = 1000

TEMPLATES_FILE = Path(__file__).resolve().parents[2] / "config" / "templates.yaml"
POLICY = QuietHoursPolicy()
# Monday 2026-03-02 10:00 in Shanghai: outside quiet hours.
MORNING = dt.datetime(2026, 3, 2, 10, 0, tzinfo=POLICY.tz).timestamp()
CMCC_NUMBER = "13800138000"
CUCC_NUMBER = "13012345678"


class ManualClock:
    """IReactorTime whose seconds() the test sets; callLater uses the real reactor."""

    def __init__(self, now: float = MORNING) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        return reactor.callLater(max(0.0, delay), f, *args, **kwargs)

    def getDelayedCalls(self) -> list[Any]:  # noqa: N802
        return []


@dataclass
class ScriptedLink:
    """A CarrierLink whose answers the test scripts (default: accept, `parts` ids)."""

    name: str
    prefixes: tuple[str, ...]
    bound: bool = True
    parts: int = 1
    receipt_parts: int | None = None  # as CarrierLink reports it for receipt_parts "first"
    receipt_from_last: bool = False  # and for "last" (receipt_parts 1)
    accepts_other_carriers: bool = True  # routing: a failover target for other carriers' numbers
    failover_after_seconds: float = 0.0
    script: list[Any] = field(default_factory=list)
    submitted: list[OutboundSms] = field(default_factory=list)
    held: list[tuple[OutboundSms, Deferred[SubmitAccepted]]] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _hold_waiters: list[Deferred[None]] = field(default_factory=list)

    def when_held(self) -> Deferred[None]:
        """Fires once a submit is held (at once if one is)."""
        if self.held:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._hold_waiters.append(d)
        return d

    def is_bound(self) -> bool:
        return self.bound

    def next_ids(self, parts: int | None = None) -> tuple[str, ...]:
        return tuple(f"{self.name.upper()}{next(self._ids):08X}" for _ in range(parts or self.parts))

    def submit(self, sms: OutboundSms) -> Deferred[SubmitAccepted]:
        self.submitted.append(sms)
        outcome = self.script.pop(0) if self.script else "accept"
        if outcome == "accept":
            return succeed(SubmitAccepted(self.name, self.next_ids(), self.receipt_parts, self.receipt_from_last))
        if outcome == "hold":
            d: Deferred[SubmitAccepted] = Deferred()
            self.held.append((sms, d))
            waiters, self._hold_waiters = self._hold_waiters, []
            for waiter in waiters:
                waiter.callback(None)
            return d
        if isinstance(outcome, SubmitFailed):
            return fail(outcome)
        raise AssertionError(f"bad script entry {outcome!r}")


@dataclass
class Pipeline:
    redis: Redis
    keys: Keys
    clock: ManualClock
    templates: TemplateSet
    ledger: NotificationLedger
    writer: OutcomeWriter
    intake: Intake
    dispatcher: Dispatcher
    receipts: ReceiptRecorder
    links: list[ScriptedLink]

    async def accept(self, *requests: dict[str, Any], source: str = "test") -> list[Any]:
        return await self.intake.accept_many([IntakeRequest(fields=r, source=source) for r in requests])

    async def dispatch_all(self) -> int:
        """Claim and submit until the lanes are empty; outcomes recorded."""
        total = 0
        while True:
            n = await self.dispatcher.dispatch_once()
            await self.writer.flushed()
            if not any(link.held for link in self.links):
                await self.dispatcher.idle()
            total += n
            if n == 0:
                return total

    async def state(self, notification_id: str) -> str:
        return (await self.ledger.raw(notification_id)).get("state", "")

    async def events(self, notification_id: str | None = None) -> list[dict[str, str]]:
        rows = await self.redis.xrange(self.keys.events_stream)
        return [fields for _, fields in rows if notification_id is None or fields.get("id") == notification_id]


def code(notification_id: str, to: str = CMCC_NUMBER, **extra: Any) -> dict[str, Any]:
    return {"id": notification_id, "type": "verification_code", "to": to,
            "params": {"code": "123456", "minutes": "5"}, **extra}


def inspection(notification_id: str, to: str = CMCC_NUMBER, **extra: Any) -> dict[str, Any]:
    return {"id": notification_id, "type": "inspection_due", "to": to,
            "params": {"plate": "闽D12345", "due_date": "2026-06-30"}, **extra}


def points(notification_id: str, to: str = CMCC_NUMBER, **extra: Any) -> dict[str, Any]:
    """A Chinese reminder (normal lane, respects quiet hours; one UCS2 part)."""
    return {"id": notification_id, "type": "points_reached_9", "to": to,
            "params": {"name": "张三", "date": "2026-03-01", "points": "9"}, **extra}


def connect(redis_url: str) -> Any:
    """A client for `redis_url`, or a RedisCluster for ``cluster:host:port,...``."""
    if redis_url.startswith("cluster:"):
        from gateway.store.service import make_cluster_client

        return make_cluster_client(redis_url[len("cluster:"):].split(","), "")
    return Redis.from_url(redis_url, decode_responses=True)


@asynccontextmanager
async def pipeline(redis_url: str, links: list[ScriptedLink] | None = None, *, now: float = MORNING,
                   daily_cap_bulk: int = 3, max_attempts: int = 3, max_in_flight: int = 2000,
                   batch_size: int = 200, retention_seconds: float = 86_400.0,
                   max_link_losses: int = 20,
                   receipt_timeout_seconds: float = 172_800.0, partitions: int = 1,
                   events: str = "all", early_receipts_max: int = 1_000_000) -> AsyncIterator[Pipeline]:
    redis = connect(redis_url)
    keys = Keys(partitions=int(os.environ.get("GATEWAY_TEST_PARTITIONS", partitions)))
    clock = ManualClock(now)
    templates = load_templates(TEMPLATES_FILE)
    links = links if links is not None else [
        ScriptedLink("cmcc", ("134", "135", "136", "137", "138", "139")),
        ScriptedLink("cucc", ("130", "131", "132")),
    ]
    ledger = NotificationLedger(redis, keys, retention_seconds, receipt_timeout_seconds=receipt_timeout_seconds,
                                events=events, early_receipts_max=early_receipts_max)
    writer = OutcomeWriter(ledger, clock)
    intake = Intake(ledger, lambda: templates, POLICY, clock, daily_cap_bulk=daily_cap_bulk)
    dispatcher = Dispatcher(ledger, writer, PrefixRouter(links), clock, policy=POLICY,
                            max_in_flight=max_in_flight, batch_size=batch_size,
                            max_attempts=max_attempts, retry_initial_seconds=2, retry_max_seconds=60,
                            max_link_losses=max_link_losses)
    twin_url = os.environ.get("GATEWAY_TEST_STEPS_TWIN")
    twins = Twins(ledger, twin_url) if twin_url else None  # tests/push/test_steps.py
    try:
        yield Pipeline(redis, keys, clock, templates, ledger, writer, intake, dispatcher,
                       ReceiptRecorder(writer), links)
    finally:
        await writer.flushed()
        await redis.aclose()
        if twins is not None:
            await twins.close()


class EventWaiter:
    """Waits on the events stream (XREAD BLOCK) for a notification's state change."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.last = "0-0"
        self.seen: dict[str, list[str]] = {}

    async def wait_for(self, notification_id: str, states: set[str], timeout_seconds: float = 10.0) -> str:
        for state in self.seen.get(notification_id, []):
            if state in states:
                return state
        deadline = reactor.seconds() + timeout_seconds
        while reactor.seconds() < deadline:
            block = max(1, min(READ_BLOCK_LIMIT_MS, int((deadline - reactor.seconds()) * 1000)))
            response = await self.redis.xread({self.keys.events_stream: self.last}, count=500, block=block)
            found = None
            for _, entries in response or []:
                for entry_id, fields in entries:
                    self.last = entry_id
                    state = fields["type"].removeprefix("notification.")
                    self.seen.setdefault(fields["id"], []).append(state)
                    if fields["id"] == notification_id and state in states and found is None:
                        found = state
            if found is not None:
                return found
        raise AssertionError(f"{notification_id} did not reach {states} within {timeout_seconds}s")
