"""The FastAGI server: a thin Twisted shell over `AgiSession` and the menu `CallFlow`.

Asterisk connects once per call (``AGI(agi://127.0.0.1:4573/12123)``).  The protocol feeds
bytes to the sans-IO session, hands its events to the call's flow, sends the command the
flow asks for, and runs domain actions as asyncio coroutines on the shared Redis client
(each call its own chain, so one slow Redis answer holds up only its own caller).

The script is ``agi_network_script``: ``12123`` is the inbound menu, ``notify`` the
outbound reminder (its notification id is ``agi_arg_1``); every menu in ivr.yaml is a
script.  A call keeps the `MenuBook` it started with: `FastAgiService.reload` (SIGHUP)
swaps the book for calls that start afterwards.

However a call ends (the flow finished, the caller hung up at any point, Asterisk broke
the protocol, the socket closed), it is recorded once: ``gateway12123_agi_calls_total`` by
outcome and an ``ivr.call`` event on the events stream with the masked caller, the
outcome and the path of nodes taken.

Limits (anyone who reaches the port can claim to be any caller, and a peer that stops
answering would hold its socket for ever):

* ``ivr.fastagi.allow``: only these networks (default loopback) may connect; any other
  address is closed at once, unread.
* ``ivr.fastagi.max_connections``: calls at once; one more call is asked to play the
  ``system_error`` apology and closed at once (`FastAgiService.busy_farewell`).
* ``ivr.fastagi.reply_timeout_seconds`` (longer than the longest prompt) plus the
  command's own key wait (`key_wait_seconds`): a command unanswered this long ends the
  call (outcome ``reply_timeout``) and aborts the connection.
* TCP keepalive (gateway.connections) finds a vanished Asterisk host in ~90 s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import metrics
from gateway.config import ConfigError, IvrConfig, parse_listen
from gateway.connections import ClosedAtOnce, Networks, RefusalLog, enable_keepalive
from gateway.fleet.clock import steady_clock
from gateway.ivr.actions import CallContext, VoiceActions
from gateway.ivr.agi import (
    AgiSession,
    ConnectionClosed,
    Environment,
    Hangup,
    ProtocolError,
    Reply,
)
from gateway.ivr.menus import (
    ActionResult,
    CallFlow,
    Finish,
    MenuBook,
    RunAction,
    ServiceHours,
    Step,
)
from gateway.ivr.prompts import SpeechSynthesizer
from gateway.privacy import PhoneNumber
from gateway.store.bridge import as_deferred
from gateway.store.keys import Keys

__all__ = ["FastAgiFactory", "FastAgiProtocol", "FastAgiService"]

log = Logger()

# Asterisk writes the whole environment the moment it connects; a client that has not
# finished it within this time is not Asterisk (or is stuck) and loses its socket.
HEADER_TIMEOUT_SECONDS = 10.0
# After HANGUP, Asterisk answers the running command at once (res_agi.c writes the reply
# before HANGUP); if a call is still not over this much later, it is ended here.
HANGUP_GRACE_SECONDS = 5.0
EVENTS_MAXLEN = 1_000_000


@dataclass(frozen=True)
class CallRecord:
    """What is kept of a call: no whole number, no entered digits."""

    script: str
    uniqueid: str
    caller: PhoneNumber | None
    outcome: str
    path: tuple[str, ...]
    started_at: float
    ended_at: float


class FastAgiProtocol(Protocol):
    """One FastAGI connection = one call."""

    def __init__(self, service: FastAgiService) -> None:
        self._service = service
        self._clock = service.clock  # times of day (service hours, today's bookings, the record)
        # Durations (the call's, the step latency) on the steady clock: the fleet clock
        # steps when Redis's does, and a call must not last an hour because of it.
        self._steady = steady_clock(service.clock)
        self._session = AgiSession(max_line_bytes=service.config.fastagi.max_line_bytes)
        self._flow: CallFlow | None = None
        self._context: CallContext | None = None
        self._environment: Environment | None = None
        self._header_timer: IDelayedCall | None = None
        self._reply_timer: IDelayedCall | None = None
        self._hangup_timer: IDelayedCall | None = None
        self._gone = False  # the caller hung up or the socket closed
        self._cut_by_shutdown = False  # the voice drain ran out (FastAgiService._drop_calls)
        self._action_running = False
        self._recorded = False
        self._started_at = 0.0
        self._started_steady = 0.0
        self._reply_at: float | None = None  # steady clock, for gateway12123_agi_step_seconds
        self.done: Deferred[CallRecord | None] = Deferred()

    # -- Twisted ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._service.open_connections += 1
        enable_keepalive(self.transport)
        self._started_at = self._clock.seconds()
        self._started_steady = self._steady.seconds()
        # A call counts as active until it is recorded (see when_idle and stopService).
        self._service.active.add(self)
        self.done.addBoth(self._forget)
        self._header_timer = self._clock.callLater(HEADER_TIMEOUT_SECONDS, self._header_timed_out)

    def dataReceived(self, data: bytes) -> None:
        events = self._session.receive_data(data)
        if any(isinstance(event, Hangup) for event in events):
            # A reply of -1 and the HANGUP in one read: the caller is gone, and the -1 is
            # not a missing sound file (CallFlow would otherwise send one more command).
            self._gone = True
        for event in events:
            match event:
                case Environment():
                    self._on_environment(event)
                case Reply():
                    self._on_reply(event)
                case Hangup():
                    self._gone = True
                    self._hangup_timer = self._clock.callLater(HANGUP_GRACE_SECONDS, self._hangup_grace_over)
                case ProtocolError():
                    self._on_protocol_error(event)
                case ConnectionClosed():
                    pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._service.open_connections -= 1
        self._cancel_header_timer()
        self._cancel_reply_timer()
        if self._hangup_timer is not None and self._hangup_timer.active():
            self._hangup_timer.cancel()
        self._hangup_timer = None
        self._session.close()
        if self._flow is None:
            self._record("no_environment" if self._environment is None else "unknown_script", ())
            return
        # A command was outstanding and its reply will never come, whether or not the
        # HANGUP line came first (Asterisk may write it and close at once).
        self._gone = True
        if not self._action_running and not self._flow.finished:
            self._drive(self._flow.on_hangup(self._clock.seconds(), self._end_outcome()))

    def _end_outcome(self) -> str:
        # Cut off by our own shutdown: not the caller's doing.
        return "interrupted_by_shutdown" if self._cut_by_shutdown else "caller_hangup"

    def cut_by_shutdown(self) -> None:
        """The voice drain ran out: drop the call, recorded as interrupted by shutdown."""
        self._cut_by_shutdown = True
        if self._environment is not None:
            self._service.cut_by_shutdown.add(self._environment.uniqueid)
        self.abort_connection()

    # -- events -----------------------------------------------------------------------

    def _on_environment(self, environment: Environment) -> None:
        self._cancel_header_timer()
        self._environment = environment
        book = self._service.menus
        # agi://host/12123?lang=zh and agi://host/12123/ name the same script.
        script = environment.network_script.split("?", 1)[0].strip("/")
        if script not in book.menus:
            log.warn("FastAGI request for unknown script {script}", script=script)
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        variables: dict[str, str] = {}
        if environment.arguments:
            variables["notification_id"] = environment.arguments[0]
        config = self._service.config
        self._flow = CallFlow(
            book, script,
            service_hours=self._service.service_hours,
            agent_queue=config.agent_queue,
            variables=variables,
            on_missing_prompt=self._missing_prompt,
        )
        self._context = CallContext(
            caller=environment.caller, variables={}, now=self._clock.seconds(),
            uniqueid=environment.uniqueid,
        )
        self._drive(self._flow.start(self._clock.seconds()))

    def _missing_prompt(self, name: str) -> None:
        metrics.agi_missing_prompts.inc()
        log.error("call {uniqueid}: Asterisk has no sound file {prompt}; the menu went on without it "
                  "(run `gateway prompts build`, check the sounds link)",
                  uniqueid=self._environment.uniqueid if self._environment else "", prompt=name)

    def _on_reply(self, event: Reply) -> None:
        assert self._flow is not None
        self._cancel_reply_timer()
        self._reply_at = self._steady.seconds()
        self._drive(self._flow.on_reply(event.reply, self._clock.seconds()))

    def _on_protocol_error(self, event: ProtocolError) -> None:
        log.warn("Asterisk broke the AGI protocol: {reason}; closing", reason=event.reason)
        self._gone = True
        if self._flow is not None and not self._flow.finished and not self._action_running:
            self._drive(self._flow.on_hangup(self._clock.seconds(), "protocol_error"))
        elif self._flow is None:
            self._record("protocol_error", ())
        if self.transport is not None:
            self.transport.loseConnection()

    # -- driving the flow -------------------------------------------------------------

    def _drive(self, step: Step) -> None:
        """Carry out the flow's steps until one needs to wait (a reply, an action)."""
        assert self._flow is not None
        while True:
            if isinstance(step, Finish):
                self._finish(step)
                return
            if isinstance(step, RunAction):
                self._run_action(step)
                return
            if self._gone:
                step = self._flow.on_hangup(self._clock.seconds(), self._end_outcome())
                continue
            self._session.send_command(step.line)
            self.transport.write(self._session.data_to_send())  # type: ignore[union-attr]
            self._cancel_reply_timer()
            self._reply_timer = self._clock.callLater(
                self._service.config.fastagi.reply_timeout_seconds + key_wait_seconds(step.line),
                self._reply_timed_out, step.line)
            if self._reply_at is not None:
                # Caller input (or any reply) to the next command, actions included.
                metrics.agi_step_latency.observe(max(0.0, self._steady.seconds() - self._reply_at))
                self._reply_at = None
            return

    def _run_action(self, step: RunAction) -> None:
        assert self._context is not None
        self._context.variables = step.variables
        self._context.now = self._clock.seconds()
        self._action_running = True
        d = as_deferred(self._service.actions.run(step.name, self._context))
        d.addErrback(self._action_failed, step.name)
        d.addCallback(self._action_done)
        d.addErrback(self._bug)

    def _action_failed(self, failure: Failure, name: str) -> ActionResult:
        # VoiceActions.run answers "error" for Redis and data trouble; anything here is a bug.
        log.failure("voice action {action} raised", failure, action=name)
        return ActionResult("error")

    def _action_done(self, result: ActionResult) -> None:
        assert self._flow is not None
        self._action_running = False
        self._drive(self._flow.on_action_result(result, self._clock.seconds()))

    def abort_connection(self) -> None:
        """Drop the socket at once, unsent bytes and all (a bug, a stuck or silent peer)."""
        if self.transport is not None:
            # A TCP transport (or the tests' StringTransport) can abort; ITransport cannot say so.
            cast(ITCPTransport, self.transport).abortConnection()

    def _bug(self, failure: Failure) -> None:
        log.failure("FastAGI call failed", failure)
        if self._flow is not None:
            self._flow.outcome = "error"
        self._record("error", tuple(self._flow.path) if self._flow else ())
        self.abort_connection()

    def _finish(self, step: Finish) -> None:
        self._record(step.outcome, step.path)
        if self.transport is not None and self.connected:
            # Closing lets the dialplan go on (Queue() after a transfer); after our HANGUP
            # command Asterisk hangs up by itself.
            self.transport.loseConnection()

    def _hangup_grace_over(self) -> None:
        self._hangup_timer = None
        if self._flow is not None and not self._flow.finished and not self._action_running:
            log.warn("call {uniqueid}: no reply after HANGUP; ending it",
                     uniqueid=self._environment.uniqueid if self._environment else "")
            self._drive(self._flow.on_hangup(self._clock.seconds()))
        if self.transport is not None and self.connected:
            self.transport.loseConnection()

    def _header_timed_out(self) -> None:
        self._header_timer = None
        log.warn("FastAGI client sent no complete environment in {seconds} s", seconds=HEADER_TIMEOUT_SECONDS)
        self.abort_connection()

    def _reply_timed_out(self, command: str) -> None:
        self._reply_timer = None
        verb = " ".join(command.split()[:2])  # STREAM FILE, GET DATA: never the arguments
        log.warn("call {uniqueid}: no reply to {command} in {seconds} s; ending the call",
                 uniqueid=self._environment.uniqueid if self._environment else "", command=verb,
                 seconds=self._service.config.fastagi.reply_timeout_seconds + key_wait_seconds(command))
        metrics.connections_refused.labels("fastagi", "reply_timeout").inc()
        self._gone = True
        if self._flow is not None and not self._flow.finished and not self._action_running:
            self._drive(self._flow.on_hangup(self._clock.seconds(), "reply_timeout"))
        self.abort_connection()

    def _cancel_reply_timer(self) -> None:
        if self._reply_timer is not None and self._reply_timer.active():
            self._reply_timer.cancel()
        self._reply_timer = None

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None and self._header_timer.active():
            self._header_timer.cancel()
        self._header_timer = None

    # -- the record ---------------------------------------------------------------------

    def _record(self, outcome: str, path: tuple[str, ...]) -> None:
        if self._recorded:
            return
        self._recorded = True
        environment = self._environment
        record = CallRecord(
            script=environment.network_script if environment else "",
            uniqueid=environment.uniqueid if environment else "",
            caller=environment.caller if environment else None,
            outcome=outcome,
            path=path,
            started_at=self._started_at,
            ended_at=self._started_at + max(0.0, self._steady.seconds() - self._started_steady),
        )
        metrics.agi_calls.labels(outcome=outcome).inc()
        log.info(
            "call {uniqueid} from {caller} on {script} ended: {outcome}",
            uniqueid=record.uniqueid, caller=record.caller, script=record.script, outcome=outcome,
            path=",".join(path),
        )
        if environment is None:
            self.done.callback(record)
            return
        d = as_deferred(self._service.record_call(record))
        d.addErrback(self._record_failed)
        d.addBoth(lambda _: self.done.callback(record))

    def _forget(self, result: Any) -> Any:
        self._service.active.discard(self)
        return result

    def _record_failed(self, failure: Failure) -> None:
        if failure.check(RedisError, ConnectionError, TimeoutError):
            log.error("could not record call event: {error}", error=failure.getErrorMessage())
        else:
            log.failure("could not record call event", failure)


def key_wait_seconds(command: str) -> float:
    """How long Asterisk may legitimately wait for keys in ``command`` before it replies:
    GET DATA waits its timeout for each of its max digits (app.c ast_app_getdata_full
    passes it as the first-key and the between-keys timeout), WAIT FOR DIGIT its timeout;
    0 for every other command.  Our own command lines end in the numbers
    (gateway.ivr.agi.get_data / wait_for_digit)."""
    words = command.split()
    verb = " ".join(words[:2]).upper()
    try:
        if verb == "GET DATA" and len(words) >= 5:
            return int(words[-2]) / 1000 * max(1, int(words[-1]))
        if verb == "WAIT FOR" and len(words) >= 4:
            return max(0, int(words[3])) / 1000
    except ValueError:
        pass
    return 0.0


class FastAgiFactory(ServerFactory):
    def __init__(self, service: FastAgiService) -> None:
        self.service = service

    def buildProtocol(self, addr: Any) -> Protocol:
        service = self.service
        host = getattr(addr, "host", "")
        if not service.allowed_sources.allows(host):
            service.refusals.refused("not_allowed", f"{host} is not in ivr.fastagi.allow")
            return ClosedAtOnce()
        if service.open_connections >= service.config.fastagi.max_connections:
            service.refusals.refused("max_connections", f"{service.config.fastagi.max_connections} calls open")
            return ClosedAtOnce(service.busy_farewell())
        return FastAgiProtocol(service)


class FastAgiService(Service):
    """Listens on IvrConfig.fastagi.listen and serves the menus.

    `menus_provider()` loads and checks the menus (e.g. ``lambda: load_menus(path)``); it is
    called once here and again by `reload()` without an argument.  `clock` is the reactor
    (it must also listen, unless `reactor` is given).  `redis` is the shared asyncio client.
    """

    name = "fastagi"

    def __init__(self, config: IvrConfig, menus_provider: Callable[[], MenuBook], redis: Redis,
                 keys: Keys, clock: IReactorTime, *, reactor: IReactorTCP | None = None,
                 drain_timeout_seconds: float = 10.0) -> None:
        self.config = config
        self._menus_provider = menus_provider
        self.menus: MenuBook = menus_provider()
        self.allowed_sources = Networks(config.fastagi.allow)
        self.refusals = RefusalLog("FastAGI", clock)
        self.open_connections = 0
        self.redis = redis
        self.keys = keys
        self.clock = clock
        self._reactor = reactor
        self.service_hours = ServiceHours.parse(config.service_hours)
        # Reminders without pre-built wording are synthesised into the sounds folder that
        # Asterisk plays from (same host); without espeak-ng/sox they get the generic prompt.
        synthesizer = SpeechSynthesizer(Path(config.sounds_dir).resolve(), lambda: self.menus)
        self.actions = VoiceActions(redis, keys, attempts_per_hour=config.attempts_per_hour,
                                    attempts_per_booking_per_day=config.attempts_per_booking_per_day,
                                    enumeration_failures_per_minute=config.enumeration_failures_per_minute,
                                    attempts_per_caller_per_hour=config.attempts_per_caller_per_hour,
                                    synthesizer=synthesizer if synthesizer.available else None,
                                    rights=config.rights)
        self.active: set[FastAgiProtocol] = set()
        # agi_uniqueid of the calls the voice drain cut (a reminder's is its ActionID): the
        # reminder service records those as interrupted by shutdown, not as not heard.
        self.cut_by_shutdown: set[str] = set()
        self.listening_port: IListeningPort | None = None
        self._drain_timeout = drain_timeout_seconds

    def reload(self, menus: MenuBook | None = None) -> bool:
        """Swap the menus for new calls; calls in progress keep theirs.  Without an argument
        load them again with the provider; on a ConfigError keep the old ones, warn, and
        return False."""
        if menus is None:
            try:
                menus = self._menus_provider()
            except ConfigError as error:
                log.warn("menus not reloaded, keeping the old ones: {problems}", problems="; ".join(error.problems))
                return False
        self.menus = menus
        log.info("voice menus reloaded: {menus}", menus=",".join(sorted(menus.menus)))
        return True

    def startService(self) -> None:
        host, port = parse_listen(self.config.fastagi.listen)
        # Without `reactor`, the clock is the reactor (adapting raises TypeError if it cannot listen).
        reactor = self._reactor if self._reactor is not None else IReactorTCP(self.clock)
        # Asterisk gives up a FastAGI connect after 2 s (MAX_AGI_CONNECT in res_agi.c); with
        # Twisted's default backlog of 50 a burst of calls waits longer than that.
        listening = reactor.listenTCP(port, FastAgiFactory(self), backlog=1024, interface=host)
        self.listening_port = listening
        super().startService()
        log.info("FastAGI listening on {address}", address=str(listening.getHost()))

    def stopService(self) -> Deferred[None]:
        """Stop listening, let calls in progress finish for up to the drain timeout (the
        gateway passes max(drain_timeout_seconds, ivr.voice_drain_seconds)), then drop the
        rest, recorded as ``interrupted_by_shutdown``."""
        super().stopService()
        port, self.listening_port = self.listening_port, None
        stopped: Deferred[Any] = succeed(None) if port is None else maybeDeferred(port.stopListening)
        calls = [protocol.done for protocol in list(self.active)]
        if not calls:
            return stopped.addCallback(lambda _: None)
        drained: Deferred[Any] = DeferredList(calls, consumeErrors=True)
        timer = self.clock.callLater(self._drain_timeout, self._drop_calls)
        drained.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return DeferredList([stopped, drained]).addCallback(lambda _: None)

    def when_idle(self) -> Deferred[None]:
        """Fires when every call in progress has ended and been recorded."""
        calls = [protocol.done for protocol in list(self.active)]
        return DeferredList(calls, consumeErrors=True).addCallback(lambda _: None)

    def _drop_calls(self) -> None:
        for protocol in list(self.active):
            protocol.cut_by_shutdown()

    def busy_farewell(self) -> bytes:
        """What a call over max_connections gets before its socket closes: the apology
        (``system_error``, "系统繁忙，请稍后再拨", also the dialplan's gateway-down prompt)
        played by Asterisk.  A bare close would end AGI() with AGISTATUS SUCCESS (measured
        on the Asterisk 22 ring) and the dialplan would hang up without a word."""
        if "system_error" not in self.menus.prompts:
            return b""
        prefix = self.menus.sound_prefix
        return f"EXEC Playback {prefix + '/' if prefix else ''}system_error\n".encode()

    async def record_call(self, record: CallRecord) -> None:
        """The ``ivr.call`` event for core systems (masked caller, no entered digits)."""
        await self.redis.xadd(
            self.keys.events_stream,
            {
                "type": "ivr.call",
                "script": record.script,
                "uniqueid": record.uniqueid,
                "caller": str(record.caller) if record.caller else "",
                "outcome": record.outcome,
                "path": ",".join(record.path),
                "duration_seconds": f"{record.ended_at - record.started_at:.1f}",
                "at": str(int(record.ended_at)),
            },
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )
