"""Fleet status and fleet-wide runtime control, through Redis.

Theory of operation
-------------------
Every `gateway run` process runs a `FleetReporter`.  Every ``interval_seconds`` it

1. writes its live state (per carrier: link state, reason and since when, sessions bound
   vs configured, window in use, submit/s, TPS limit, receipts/s; voice calls in
   progress; partners bound) as one JSON string under ``keys.process_status(id)`` with a
   TTL of ``ttl_seconds``, and notes the process in the ``keys.processes`` sorted set:
   a process that dies simply drops out of the views when its TTL runs out;
2. adds what its carriers did since the last report to the per-minute counters
   ``keys.minute_counts(minute)`` (kept two hours: the console's charts show one);
3. reads ``keys.control`` and applies it to its own carrier links: ``carrier:<name>``
   (``running``, ``stopped``, ``isolated``) and ``tps:<name>``.  An operator's action
   writes the control hash once and every process applies it within one interval, so
   control is fleet-wide without a process knowing the others.

`read_fleet` is the other half: it reads every live process's state and the shared
queues (lanes, scheduled, awaiting receipt, dead letters, voice) and sums them per
carrier.  Both the HTTP API and the CLI call it; neither needs a running daemon's memory.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway import metrics
from gateway.fleet.names import live_name
from gateway.store.bridge import as_deferred
from gateway.store.keys import Keys

__all__ = ["CARRIER_STATES", "FleetReporter", "read_charts", "read_fleet", "read_queues"]

log = Logger()

LANES = ("high", "normal", "bulk")
# Control values a carrier can be set to.
CARRIER_STATES = ("running", "stopped", "isolated")
# Receipt states that end a message delivered / not delivered (the 15-minute ratio).
_DELIVERED = frozenset({"DELIVRD"})
_NOT_DELIVERED = frozenset({"UNDELIV", "EXPIRED", "REJECTD", "DELETED", "UNKNOWN"})
# Per-minute counters are kept two hours: the charts show the last one.
MINUTE_COUNTS_TTL_SECONDS = 7200
# Partitioned, the queue gauges are read this often instead of with every report: the read
# is ~13 commands per partition (24 partitions every 2 s: 156 commands/s, most of an idle
# process's Redis cost on the Cluster, bench/cluster_idle.py 2026-12-02), and a Prometheus
# scrape (15 s by default) sees them no staler.  One partition: with every report, as before.
QUEUE_GAUGES_PARTITIONED_SECONDS = 10.0


def _counter_values(counter: Any, label: str) -> dict[tuple[str, str], float]:
    """(label value, second label value) -> count, for a labelled prometheus Counter."""
    values: dict[tuple[str, str], float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = sample.labels
                key = (labels.get(label, ""), next((v for k, v in labels.items() if k != label), ""))
                values[key] = values.get(key, 0.0) + sample.value
    return values


@dataclass
class _CarrierTotals:
    submits: float = 0.0
    submit_failures: float = 0.0
    receipts: float = 0.0
    delivered: float = 0.0
    not_delivered: float = 0.0


def _carrier_totals() -> dict[str, _CarrierTotals]:
    """What the carrier links of this process did since it started (from the metrics)."""
    totals: dict[str, _CarrierTotals] = {}
    for (carrier, status), n in _counter_values(metrics.submit_responses, "carrier").items():
        t = totals.setdefault(carrier, _CarrierTotals())
        t.submits += n
        if status != "ESME_ROK":
            t.submit_failures += n
    for (carrier, state), n in _counter_values(metrics.receipts, "carrier").items():
        t = totals.setdefault(carrier, _CarrierTotals())
        t.receipts += n
        if state in _DELIVERED:
            t.delivered += n
        elif state in _NOT_DELIVERED:
            t.not_delivered += n
    return totals


def link_state(link: Any) -> str:
    """bound, isolated, stopped (by an operator), connecting or down."""
    if not link.running:
        return "stopped"
    if link.sessions_bound():
        return "isolated" if link.isolated else "bound"
    return "down" if link.problem else "connecting"


class FleetReporter(Service):
    """Reports this process's state into Redis and applies the fleet-wide controls.

    Args:
        redis: a zero-argument callable returning the redis.asyncio client (None while
            Redis is not started).
        keys: the key schema.
        links: carrier name -> CarrierLink of this process.
        clock: IReactorTime.
        interval_seconds: how often to report and to apply the controls.
        ttl_seconds: how long a report stands without renewal (a few intervals, so one
            slow tick does not make a live process vanish from the views).
        extras: further zero-argument callables whose results are merged into the
            report (voice calls, partners bound).
    """

    name = "fleet"

    def __init__(self, redis: Callable[[], Any], keys: Keys, links: Mapping[str, Any], clock: Any, *,
                 interval_seconds: float = 2.0, ttl_seconds: float = 10.0,
                 extras: Mapping[str, Callable[[], Any]] | None = None,
                 process_id: str | None = None, queue_gauges: bool = True,
                 quiet_until: Callable[[float], float] | None = None, dispatcher: Any = None) -> None:
        self.redis = redis
        self.keys = keys
        self.links = dict(links)
        self.clock = clock
        self.interval_seconds = interval_seconds
        self.ttl_seconds = ttl_seconds
        self.extras = dict(extras or {})
        self.process_id = process_id or live_name()  # unique even where host name and pid are not
        # The fleet-wide queue gauges of /metrics (dead letters, awaiting receipt, oldest
        # queued age) are read from Redis with each report.
        self.queue_gauges = queue_gauges
        self.dispatcher = dispatcher  # the push Dispatcher: lane and type pauses
        self.quiet_until = quiet_until or (lambda now: 0.0)
        for name in self.links:
            metrics.carrier_up.labels(name).set(0)  # listed before the first bind
        # Uptime on the host's own clock, the start told on the fleet clock at each report:
        # the fleet clock may not have measured its offset yet (gateway/fleet/clock.py).
        self._local_clock = getattr(clock, "local", clock)
        self._started_local = self._local_clock.seconds()
        self._last_totals: dict[str, _CarrierTotals] = {}
        self._last_at = clock.seconds()
        self._rates: dict[str, dict[str, float]] = {}
        self._loop: LoopingCall | None = None
        self._busy = False
        self._queues_read_at: float | None = None
        self._stopping_links: dict[str, Deferred[Any]] = {}
        self._stopped_by_control: set[str] = set()

    def startService(self) -> None:
        super().startService()
        self._last_totals = _carrier_totals()
        self._last_at = self.clock.seconds()
        loop = LoopingCall(self._tick)
        loop.clock = self.clock
        self._loop = loop
        loop.start(self.interval_seconds, now=True).addErrback(
            lambda f: log.failure("fleet status loop failed", f))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        client = self.redis()
        if client is None:
            return succeed(None)
        # Leave the views at once instead of after the TTL.
        return as_deferred(self._withdraw(client))

    async def _withdraw(self, client: Any) -> None:
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.delete(self.keys.process_status(self.process_id))
                pipe.zrem(self.keys.processes, self.process_id)
                await pipe.execute()
        except Exception as e:  # noqa: BLE001 - leaving the views is best effort; the TTL does it anyway
            log.info("fleet status not withdrawn ({error}); it expires by itself", error=type(e).__name__)

    def _tick(self) -> Deferred[None] | None:
        if self._busy:
            return None  # the previous report still waits for Redis
        client = self.redis()
        if client is None:
            return None
        self._busy = True
        d = as_deferred(self.report_once(client))

        def done(result: Any) -> None:
            self._busy = False

        def failed(failure: Any) -> None:
            self._busy = False
            log.warn("fleet status not reported: {error}", error=failure.getErrorMessage()[:200])

        d.addCallbacks(done, failed)
        return None

    def snapshot(self, now: float) -> dict[str, Any]:
        """This process's live state (JSON-ready)."""
        carriers: dict[str, Any] = {}
        for name, link in self.links.items():
            config = link.config
            rates = self._rates.get(name, {})
            state = link_state(link)
            reason = "" if link.sessions_bound() else (link.problem or "")
            carriers[name] = {
                "state": state,
                "reason": "stopped by an operator" if state == "stopped" else reason,
                # state_since is on the link's reactor clock (elapsed time); told on the fleet's
                "since": round(now - (link.clock.seconds() - link.state_since), 3),
                "sessions_bound": link.sessions_bound() if link.running else 0,
                "sessions_configured": config.sessions,
                "window_in_use": link.window_in_use() if link.running else 0,
                "window_size": config.sessions * config.window,
                "tps_limit": link.tps_limit,
                "submit_per_second": round(rates.get("submits", 0.0), 2),
                "receipts_per_second": round(rates.get("receipts", 0.0), 2),
            }
        report: dict[str, Any] = {
            "id": self.process_id, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": round(self.started_at(now), 3), "reported_at": round(now, 3), "carriers": carriers,
        }
        for key, extra in self.extras.items():
            try:
                report[key] = extra()
            except Exception:  # noqa: BLE001 - one broken figure must not stop the report
                log.failure("fleet status: {key} could not be read", key=key)
        return report

    def started_at(self, now: float) -> float:
        """When this process started, on the clock that says `now`."""
        return now - (self._local_clock.seconds() - self._started_local)

    def _count_since_last(self, now: float) -> dict[str, dict[str, float]]:
        totals = _carrier_totals()
        elapsed = max(now - self._last_at, 1e-6)
        deltas: dict[str, dict[str, float]] = {}
        for carrier, t in totals.items():
            before = self._last_totals.get(carrier, _CarrierTotals())
            delta = {
                "submits": t.submits - before.submits,
                "failures": t.submit_failures - before.submit_failures + t.not_delivered - before.not_delivered,
                "receipts": t.receipts - before.receipts,
                "delivered": t.delivered - before.delivered,
                "not_delivered": t.not_delivered - before.not_delivered,
            }
            deltas[carrier] = delta
            self._rates[carrier] = {"submits": delta["submits"] / elapsed, "receipts": delta["receipts"] / elapsed}
        self._last_totals, self._last_at = totals, now
        return deltas

    async def report_once(self, client: Any) -> None:
        """Apply the controls, then report and count (so the report already shows them)."""
        self.apply_control(await client.hgetall(self.keys.control))
        now = self.clock.seconds()
        self._set_link_gauges()
        if self.queue_gauges and self._queue_gauges_due(now):
            self._queues_read_at = now
            _set_queue_gauges(await read_queues(client, self.keys, now=now, quiet_until=self.quiet_until(now)))
        deltas = self._count_since_last(now)
        report = self.snapshot(now)
        minute_key = self.keys.minute_counts(int(now // 60))
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.process_status(self.process_id), json.dumps(report, ensure_ascii=False),
                     px=int(self.ttl_seconds * 1000))
            pipe.zadd(self.keys.processes, {self.process_id: now})
            # Processes gone for an hour leave the index (their status key expired long ago).
            pipe.zremrangebyscore(self.keys.processes, "-inf", now - 3600)
            wrote = False
            for carrier, delta in deltas.items():
                for what, n in delta.items():
                    if n:
                        pipe.hincrby(minute_key, f"{carrier}:{what}", int(n))
                        wrote = True
            if wrote:
                pipe.expire(minute_key, MINUTE_COUNTS_TTL_SECONDS)
            await pipe.execute()

    def _queue_gauges_due(self, now: float) -> bool:
        if not self.keys.partitioned or self._queues_read_at is None:
            return True
        return now - self._queues_read_at >= QUEUE_GAUGES_PARTITIONED_SECONDS

    def _link_stopped(self, result: Any, name: str) -> None:
        self._stopping_links.pop(name, None)

    def _set_link_gauges(self) -> None:
        for name, link in self.links.items():
            bound = link.running and link.sessions_bound() > 0
            metrics.carrier_up.labels(name).set(1 if bound else 0)
            metrics.carrier_window_in_use.labels(name).set(link.window_in_use() if link.running else 0)
            metrics.carrier_tps_limit.labels(name).set(link.tps_limit)

    def apply_control(self, control: Mapping[str, str]) -> None:
        """Bring this process's links to what the control hash asks."""
        if not self.running:
            return  # the gateway is stopping: its own stop order applies now
        if self.dispatcher is not None:
            lanes = frozenset(k.split(":", 2)[2] for k in control if k.startswith("pause:lane:"))
            types = frozenset(k.split(":", 2)[2] for k in control if k.startswith("pause:type:"))
            if lanes != self.dispatcher.paused_lanes or types != self.dispatcher.paused_types:
                log.info("paused lanes now {lanes}, paused types now {types}",
                         lanes=",".join(sorted(lanes)) or "none", types=",".join(sorted(types)) or "none")
                self.dispatcher.paused_lanes, self.dispatcher.paused_types = lanes, types
                self.dispatcher.waker.wake()  # a resumed lane is claimed from at once
        for name, link in self.links.items():
            wanted = control.get(f"carrier:{name}", "running")
            if wanted == "stopped":
                if link.running and name not in self._stopping_links:
                    log.info("carrier {carrier}: stopped by an operator", carrier=name)
                    d = maybeDeferred(link.stopService)
                    self._stopping_links[name] = d
                    self._stopped_by_control.add(name)
                    d.addBoth(self._link_stopped, name)
            elif name in self._stopped_by_control and not link.running and name not in self._stopping_links:
                # Only a link an operator stopped is started again: one the gateway is
                # stopping (SIGTERM drain) stays stopped.
                log.info("carrier {carrier}: started by an operator", carrier=name)
                self._stopped_by_control.discard(name)
                link.startService()
            isolated = wanted == "isolated"
            if link.isolated != isolated:
                link.isolated = isolated
                log.info("carrier {carrier}: {what}", carrier=name,
                         what="isolated (no new submits)" if isolated else "no longer isolated")
            tps_text = control.get(f"tps:{name}")
            account_rate = link.account.rate if link.account is not None else None
            if account_rate is not None:
                # The carrier sells the account a fleet-wide rate: an operator's TPS is that
                # rate (every process applies the same value), not a per-process one.
                configured = float(link.config.account_tps or account_rate.account_tps)
                try:
                    tps = float(tps_text) if tps_text else configured
                except ValueError:
                    tps = configured
                if tps != account_rate.account_tps:
                    account_rate.set_account_tps(tps)
                    log.info("carrier {carrier}: account TPS (fleet-wide) now {tps}",
                             carrier=name, tps=tps)
                continue
            try:
                tps = float(tps_text) if tps_text else float(link.config.tps_limit)
            except ValueError:
                tps = float(link.config.tps_limit)
            if tps != link.tps_limit:
                link.set_tps_limit(tps)
                log.info("carrier {carrier}: TPS limit now {tps}", carrier=name, tps=tps)


def _set_queue_gauges(queues: Mapping[str, Any]) -> None:
    metrics.dead_letters.set(queues["dead_letters"])
    metrics.awaiting_receipt.set(queues["awaiting_receipt"])
    metrics.receipts_parked.set(queues["receipts_parked"])
    metrics.quiet_hours_held.set(queues["quiet_hours_held"])
    for lane, row in queues["lanes"].items():
        metrics.oldest_queued_age.labels(lane).set(row["oldest_age_seconds"] or 0)


async def read_processes(redis: Any, keys: Keys, *, now: float | None = None,
                         ttl_seconds: float = 10.0) -> list[dict[str, Any]]:
    """The live processes' reports (those reported within `ttl_seconds`)."""
    now = time.time() if now is None else now
    ids = await redis.zrangebyscore(keys.processes, now - ttl_seconds, "+inf")
    if not ids:
        return []
    # GETs in a pipeline, not one MGET: the status keys hash to different Cluster slots.
    async with redis.pipeline(transaction=False) as pipe:
        for process_id in ids:
            pipe.get(keys.process_status(process_id))
        raw = await pipe.execute()
    return [json.loads(r) for r in raw if r]


async def read_queues(redis: Any, keys: Keys, *, now: float | None = None,
                      quiet_until: float = 0.0) -> dict[str, Any]:
    """The shared queues, summed over the pipeline's partitions: lanes (depth, oldest
    age), scheduled and quiet-hours held, submitting, awaiting receipt, dead letters, and
    the voice reminders."""
    now = time.time() if now is None else now
    parts = keys.all_partitions
    async with redis.pipeline(transaction=False) as pipe:
        for part in parts:
            for lane in LANES:
                pipe.zcard(part.lane(lane))
                pipe.zrange(part.lane(lane), 0, 0)
            pipe.zcard(part.scheduled)
            pipe.zrange(part.scheduled, 0, 0, withscores=True)
            if quiet_until:
                # Quiet-hours reminders are scheduled for exactly the end of the window.
                pipe.zcount(part.scheduled, quiet_until - 0.5, quiet_until + 0.5)
            pipe.zcard(part.awaiting_receipt)
            pipe.zcard(part.dead_letters)
            pipe.zcard(part.inflight)
            pipe.zcard(part.early_receipts)
        for part in parts:  # voice keys are per partition too (w11-voice)
            pipe.zcard(part.voice_due)
            pipe.zcard(part.voice_calls_open)
        results = await pipe.execute()
    # Only commands on a key: a keyless one (ECHO as a placeholder) is refused in a
    # Cluster pipeline, so the quiet-hours count is left out when there is no window.
    per_part = 2 * len(LANES) + (7 if quiet_until else 6)
    voice_counts = results[len(parts) * per_part:]
    lanes: dict[str, Any] = {lane: {"depth": 0, "oldest_age_seconds": None} for lane in LANES}
    heads: dict[str, list[str]] = {lane: [] for lane in LANES}
    totals = {"scheduled": 0, "quiet_hours_held": 0, "awaiting_receipt": 0, "dead_letters": 0, "submitting": 0,
              "receipts_parked": 0}
    next_due: float | None = None
    for index in range(len(parts)):
        row = results[index * per_part:(index + 1) * per_part]
        if not quiet_until:
            row = [*row[:2 * len(LANES) + 2], 0, *row[2 * len(LANES) + 2:]]
        for k, lane in enumerate(LANES):
            lanes[lane]["depth"] += int(row[2 * k])
            heads[lane].extend(row[2 * k + 1])
        base = 2 * len(LANES)
        totals["scheduled"] += int(row[base])
        if row[base + 1]:
            due = float(row[base + 1][0][1])
            next_due = due if next_due is None else min(next_due, due)
        totals["quiet_hours_held"] += int(row[base + 2])
        totals["awaiting_receipt"] += int(row[base + 3])
        totals["dead_letters"] += int(row[base + 4])
        totals["submitting"] += int(row[base + 5])
        totals["receipts_parked"] += int(row[base + 6])
    heads_flat = [(lane, notification_id) for lane in LANES for notification_id in heads[lane]]
    if heads_flat:
        async with redis.pipeline(transaction=False) as pipe:
            for _, notification_id in heads_flat:
                pipe.hget(keys.notification(notification_id), "accepted_at")
            accepted = await pipe.execute()
        for (lane, _), at in zip(heads_flat, accepted, strict=True):
            if at:
                age = round(max(0.0, now - float(at)), 1)
                current = lanes[lane]["oldest_age_seconds"]
                lanes[lane]["oldest_age_seconds"] = age if current is None else max(current, age)
    return {
        "lanes": lanes,
        "scheduled": totals["scheduled"],
        "next_scheduled_at": next_due,
        "quiet_hours_held": totals["quiet_hours_held"],
        "quiet_hours_release_at": quiet_until or None,
        "submitting": totals["submitting"],
        "awaiting_receipt": totals["awaiting_receipt"],
        "dead_letters": totals["dead_letters"],
        # receipts that found no submit yet (beat its submit_sm_resp, or another account's)
        "receipts_parked": totals["receipts_parked"],
        "voice_reminders_queued": sum(int(n) for n in voice_counts[0::2]),
        "voice_calls_open": sum(int(n) for n in voice_counts[1::2]),
    }


async def read_charts(redis: Any, keys: Keys, *, now: float | None = None, minutes: int = 60) -> dict[str, Any]:
    """Per-minute submits, receipts and failures per carrier over the last `minutes`."""
    now = time.time() if now is None else now
    last = int(now // 60)
    first = last - minutes + 1
    async with redis.pipeline(transaction=False) as pipe:
        for minute in range(first, last + 1):
            pipe.hgetall(keys.minute_counts(minute))
        rows = await pipe.execute()
    series: dict[str, dict[str, list[int]]] = {}
    for offset, row in enumerate(rows):
        for field, value in row.items():
            carrier, _, what = field.rpartition(":")
            per = series.setdefault(carrier, {})
            per.setdefault(what, [0] * minutes)[offset] = int(value)
    return {"minutes": [(first + k) * 60 for k in range(minutes)], "carriers": series}


async def read_fleet(redis: Any, keys: Keys, *, now: float | None = None, quiet_until: float = 0.0,
                     configured_carriers: Mapping[str, Any] | None = None,
                     ttl_seconds: float = 10.0) -> dict[str, Any]:
    """Every live process's state summed per carrier, with the shared queues.

    `configured_carriers` (name -> CarrierConfig) lists carriers even when no live
    process reports them (state ``down``, reason ``no process reports it``).
    """
    now = time.time() if now is None else now
    processes = await read_processes(redis, keys, now=now, ttl_seconds=ttl_seconds)
    control = await redis.hgetall(keys.control)
    charts = await read_charts(redis, keys, now=now, minutes=15)
    carriers: dict[str, dict[str, Any]] = {}
    rank = {"bound": 5, "isolated": 4, "connecting": 3, "down": 2, "stopped": 1}
    for name in configured_carriers or {}:
        carriers[name] = {"state": "down", "reason": "no process reports it", "since": None,
                          "sessions_bound": 0, "sessions_configured": 0, "window_in_use": 0,
                          "window_size": 0, "tps_limit": 0.0, "submit_per_second": 0.0,
                          "receipts_per_second": 0.0, "processes": {}, "reported": False}
    for process in processes:
        for name, state in process.get("carriers", {}).items():
            total = carriers.setdefault(name, {"state": "down", "reason": "", "since": None, "sessions_bound": 0,
                                               "sessions_configured": 0, "window_in_use": 0, "window_size": 0,
                                               "tps_limit": 0.0, "submit_per_second": 0.0,
                                               "receipts_per_second": 0.0, "processes": {}, "reported": False})
            if not total["reported"] or rank.get(state["state"], 0) > rank.get(total["state"], 0):
                total["state"], total["reason"], total["since"] = state["state"], state["reason"], state["since"]
            total["reported"] = True
            for field in ("sessions_bound", "sessions_configured", "window_in_use", "window_size"):
                total[field] += int(state.get(field, 0))
            for field in ("tps_limit", "submit_per_second", "receipts_per_second"):
                total[field] = round(total[field] + float(state.get(field, 0.0)), 2)
            total["processes"][process["id"]] = state["state"]
    for name, total in carriers.items():
        total.pop("reported", None)
        total["control"] = control.get(f"carrier:{name}", "running")
        if control.get(f"tps:{name}"):
            total["tps_override"] = float(control[f"tps:{name}"])
        counts = charts["carriers"].get(name, {})
        delivered = sum(counts.get("delivered", []))
        not_delivered = sum(counts.get("not_delivered", []))
        judged = delivered + not_delivered
        total["delivery_ratio_15min"] = round(delivered / judged, 4) if judged else None
    voice: dict[str, int] = {}
    partners = 0
    for process in processes:
        for trunk, calls in (process.get("voice_calls") or {}).items():
            voice[trunk] = voice.get(trunk, 0) + int(calls)
        partners += int(process.get("partners_bound") or 0)
    queues = await read_queues(redis, keys, now=now, quiet_until=quiet_until)
    queues["paused_lanes"] = sorted(k.split(":", 2)[2] for k in control if k.startswith("pause:lane:"))
    queues["paused_types"] = sorted(k.split(":", 2)[2] for k in control if k.startswith("pause:type:"))
    return {
        "now": round(now, 3),
        "processes": [{"id": p["id"], "host": p.get("host"), "pid": p.get("pid"), "started_at": p.get("started_at"),
                       "reported_at": p.get("reported_at"), "clock": p.get("clock")} for p in processes],
        "carriers": carriers,
        "queues": queues,
        "voice": {"calls_in_progress": voice, "reminders_queued": queues["voice_reminders_queued"]},
        "partners_bound": partners,
    }


# NTP keeps hosts within milliseconds; as gateway/fleet/clock.py's warning, a second is
# a host whose clock needs fixing.
CLOCK_ATTENTION_SECONDS = 1.0
HOLD_WORDS = {"starting": "starting (until its clock has settled, about 5 s)",
              "redis_clock_stepped": "Redis's clock stepped forward"}


def clock_attention(clock: Mapping[str, Any] | None) -> str | None:
    """What an operator should know of a process's clock report (FleetClock.status), or
    None when there is nothing to say: take-overs held, or its host's clock off."""
    if not clock:
        return None
    held = clock.get("takeovers_held")
    if held:
        return "take-overs held: " + HOLD_WORDS.get(held, held)
    offset = clock.get("host_offset_seconds")
    if offset is not None and abs(offset) >= CLOCK_ATTENTION_SECONDS:
        # the offset is Redis's clock minus the host's
        return f"host clock {abs(offset):.1f} s {'ahead of' if offset < 0 else 'behind'} Redis's (fix its NTP)"
    return None
