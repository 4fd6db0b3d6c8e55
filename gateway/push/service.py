"""PushService: the notification pipeline as one Twisted service.

Theory of operation
-------------------
The service composes the parts and runs their loops on the reactor (asyncio reactor;
the loops are asyncio coroutines because redis-py's client is):

* **intake**: XREADGROUP on ``keys.notify_stream`` and, with several partitions, on the
  intake stream of each partition this process owns (blocking), accept, XACK; at start it
  first finishes this consumer's own pending entries, and on taking a partition over every
  entry pending on its stream (XAUTOCLAIM);
* **ownership** (several partitions, every push.partition_lease_seconds / 5): heartbeat,
  take a fair share of the partitions, renew it, give up extras when a process joins
  (gateway/push/ownership.py).  Claims, promotions, lease recovery and receipt timeouts
  run only on owned partitions;
* **claim-stale**: XAUTOCLAIM entries that another (crashed) consumer left pending for
  ``claim_idle_seconds``;
* **dispatch**: claim from the lanes and submit while in-flight slots are free; it
  sleeps when idle and is woken by local acceptances, promotions and freed slots;
* **housekeeping** (every ``tick_seconds``): promote due scheduled notifications
  (quiet hours over, retry due); renew this process's leases and recover expired ones
  (another process died); deliver receipts owed to partners; update queue gauges.

Every loop survives Redis going away: a ConnectionError/TimeoutError is logged at error
level, the loop waits with exponential backoff and carries on; nothing is dropped,
because nothing leaves Redis before its outcome is recorded (see gateway/push/state.py).

Stopping (`stopService`, called by the app before the carrier links stop): stop reading
the intake stream (a blocked XREADGROUP is cancelled; its entries, if any, stay pending
and are finished by the next start), stop claiming, wait for in-flight submits to get
their outcome recorded (bounded by ``drain_timeout_seconds``), flush the writer.
Whatever is still in flight then keeps its lease and is recovered after restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from gateway import metrics
from gateway.config import PushConfig
from gateway.fleet.clock import takeovers_held
from gateway.fleet.names import live_name
from gateway.ports import CarrierLink, PartnerReceiptSink
from gateway.push.deadletters import list_dead_letters, retry_dead_letters
from gateway.push.index import SearchIndex
from gateway.push.intake import Intake, IntakeConsumer
from gateway.push.ownership import PartitionOwnership
from gateway.push.partners import PartnerGateway
from gateway.push.queue import Priority, QuietHoursPolicy
from gateway.push.receipts import ReceiptRecorder
from gateway.push.render import TemplateCatalogue, TemplateSet
from gateway.push.routing import PortedNumbers, PrefixRouter
from gateway.push.state import NotificationLedger, OutcomeWriter
from gateway.push.worker import Dispatcher, Waker
from gateway.store.bridge import as_deferred, wait_deferred
from gateway.store.keys import Keys
from gateway.store.refusals import RefusalLog, is_unavailable, is_write_refusal
from gateway.store.service import REDIS_ERRORS

# The hand-over file's name in state_dir (`_hand_over`).
HAND_OVER_FILE = "push-unrecorded-outcomes.json"

__all__ = ["HAND_OVER_FILE", "PushService"]

log = Logger()
# The slowest idle poll of the owned lanes (several partitions): work that another process
# accepted into them waits at most this much longer than work accepted here.
IDLE_POLL_MAX_SECONDS = 0.4
# Not longer for now: 1 s was tried on 2026-12-02 (each poll reads the 3 lanes of every
# owned partition; 24 partitions: 180 ZRANGE/s per idle process, bench/cluster_idle.py),
# and bench/cluster.py c3 (3 processes at the account's TPS limit) sent 1,160-1,255
# submit/s in 3 runs against 1,220-1,460 in 4 with 0.4 s, on a machine loaded by other runs:
# not conclusive, but a wake-up may be missing where work re-enters a lane.



class _LazyRedis:
    """Forwards to the client a provider returns (the Redis service makes it at start)."""

    def __init__(self, provider: Callable[[], Any]) -> None:
        self._provider = provider

    def __getattr__(self, name: str) -> Any:
        client = self._provider()
        if client is None:
            raise RedisConnectionError("the redis client is not started yet")
        return getattr(client, name)


class PushService(Service):
    """The notification pipeline.

    Args:
        redis: the redis.asyncio client (decode_responses=True), or a zero-argument
            callable returning it (e.g. ``lambda: redis_service.client``).
        keys: the key schema.
        config: the ``push`` section.
        templates: a `TemplateCatalogue` (reloadable; `reload_templates` swaps) or a
            fixed `TemplateSet`.
        links: the carrier links (gateway.ports.CarrierLink), configuration order.
        clock: the reactor (IReactorTime); in the daemon a `gateway.fleet.clock.FleetClock`,
            so that the times written in Redis (leases above all) are Redis's time.
        lease_seconds: claim lease; also how soon after a crash in-flight work is retried.
        drain_timeout_seconds: how long stopService waits for in-flight submits.
        events_maxlen: approximate cap of the events stream.
    """

    name = "push"

    def __init__(self, redis: Any, keys: Keys, config: PushConfig,
                 templates: TemplateCatalogue | TemplateSet, links: Sequence[CarrierLink], clock: Any, *,
                 lease_seconds: float = 30.0, drain_timeout_seconds: float = 10.0,
                 events_maxlen: int = 1_000_000, tick_seconds: float = 0.25,
                 idle_poll_seconds: float = 0.05, block_ms: int = 1000,
                 backoff_initial_seconds: float = 0.1, backoff_max_seconds: float = 5.0,
                 unrecorded_outcomes_file: str | os.PathLike[str] | None = None,
                 earlier_unrecorded_outcomes_files: Sequence[str | os.PathLike[str]] = (),
                 redis_scope: str = "") -> None:
        if callable(redis) and not hasattr(redis, "execute_command"):
            redis = _LazyRedis(redis)
        self.redis = redis
        self.keys = keys
        self.config = config
        self.clock = clock
        self.catalogue = templates if isinstance(templates, TemplateCatalogue) else None
        fixed = templates if isinstance(templates, TemplateSet) else None

        def current_templates() -> TemplateSet:
            return self.catalogue.current if self.catalogue is not None else fixed  # type: ignore[return-value]

        self.templates = current_templates
        self.policy = QuietHoursPolicy(config.quiet_hours.start, config.quiet_hours.end,
                                       config.quiet_hours.timezone)
        self.ledger = NotificationLedger(redis, keys, config.retention_days * 86_400,
                                         events_maxlen=events_maxlen,
                                         signature=current_templates().signature,
                                         receipt_timeout_seconds=config.receipt_timeout_seconds,
                                         early_receipts_max=config.early_receipts_max,
                                         events=config.events, wait_replicas=config.intake_wait_replicas,
                                         receipt_wait_replicas=config.delivery_wait_replicas,
                                         engine=config.ledger_engine, step_writer_lock=True)
        self.writer = OutcomeWriter(self.ledger, clock, backoff_initial_seconds=backoff_initial_seconds,
                                    backoff_max_seconds=backoff_max_seconds)
        self.router = PrefixRouter(links)
        for link in links:  # listed at 0 before the first, so that alerts can compare carriers
            for counter in (metrics.receipts_early, metrics.receipts_early_applied, metrics.receipts_unparked):
                counter.labels(link.name)
        self.dispatcher = Dispatcher(
            self.ledger, self.writer, self.router, clock, policy=self.policy,
            max_in_flight=config.max_in_flight, batch_size=config.batch_size,
            max_attempts=config.max_attempts, retry_initial_seconds=config.retry_initial_seconds,
            retry_max_seconds=config.retry_max_seconds, lease_seconds=lease_seconds,
            max_link_losses=config.max_link_losses,
            sender_for=lambda notification_type: current_templates().source_addr(notification_type),
            ported=PortedNumbers(redis, keys.prefix, [link.name for link in links]),
        )
        self.intake = Intake(self.ledger, current_templates, self.policy, clock,
                             daily_cap_bulk=config.daily_cap_bulk, on_accepted=self.dispatcher.waker.wake)
        self.intake.index = SearchIndex(redis, keys, config.retention_days * 86_400)
        consumer = config.consumer_name or f"{socket.gethostname()}-{os.getpid()}"
        # The shared notify stream, and with several partitions each partition's stream
        # (where HTTP, the CLI and core systems that know the rule write).
        # The partition streams are read only while this process owns the partition.
        streams: list[tuple[str, int | None]] = [(keys.notify_stream, None)]
        if keys.partitioned:
            streams += [(part.notify_stream, part.index) for part in keys.all_partitions]
        self.consumers = [IntakeConsumer(self.intake, redis, keys, group=config.consumer_group,
                                         consumer=consumer, batch_size=config.batch_size,
                                         claim_idle_seconds=config.claim_idle_seconds, stream=stream,
                                         partition=partition)
                          for stream, partition in streams]
        self.consumer = self.consumers[0]
        # Its fence is a duration on this host: the host's own clock (gateway/fleet/clock.py).
        # Under a name no other live process has, whatever the host name, pid and config
        # say (gateway/fleet/names.py): two owners of one name would both own a partition.
        self.ownership = PartitionOwnership(redis, keys, live_name(config.consumer_name), getattr(clock, "local", clock),
                                            lease_seconds=config.partition_lease_seconds)
        if self.ownership.enabled:
            self.dispatcher.owned_partitions = self.ownership.owned
        self.receipts = ReceiptRecorder(self.writer)
        self.partners = PartnerGateway(self.intake, self.ledger, clock)
        self.ledger.on_partner_final = self.partners.on_partner_final
        self.lease_seconds = lease_seconds
        self.drain_timeout_seconds = drain_timeout_seconds
        # Outcomes Redis still refused when the service stopped: written here, recorded at
        # the next start (`_hand_over` / `_take_over`).  `redis_scope` names the Redis
        # (URL and key prefix) they belong to, so another one never gets them.
        self.unrecorded_outcomes_file = Path(unrecorded_outcomes_file) if unrecorded_outcomes_file else None
        # Where earlier versions wrote it (state_dir relative to the config file until
        # 2026-12-05): taken over as well, never written.
        self.earlier_unrecorded_outcomes_files = [Path(p) for p in earlier_unrecorded_outcomes_files]
        self.redis_scope = redis_scope
        self.tick_seconds = tick_seconds
        self.idle_poll_seconds = idle_poll_seconds
        self.block_ms = block_ms
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._running = False
        self._loops: list[Deferred[None]] = []
        self._sleepers: list[Waker] = []
        self._read_tasks: dict[str, asyncio.Future[Any]] = {}
        self._tick = 0
        # One rate-limited log per loop while Redis is away or refuses writes.
        self._refusal_logs: dict[str, RefusalLog] = {}

    # -- what other components call --------------------------------------------------------

    def record_receipt(self, receipt: Any) -> Deferred[None]:
        """InboundSink.record_receipt (the lead combines it with the MO recorder)."""
        return self.receipts.record_receipt(receipt)

    def set_partner_receipt_sink(self, sink: PartnerReceiptSink | None) -> None:
        self.partners.set_receipt_sink(sink)

    def reload_templates(self) -> TemplateSet:
        """SIGHUP: load and check the templates again; ConfigError keeps the old ones."""
        if self.catalogue is None:
            raise RuntimeError("fixed templates cannot be reloaded")
        fresh = self.catalogue.reload()
        log.info("notification templates reloaded: {count} types", count=len(fresh.templates))
        return fresh

    def http_resource(self, *, max_batch: int = 1000) -> Any:
        """The twisted.web resource for /v1/notifications (``http.max_batch`` items per POST)."""
        from gateway.http.notifications import NotificationsResource

        return NotificationsResource(self.intake, self.ledger, max_batch=max_batch)

    async def list_dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return await list_dead_letters(self.redis, self.keys, limit=limit)

    async def retry_dead_letters(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        return await retry_dead_letters(self.redis, self.keys, ids)

    # -- lifecycle ----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._take_over()
        self._running = True
        self._sleepers = []
        self._loops = [
            *([self._spawn("ownership", self._every("ownership", self._ownership_step, self.ownership.tick_seconds))]
              if self.ownership.enabled else []),
            *(self._spawn("intake", self._intake_loop(consumer)) for consumer in self.consumers),
            self._spawn("claim-stale", self._every(
                "claim-stale", self._claim_stale_step, max(1.0, self.config.claim_idle_seconds / 2))),
            self._spawn("dispatch", self._when_clock_synced(self._dispatch_loop())),
            self._spawn("housekeeping", self._when_clock_synced(
                self._every("housekeeping", self._housekeeping_step, self.tick_seconds))),
        ]

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return as_deferred(self._stop())

    async def _stop(self) -> None:
        self._running = False
        for read in list(self._read_tasks.values()):
            if not read.done():
                read.cancel()
            elif not read.cancelled():
                read.exception()  # a read ahead that failed is no news now; do not log it at exit
        for sleeper in self._sleepers:
            sleeper.wake()
        self.dispatcher.waker.wake()
        # One bound for both waits: the app stops this service within drain + 1 s, and
        # the hand-over below must happen before that.
        await self._bounded(self._drained(), "in-flight submits and outcome writes")
        self._hand_over()
        await self._bounded(wait_deferred(DeferredList(self._loops, consumeErrors=True)), "push loops")
        # Last: the others take the partitions at their next tick instead of after the lease.
        await self._bounded(self.ownership.release_all(), "releasing the partitions")
        if self.dispatcher.in_flight:
            log.warn("push stopped with {count} submits in flight; they are recovered after their lease",
                     count=self.dispatcher.in_flight)

    async def _drained(self) -> None:
        await self.dispatcher.idle()
        await self.writer.flushed()

    def _hand_over(self) -> None:
        """Write the outcomes Redis still refuses to `unrecorded_outcomes_file`.

        Those submits went out; left to their leases they would be recovered and sent
        again (counted as possible duplicates).  The next start records them first,
        before it claims anything: no copy, if it starts on the same file; a lease that
        ran out meanwhile costs nothing either (an outcome for a queued notification
        still records the submit: outcomes.lua).
        """
        ops = self.writer.unrecorded()
        if not ops or self.unrecorded_outcomes_file is None:
            return
        path = self.unrecorded_outcomes_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_text(json.dumps({"redis": self.redis_scope, "ops": ops}), encoding="utf-8")
            os.replace(partial, path)  # whole or not at all
        except OSError as e:
            log.error("push stopped with {count} outcomes Redis refused; could not save them to {path} ({error}): "
                      "they are recovered after their lease (possible duplicates)",
                      count=len(ops), path=str(path), error=e.strerror)
            return
        log.warn("push stopped with {count} outcomes Redis refused; saved to {path}, recorded at the next start",
                 count=len(ops), path=str(path))

    def _take_over(self) -> None:
        """Record what the last stop handed over (see `_hand_over`), before any claim: from
        `unrecorded_outcomes_file`, and from where an earlier version wrote it."""
        if self.unrecorded_outcomes_file is None:
            return
        seen: set[Path] = set()
        for path in (self.unrecorded_outcomes_file, *self.earlier_unrecorded_outcomes_files):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                self._take_over_file(path)

    def _take_over_file(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            ops = [list(op) for op in saved["ops"]]
            scope = str(saved.get("redis", ""))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("push: cannot read the outcomes saved in {path} ({error}); left in place",
                      path=str(path), error=type(e).__name__)
            return
        if scope != self.redis_scope:
            log.error("push: {path} holds outcomes for another Redis ({scope}); left in place",
                      path=str(path), scope=scope)
            return
        log.info("push: recording {count} outcomes saved at the last stop", count=len(ops))
        recorded = DeferredList([self.writer.add(op) for op in ops], consumeErrors=True)
        recorded.addCallback(lambda _: path.unlink(missing_ok=True))
        recorded.addErrback(lambda f: log.failure("push: removing {path}", f, path=str(path)))

    async def _bounded(self, awaitable: Awaitable[Any], what: str) -> None:
        try:
            await asyncio.wait_for(asyncio.ensure_future(awaitable), self.drain_timeout_seconds)
        except TimeoutError:
            log.warn("push: {what} did not finish within {seconds}s", what=what, seconds=self.drain_timeout_seconds)

    # -- loops --------------------------------------------------------------------------------

    def _spawn(self, name: str, coroutine: Coroutine[Any, Any, None]) -> Deferred[None]:
        d: Deferred[None] = as_deferred(coroutine)
        d.addErrback(lambda f: log.failure("push loop {loop} stopped", f, loop=name))
        return d

    async def _sleep(self, seconds: float) -> None:
        sleeper = Waker(self.clock)
        self._sleepers.append(sleeper)
        try:
            if self._running:
                await sleeper.wait(seconds)
        finally:
            self._sleepers.remove(sleeper)

    async def _when_clock_synced(self, loop: Coroutine[Any, Any, None]) -> None:
        """Run `loop` once the fleet clock has measured Redis's (gateway/fleet/clock.py):
        the claims and the lease sweeps write and compare lease times that other processes
        compare with theirs.  A plain reactor (tests) counts as measured."""
        while self._running and not getattr(self.clock, "synced", True):
            await self._sleep(self.tick_seconds)
        if self._running:
            await loop
        else:
            loop.close()

    async def _guarded(self, name: str, step: Callable[[], Awaitable[Any]], delay: list[float]) -> Any:
        """Run one step; on a Redis outage or refusal log (once per 5 s), back off and
        return None."""
        try:
            result = await step()
        except REDIS_ERRORS as e:
            self._refusals(name).failed(e)
        except ResponseError as e:
            if "NOGROUP" in str(e):
                # Redis lost the stream (restart without persistence): create it again.
                log.warn("push {loop}: intake consumer group missing; creating it", loop=name)
                for consumer in self.consumers:
                    await consumer.ensure_group()
                return None
            if is_write_refusal(e):
                # OOM, READONLY, MISCONF...: nothing was written; the step is tried again.
                self._refusals(name).failed(e)
            else:
                log.failure("push {loop}: redis refused a command", loop=name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.failure("push {loop}: step failed", loop=name)
        else:
            delay[0] = self.backoff_initial_seconds
            refusals = self._refusal_logs.get(name)
            if refusals is not None:
                refusals.succeeded()
            return result
        await self._sleep(delay[0])
        delay[0] = min(delay[0] * 2, self.backoff_max_seconds)
        return None

    def _refusals(self, loop: str) -> RefusalLog:
        refusals = self._refusal_logs.get(loop)
        if refusals is None:
            refusals = self._refusal_logs[loop] = RefusalLog(f"push {loop}", self.clock, log)
        return refusals

    async def _every(self, name: str, step: Callable[[], Awaitable[bool]], interval: float) -> None:
        delay = [self.backoff_initial_seconds]
        while self._running:
            busy = await self._guarded(name, step, delay)
            if self._running and not busy:
                await self._sleep(interval)

    async def _ownership_step(self) -> bool:
        await self.ownership.tick()
        return False

    def _reading(self, consumer: IntakeConsumer) -> bool:
        """Whether this process reads the consumer's stream now (the shared one always)."""
        return consumer.partition is None or self.ownership.holds(consumer.partition)

    async def _intake_loop(self, consumer: IntakeConsumer) -> None:
        delay = [self.backoff_initial_seconds]

        async def start() -> bool:
            await consumer.ensure_group()
            while self._running and await consumer.read_own_pending_once():
                pass
            if consumer.partition is not None:
                # Taken over: what the last owner read and did not accept.
                await consumer.take_over_pending()
            return True

        started = False
        while self._running:
            if not self._reading(consumer):
                if started:
                    started = False
                    self._cancel_read_ahead(consumer)
                # Polled: a partition taken is read within a housekeeping tick (0.25 s).
                await self._sleep(self.tick_seconds)
                continue
            if not started:
                started = bool(await self._guarded("intake", start, delay))
                continue
            await self._guarded("intake", lambda: self._intake_step(consumer), delay)

    def _cancel_read_ahead(self, consumer: IntakeConsumer) -> None:
        """A partition given up: stop its read ahead.  Entries it got meanwhile stay
        pending for this consumer; the new owner takes them over (`take_over_pending`
        at its start, or its claim-stale loop after push.claim_idle_seconds)."""
        read = self._read_tasks.pop(consumer.stream, None)
        if read is not None and not read.done():
            read.cancel()

    async def _intake_step(self, consumer: IntakeConsumer | None = None) -> int:
        # The next batch is read (XREADGROUP) while this one is accepted: one consumer
        # then waits for one round trip per batch instead of two.  Its entries are
        # pending for this consumer from then on, like those of a cancelled read.
        consumer = consumer or self.consumer
        read = self._read_tasks.get(consumer.stream) or asyncio.ensure_future(consumer.fetch(self.block_ms))
        self._read_tasks[consumer.stream] = read
        try:
            entries = await read
        except asyncio.CancelledError:
            if self._running:
                raise
            return 0
        finally:
            if self._read_tasks.get(consumer.stream) is read:
                del self._read_tasks[consumer.stream]
        if not entries:
            return 0
        if self._running and self._reading(consumer):
            self._read_tasks[consumer.stream] = asyncio.ensure_future(consumer.fetch(self.block_ms))
        return await consumer.process(entries)

    async def _claim_stale_step(self) -> bool:
        busy = False
        for consumer in self.consumers:
            if self._reading(consumer):
                busy = await consumer.claim_stale_once() >= consumer.batch_size or busy
        return busy

    async def _dispatch_loop(self) -> None:
        delay = [self.backoff_initial_seconds]
        dispatcher = self.dispatcher
        idle_poll = self.idle_poll_seconds
        while self._running:
            wanted = min(dispatcher.batch_size, dispatcher.free_slots())
            claimed = await self._guarded("dispatch", dispatcher.dispatch_once, delay)
            if not self._running:
                break
            if claimed is None:
                continue
            if self.ownership.enabled and wanted and not claimed:
                # Owned lanes empty: what this process accepts or promotes wakes it at
                # once; only work another process put in them (HTTP intake, the shared
                # stream) is found by polling, so the poll slows down while nothing comes
                # (each costs a read of every owned partition's lanes: on a Cluster with
                # 24 partitions an idle process polling every 50 ms cost the masters
                # 24 ms of CPU per second, 2026-12-02).
                await dispatcher.waker.wait(idle_poll)
                idle_poll = min(idle_poll * 2, IDLE_POLL_MAX_SECONDS)
                continue
            idle_poll = self.idle_poll_seconds
            # wanted <= 0, not == 0: with more in flight than max_in_flight (a claim that
            # replayed a lost reply's batch) dispatch_once returns 0 at once, without
            # awaiting anything, and this loop must still yield or the reactor freezes
            # (seen after a Cluster master failover: no log, /healthz and SIGTERM unanswered).
            if wanted <= 0 or claimed < wanted:
                await dispatcher.waker.wait(self.idle_poll_seconds)

    async def _housekeeping_step(self) -> bool:
        now = self.clock.seconds()
        owned = self.ownership.owned()  # with one partition: partition 0, as ever
        promoted = await self.ledger.promote_due(now=now, partitions=owned)
        if promoted:
            self.dispatcher.waker.wake()
        self._tick += 1
        # Leases: renew ours well before they run out; recover others' that did.
        every = max(1, int(self.lease_seconds / 3 / self.tick_seconds))
        overdue = 0
        deferred_applied = True
        # Receipt timeouts are hours (push.receipt_timeout_seconds), so they are closed as
        # often as leases are recovered (every lease / 3), not every tick: on a Cluster each
        # sweep is a read per owned partition.
        if self._tick % every == 0:
            # Before the receipt timeouts, and from every partition's stream, not only the
            # owned ones: a receipt kept elsewhere while its notification's partition failed
            # (a slot migrating for 20 s) must land before that partition's owner closes
            # the notification `unconfirmed` (bench/cluster_soak.py: 10 and 21 of 60,000
            # with a 20 s receipt timeout).  Another process applying the same entry at
            # the same time changes nothing (the same receipt twice).
            try:
                deferred = await self.ledger.apply_deferred_receipts(now=now)
            except Exception as e:
                if is_unavailable(e):
                    raise  # Redis away or refusing: the renewals below would fail too
                # Anything else here must not hold back the lease renewals below; the
                # receipt timeouts wait, since kept receipts may not have landed.
                log.failure("push housekeeping: deferred receipts not applied")
                deferred, deferred_applied = 0, False
            if deferred:
                log.info("{count} deferred receipts applied (their partition answers again)", count=deferred)
        if deferred_applied and (self._tick % every == 0 or not self.ownership.enabled):
            # Partitioned, a receipt may be on its way into another partition's deferred
            # stream (its writer's batch) as this one answers again: two housekeeping
            # periods (every lease / 3) of grace before a notification is closed.
            grace = 2 * every * self.tick_seconds if self.keys.partitioned else 0.0
            overdue, unconfirmed = await self.ledger.close_overdue_receipts(now=now, partitions=owned,
                                                                            grace_seconds=grace)
            if unconfirmed:
                log.info("{count} notifications unconfirmed: no receipt within push.receipt_timeout_seconds",
                         count=unconfirmed)
        if self._tick % every == 0:
            await self.dispatcher.renew_leases_once()
            # Not while Redis's clock has just stepped forward: live leases look run out
            # until their holders renew them on the new clock (gateway/fleet/clock.py).
            recovered = 0 if takeovers_held(self.clock) else \
                await self.ledger.recover_expired_leases(now=now, partitions=self.ownership.owned())
            if recovered:
                log.warn("recovered {count} notifications whose submitting process stopped (possible duplicates)",
                         count=recovered)
                self.dispatcher.waker.wake()
            await self.partners.deliver_pending()
            # Dead letters older than the retention have lost their record anyway.
            for part in self.keys.all_partitions:
                await self.redis.zremrangebyscore(part.dead_letters, "-inf",
                                                  now - self.config.retention_days * 86_400)
            await self._update_gauges()
        return promoted >= 1000 or overdue >= 1000

    async def _update_gauges(self) -> None:
        names = [p.value for p in Priority] + ["scheduled"]
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in self.keys.all_partitions:
                for priority in Priority:
                    pipe.zcard(part.lane(priority.value))
                pipe.zcard(part.scheduled)
            counts = await pipe.execute()
        for k, lane in enumerate(names):
            metrics.queue_depth.labels(lane).set(sum(counts[k::len(names)]))
