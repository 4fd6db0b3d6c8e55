"""Builds the service tree from a validated Config.

    gateway (GatewayService, a MultiService)
    ├── redis          RedisService: embedded redis-server or an external URL; the client
    ├── smpp-links     one CarrierLink service per enabled carrier
    ├── smpp-listener  partner binds and carrier outbinds
    ├── push           the notification pipeline (+ MO handling)
    ├── fastagi        the voice menus
    ├── ami            outbound voice reminders
    └── http           admin API and intake

A part switched off in the config is simply not added.  `MultiService` starts children in
order but stops them all at once and does not wait for async starts, so the stop order is
written out in `GatewayService.stopService`: stop intake, drain in-flight work (bounded by
drain_timeout_seconds), unbind SMPP, then stop Redis last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime
from twisted.logger import Logger

from gateway.config import Config, parse_listen
from gateway.fleet.clock import SYNC_INTERVAL_SECONDS, FleetClock, takeovers_held
from gateway.http.server import build_site
from gateway.store.bridge import as_deferred
from gateway.store.service import REDIS_ERRORS, RedisService

log = Logger()

# Stop order: first those that take new work in, last the ones everything else needs.
STOP_ORDER = ("http", "smpp-listener", "fastagi", "push", "mo", "ami", "domain-repair", "smpp-links", "fleet",
              "fleet-clock", "redis")


def tcp_endpoint_service(reactor: Any, listen: str, factory: Any) -> StreamServerEndpointService:
    host, port = parse_listen(listen)
    service = StreamServerEndpointService(TCP4ServerEndpoint(reactor, port, interface=host), factory)
    service._raiseSynchronously = True  # a port in use fails `gateway run` at once
    return service


def bounded(d: Deferred[Any] | None, clock: IReactorTime, seconds: float, what: str) -> Deferred[Any]:
    """Wait for `d` at most `seconds`; log and move on if it does not finish."""
    if d is None:
        return succeed(None)
    timed = Deferred[Any]()

    def give_up() -> None:
        if not timed.called:
            log.warn("{what} did not finish within {seconds}s; going on", what=what, seconds=seconds)
            timed.callback(None)

    call = clock.callLater(seconds, give_up)

    def done(result: Any) -> None:
        if call.active():
            call.cancel()
        if not timed.called:
            timed.callback(None)

    def failed(failure: Any) -> None:
        log.failure("{what} failed while stopping", failure, what=what)
        done(None)

    d.addCallbacks(done, failed)
    return timed


class GatewayService(MultiService):
    """The root service; owns the ordered, bounded shutdown and SIGHUP reloads."""

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.redis: RedisService | None = None
        self.carrier_links: dict[str, Any] = {}
        self.reloaders: list[Callable[[Config], None]] = []
        self.readiness_checks: dict[str, Callable[[], bool]] = {}
        self.push: Any = None
        self.fleet_clock: Any = None  # gateway.fleet.clock.FleetClock, once Redis is configured
        self.v1_resource: Any = None
        self.stopped = Deferred[None]()

    def readiness(self) -> dict[str, bool]:
        return {name: check() for name, check in self.readiness_checks.items()}

    def reload(self, config: Config) -> None:
        """SIGHUP: the new config is already validated; components swap their parts."""
        for reload_part in self.reloaders:
            reload_part(config)
        self.config = config

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        Service.stopService(self)
        timeout = self.config.drain_timeout_seconds
        named = {s.name: s for s in self}
        for name in STOP_ORDER:
            service = named.pop(name, None)
            if service is not None and service.running:
                # Voice calls in progress get the longer voice drain (ivr.voice_drain_seconds).
                limit = max(timeout, self.config.ivr.voice_drain_seconds) if name in ("fastagi", "ami") else timeout
                await bounded(_maybe_deferred(service.stopService()), self.reactor, limit + 1, name)
        leftovers = [_maybe_deferred(s.stopService()) for s in named.values() if s.running]
        if leftovers:
            await DeferredList([d for d in leftovers if d is not None])
        log.info("gateway stopped")


def _maybe_deferred(result: Any) -> Deferred[Any] | None:
    return result if isinstance(result, Deferred) else None


def build_gateway(config: Config, reactor: IReactorCore) -> GatewayService:
    """Assemble every enabled part of the gateway."""
    root = GatewayService(config, reactor)

    redis = RedisService(config.redis, partitions=config.push.partitions)
    redis.setName("redis")
    redis.setServiceParent(root)
    root.redis = redis
    root.readiness_checks["redis"] = lambda: redis.available
    root.readiness_checks["redis_writable"] = lambda: redis.writable
    # Times other processes compare with their own clock (leases above all) are written
    # in Redis's time: a host a minute off had another's live submits sent again
    # (gateway/fleet/clock.py).  Started before every part that tells the time by it.
    # The reactor's own clock does not step (gateway/reactor.py); the host's wall clock is
    # read besides, to say how far it is off.
    root.fleet_clock = FleetClock(lambda: redis.client, redis.keys.partition_members, cast(IReactorTime, reactor),
                                  wall=time.time, step_key=redis.keys.clock_step,
                                  # the leases processes take over from each other
                                  lease_seconds=max(config.push.lease_seconds, config.ami.call_slot_lease_seconds))
    root.fleet_clock.setServiceParent(root)

    _add_components(root, config, reactor)
    root.readiness_checks["carrier_bound"] = lambda: any(link.is_bound() for link in root.carrier_links.values())
    grace = config.http.carrier_down_grace_seconds
    for name, link in root.carrier_links.items():
        root.readiness_checks[f"carrier:{name}"] = _carrier_ready(link, reactor, grace)

    api, console = _add_operations(root, config, reactor)
    if config.http.enabled:
        site = build_site(config.http, readiness=root.readiness, v1=root.v1_resource, api=api, console=console,
                          reactor=cast(IReactorTime, reactor))
        http = tcp_endpoint_service(reactor, config.http.listen, site)
        http.setName("http")
        http.setServiceParent(root)
    return root


class InboundRouter:
    """The links' InboundSink: receipts to the pipeline, citizens' messages to MO handling."""

    # Filled in after the links exist: the pipeline needs the links, the links need a sink.
    receipts: Any = None
    mo: Any = None

    def record_receipt(self, receipt: Any) -> Deferred[None]:
        return self.receipts.record_receipt(receipt)

    def record_mo(self, message: Any) -> Deferred[None]:
        return self.mo.record_mo(message)


def _add_components(root: GatewayService, config: Config, reactor: Any) -> None:
    """SMPP links and listener, push pipeline, voice: each only when enabled."""
    from gateway.smpp.link import CarrierLink, LinkOptions

    assert root.redis is not None
    redis, keys = root.redis.client, root.redis.keys
    drain = config.drain_timeout_seconds
    carriers = [c for c in config.carriers if c.enabled]

    fleet_clock = root.fleet_clock
    if config.push.enabled:
        import os
        import socket

        from gateway.push.mo import MoService, mo_consumer_name
        from gateway.push.render import TemplateCatalogue
        from gateway.push.service import HAND_OVER_FILE, PushService

        links_service = MultiService()
        links_service.setName("smpp-links")
        inbound = InboundRouter()
        link_options = LinkOptions(drain_timeout_seconds=drain)
        from gateway.fleet.account import account_limits

        for carrier in carriers:
            account = account_limits(carrier, redis, keys.prefix, reactor)  # fleet-wide TPS and binds, or None
            link = CarrierLink(carrier, inbound, reactor, options=link_options, account=account,  # named after the carrier
                               wall_clock=fleet_clock)
            link.setServiceParent(links_service)
            root.carrier_links[carrier.name] = link
        links_service.setServiceParent(root)

        push = PushService(redis, keys, config.push, TemplateCatalogue(config.resolve(config.push.templates_file)),
                           list(root.carrier_links.values()), fleet_clock, drain_timeout_seconds=drain,
                           lease_seconds=config.push.lease_seconds,
                           # Outcomes Redis refused until the stop, recorded at the next start.
                           unrecorded_outcomes_file=config.state_path() / HAND_OVER_FILE,
                           earlier_unrecorded_outcomes_files=[config.state_path_before() / HAND_OVER_FILE],
                           redis_scope=" ".join((config.redis.url, config.redis.prefix,
                                                 config.redis.data_dir if config.redis.url == "embedded" else "")))
        push.setServiceParent(root)
        # Not ready while submit outcomes wait for Redis to take them (issue 12 item 1).
        root.readiness_checks["outcome_writes"] = lambda: not push.writer.failing
        # MOs of the partitions this process owns (all of them with one partition); the
        # voice reminders below work every partition: not every process has an Asterisk.
        mo = MoService(redis, keys, config.push.mo, reactor, now=fleet_clock.seconds,
                       partitions=push.ownership.owned,
                       consumer_name=mo_consumer_name(config.push.consumer_name, config.push.partitions,
                                                      socket.gethostname(), os.getpid()),
                       wait_replicas=config.push.delivery_wait_replicas)
        mo.setName("mo")
        mo.setServiceParent(root)
        inbound.receipts, inbound.mo = push, mo
        from twisted.web.resource import Resource

        root.v1_resource = Resource()
        root.v1_resource.putChild(b"notifications", push.http_resource(max_batch=config.http.max_batch))
        root.push = push

        def reload_templates(_: Config) -> None:
            push.reload_templates()

        root.reloaders.append(reload_templates)

        if config.smpp_server.enabled:
            from gateway.smpp.listener import SmppListener

            certificate = config.resolve(config.smpp_server.tls_certificate) if config.smpp_server.tls_certificate else None
            listener = SmppListener(config.smpp_server, push.partners, root.carrier_links, reactor,
                                    certificate_path=certificate, wall_clock=fleet_clock)
            listener.setServiceParent(root)
            push.set_partner_receipt_sink(listener)

        CancellationRepair(redis, keys, root.fleet_clock).setServiceParent(root)

    if config.ivr.fastagi.enabled:
        from gateway.ivr.fastagi import FastAgiService
        from gateway.ivr.menus import load_menus

        menus_path = config.resolve(config.ivr.menus_file)
        # The fleet's clock: a booking's cancellation deadline means the same moment on every host.
        fastagi = FastAgiService(config.ivr, lambda: load_menus(menus_path), redis, keys, root.fleet_clock,
                                 reactor=reactor, drain_timeout_seconds=max(drain, config.ivr.voice_drain_seconds))
        fastagi.setServiceParent(root)

        def reload_menus(_: Config) -> None:
            fastagi.reload()

        root.reloaders.append(reload_menus)

    if config.ami.enabled:
        from gateway.ivr.reminders import build_voice_reminders

        voice = build_voice_reminders(config, redis, keys, reactor, fleet_clock=fleet_clock)
        if config.ivr.fastagi.enabled:
            # A reminder whose AGI the voice drain cut is the gateway's doing, not the citizen's.
            voice.reminders.cut_by_shutdown = fastagi.cut_by_shutdown.__contains__
        voice.setServiceParent(root)


class CancellationRepair(TimerService):
    """Finishes the cancellations whose SMS hand-off a crash cut (gateway/domain/bookings.py):
    at start and every 60 s.  `clock`: the fleet clock (the claims it waits for were
    written on it).  While take-overs are held (a start until the fleet clock has
    settled, or Redis's clock just stepped forward: a live claim looks run out) a sweep
    is tried again every interval of the fleet clock rather than at the next tick: a
    start settles within 5.5 s."""

    def __init__(self, redis: Any, keys: Any, clock: Any) -> None:
        from gateway.domain.bookings import BookingCancellation

        super().__init__(60.0, lambda: as_deferred(self.sweep()))
        self.clock = self._fleet_clock = clock
        self.setName("domain-repair")
        self._cancellation = BookingCancellation(redis, keys)
        self._retry: IDelayedCall | None = None

    async def sweep(self) -> None:
        if takeovers_held(self._fleet_clock):
            if self._retry is None or not self._retry.active():
                self._retry = self._fleet_clock.callLater(SYNC_INTERVAL_SECONDS, lambda: as_deferred(self.sweep()))
            return
        try:
            repaired = await self._cancellation.repair_unnotified(now=self._fleet_clock.seconds())
        except REDIS_ERRORS:
            return  # Redis away: the next sweep tries again
        if repaired:
            log.info("finished {count} cancellation notices cut short earlier", count=repaired)

    def stopService(self) -> Any:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        return super().stopService()


def _add_operations(root: GatewayService, config: Config, reactor: Any) -> tuple[Any, Any]:
    """Fleet status reporting and control (gateway/ops/fleet.py), the operations API and
    the console (gateway/http/api.py, gateway/http/console/)."""
    from gateway.http.api import ApiContext, OperationsApi
    from gateway.http.console import console_resource
    from gateway.ops.fleet import FleetReporter
    from gateway.push.queue import QuietHoursPolicy

    assert root.redis is not None
    redis_service = root.redis
    extras: dict[str, Callable[[], Any]] = {}
    reminders = _find_reminders(root)
    if reminders is not None:
        trunk = config.ami.trunk
        extras["voice_calls"] = lambda: {trunk: reminders.open_calls}  # a property
    listener = service_named(root, "smpp-listener")
    if listener is not None and hasattr(listener, "partners_bound"):
        extras["partners_bound"] = listener.partners_bound
    if root.fleet_clock is not None:
        extras["clock"] = root.fleet_clock.status
    if root.push is not None and root.push.ownership.enabled:
        # The pipeline partitions this process owns (gateway/push/ownership.py).
        extras["partitions_owned"] = lambda: list(root.push.ownership.owned()) if root.push is not None else []
    policy = QuietHoursPolicy(config.push.quiet_hours.start, config.push.quiet_hours.end,
                              config.push.quiet_hours.timezone)
    # The fleet's clock: reports, minute counts and queue ages line up across hosts.
    reporter = FleetReporter(lambda: redis_service.client, redis_service.keys, root.carrier_links, root.fleet_clock,
                             extras=extras, quiet_until=policy.quiet_until,
                             dispatcher=root.push.dispatcher if root.push is not None else None)
    reporter.setServiceParent(root)
    context = ApiContext(
        redis=lambda: redis_service.client, keys=redis_service.keys, token=config.http.token.reveal(),
        carriers=lambda: {c.name: c for c in root.config.carriers if c.enabled},
        quiet_until=policy.quiet_until, clock=root.fleet_clock, status_ttl_seconds=reporter.ttl_seconds,
        timezone=config.push.quiet_hours.timezone)
    return OperationsApi(context), console_resource()


def _carrier_ready(link: Any, clock: Any, grace_seconds: float) -> Callable[[], bool]:
    """Ready unless this carrier should carry traffic and has been without a bound
    session for longer than the grace (a reconnect or a restart takes a few seconds;
    an operator's stop or isolate is intended, not a failure)."""

    def check() -> bool:
        if not link.running or link.isolated or link.sessions_bound():
            return True
        return clock.seconds() - link.state_since <= grace_seconds

    return check


def _find_reminders(root: GatewayService) -> Any:
    voice = service_named(root, "ami")
    return getattr(voice, "reminders", None)


def service_named(root: MultiService, name: str) -> IService | None:
    try:
        return root.getServiceNamed(name)
    except KeyError:
        return None
