"""AMI client: a thin Twisted protocol over gateway.ivr.ami and a reconnecting service.

`AmiProtocol` owns the transport, the framing and correlator of gateway.ivr.ami, one
response-timeout timer and the keepalive timer; it holds no protocol rules.
`AmiClientService` is a ClientService whose ``prepareConnection`` logs in (MD5 challenge
or plain secret), so ``whenConnected()`` only ever yields a logged-in session and a
refused login counts as a failed connection attempt.  After a refused login the retry
delay is at least ``auth_failure_retry_seconds``: hammering Asterisk with a wrong secret
fills its security log and Asterisk answers each refusal only after sleeping a second.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config import Secret
from gateway.ivr.ami import (
    ActionCompleted,
    ActionCorrelator,
    AmiBanner,
    AmiError,
    AmiFraming,
    AmiMessage,
    AmiProtocolError,
    MessageKind,
    encode_action,
)

__all__ = [
    "AmiActionError",
    "AmiClientService",
    "AmiConnectionLost",
    "AmiLoginRefused",
    "AmiNotConnected",
    "AmiProtocol",
    "AmiResponseTimeout",
]

log = Logger()

EventCallback = Callable[[AmiMessage], object]


class AmiActionError(AmiError):
    """The server answered ``Response: Error``; `response` is the message."""

    def __init__(self, response: AmiMessage) -> None:
        super().__init__(response.get("Message") or "Response: Error")
        self.response = response


class AmiResponseTimeout(AmiError):
    """No response within the response timeout: the action may or may not have run."""

    def __init__(self, action_id: str, name: str) -> None:
        super().__init__(f"no response to {name} (ActionID {action_id})")
        self.action_id = action_id
        self.name = name


class AmiConnectionLost(AmiError):
    """The connection closed before the response: the action may or may not have run."""

    def __init__(self, action_id: str, name: str) -> None:
        super().__init__(f"connection lost before the response to {name} (ActionID {action_id})")
        self.action_id = action_id
        self.name = name


class AmiNotConnected(AmiError):
    """No logged-in AMI session: nothing was sent."""


class AmiLoginRefused(AmiError):
    """Asterisk refused our Username/Secret (or the MD5 key)."""


class AmiProtocol(Protocol):
    """One AMI session, client side.

    ``on_event`` receives every event not consumed by a pending action (a list action's
    items are consumed).  An exception raised by ``on_event`` is logged with its
    traceback and the session goes on: one subscriber's bug must not silence the events
    every other call depends on (asterisk-ami's reader thread dies on exactly that).
    """

    def __init__(self, *, clock: IReactorTime, response_timeout_seconds: float,
                 on_event: EventCallback, id_prefix: str = "") -> None:
        self._clock = clock
        self._response_timeout_seconds = response_timeout_seconds
        self._on_event = on_event
        self._framing = AmiFraming()
        self._correlator = ActionCorrelator(response_timeout_seconds=response_timeout_seconds,
                                            id_prefix=id_prefix)
        self._waiting: dict[str, Deferred[ActionCompleted]] = {}
        self._timer: IDelayedCall | None = None
        self._keepalive: IDelayedCall | None = None
        self._keepalive_seconds = 0.0
        self._banner_waiters: list[Deferred[AmiBanner]] = []
        self._lost_callbacks: list[Callable[[AmiProtocol], object]] = []
        self.logged_in = False
        self.closed = False

    # --- Twisted -----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        try:
            items = self._framing.receive_data(data)
        except AmiProtocolError as e:
            log.warn("AMI peer broke the protocol, closing: {error}", error=str(e))
            self.abort()
            return
        for item in items:
            if isinstance(item, AmiBanner):
                waiters, self._banner_waiters = self._banner_waiters, []
                for waiter in waiters:
                    waiter.callback(item)
            else:
                self._on_message(item)
        self._reschedule()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.logged_in = False
        for call in (self._timer, self._keepalive):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._keepalive = None
        waiters, self._banner_waiters = self._banner_waiters, []
        for waiter in waiters:
            waiter.errback(AmiConnectionLost("", "banner"))
        for action_id, name in self._correlator.abandon_all():
            self._waiting.pop(action_id).errback(AmiConnectionLost(action_id, name))
        for callback in self._lost_callbacks:
            callback(self)

    # --- ours --------------------------------------------------------------------------

    def when_banner(self) -> Deferred[AmiBanner]:
        """Fires with the banner (at once if already received); fails if the connection closes."""
        if self._framing.banner is not None:
            return succeed(self._framing.banner)
        if self.closed:
            return fail(AmiConnectionLost("", "banner"))
        waiter: Deferred[AmiBanner] = Deferred()
        self._banner_waiters.append(waiter)
        return waiter

    def abort(self) -> None:
        """Drop the connection now, without flushing what is queued."""
        if self.transport is not None:
            cast(Any, self.transport).abortConnection()

    def unwrapped(self) -> AmiProtocol:
        """This protocol itself, also when called through ClientService's protocol proxy."""
        return self

    def on_connection_lost(self, callback: Callable[[AmiProtocol], object]) -> None:
        self._lost_callbacks.append(callback)

    def request(self, name: str, *, action_id: str | None = None, timeout_seconds: float | None = None,
                **headers: str | Sequence[str]) -> Deferred[ActionCompleted]:
        """Send one action; fires with its ActionCompleted (whatever the Response).

        Fails with AmiResponseTimeout, AmiConnectionLost, or AmiLocalProtocolError (a
        value with CR/LF: nothing was sent).  Cancelling stops waiting; it cannot unsend.
        """
        if self.closed or self.transport is None:
            return fail(AmiNotConnected(f"{name}: no AMI connection"))
        if action_id is None:
            action_id = self._correlator.next_action_id()
        data = encode_action(name, action_id, headers)
        self._correlator.start(action_id, name, now=self._clock.seconds(), timeout_seconds=timeout_seconds)

        def cancel(_: Deferred[ActionCompleted]) -> None:
            self._correlator.forget(action_id)
            self._waiting.pop(action_id, None)

        waiter: Deferred[ActionCompleted] = Deferred(cancel)
        self._waiting[action_id] = waiter
        self.transport.write(data)
        self._reschedule()
        return waiter

    def send_action(self, name: str, *, action_id: str | None = None, timeout_seconds: float | None = None,
                    **headers: str | Sequence[str]) -> Deferred[AmiMessage]:
        """Send one action; fires with the response, fails with AmiActionError on Response: Error."""
        return self.request(name, action_id=action_id, timeout_seconds=timeout_seconds,
                            **headers).addCallback(_response_or_error)

    def send_list_action(self, name: str, *, action_id: str | None = None,
                         timeout_seconds: float | None = None,
                         **headers: str | Sequence[str]) -> Deferred[tuple[AmiMessage, ...]]:
        """Send a list action (Status, CoreShowChannels); fires with its item events."""
        return self.request(name, action_id=action_id, timeout_seconds=timeout_seconds,
                            **headers).addCallback(_events_or_error)

    def start_keepalive(self, interval_seconds: float) -> None:
        """Ping every ``interval_seconds``; an unanswered Ping closes the connection."""
        self._keepalive_seconds = interval_seconds
        self._schedule_keepalive()

    def _schedule_keepalive(self) -> None:
        if not self.closed and self._keepalive_seconds > 0:
            self._keepalive = self._clock.callLater(self._keepalive_seconds, self._ping)

    def _ping(self) -> None:
        self._keepalive = None

        def answered(_: object) -> None:
            self._schedule_keepalive()

        def unanswered(failure: Failure) -> None:
            if failure.check(AmiConnectionLost, AmiNotConnected):
                return
            log.warn("AMI Ping unanswered, closing the session: {error}", error=failure.getErrorMessage())
            self.abort()

        self.send_action("Ping").addCallbacks(answered, unanswered)

    def _on_message(self, message: AmiMessage) -> None:
        completed, consumed = self._correlator.receive(message)
        if completed is not None:
            self._waiting.pop(completed.action_id).callback(completed)
            return
        if consumed:
            return
        if message.kind is MessageKind.EVENT:
            try:
                self._on_event(message)
            except Exception:
                log.failure("AMI event subscriber raised on {event}", event=message.name)
        else:
            log.warn("AMI message matched no action: {kind} {name} ActionID {action_id}",
                     kind=message.kind.name, name=message.name, action_id=message.action_id)

    def _reschedule(self) -> None:
        now = self._clock.seconds()
        for late in self._correlator.expire(now):
            self._waiting.pop(late.action_id).errback(AmiResponseTimeout(late.action_id, late.name))
        deadline = self._correlator.next_deadline()
        timer = self._timer
        if timer is not None and timer.active():
            if deadline is not None and timer.getTime() <= deadline:
                return  # fires early enough, and re-arms for the rest then
            timer.cancel()
        self._timer = None
        if deadline is not None:
            self._timer = self._clock.callLater(max(0.0, deadline - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._reschedule()


def _response_or_error(completed: ActionCompleted) -> AmiMessage:
    if not completed.success:
        raise AmiActionError(completed.response)
    return completed.response


def _events_or_error(completed: ActionCompleted) -> tuple[AmiMessage, ...]:
    if not completed.success:
        raise AmiActionError(completed.response)
    return completed.events


# ---------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------


class _Gate(Protocol):
    """Stands between the transport and ClientService's protocol proxy.

    Twisted's ClientService (26.10, _client_service.py) has no transition for a
    connection lost while ``prepareConnection`` is pending (state Connecting) or after it
    failed (Waiting, Stopped): automat raises NoTransition out of connectionLost.  A
    refused AMI login ends exactly like that (Asterisk closes the session after
    ``Authentication failed``).  So until the session is logged in, a lost connection
    goes to our protocol only; the service learns of the failure from prepareConnection.
    """

    def __init__(self, proxy: IProtocol, inner: AmiProtocol) -> None:
        self._proxy = proxy
        self._inner = inner

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self._proxy.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self._proxy.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._inner.logged_in:
            self._proxy.connectionLost(reason)
        else:
            self._inner.connectionLost(reason)


class _GateFactory(Factory):
    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        proxy = self._wrapped.buildProtocol(addr)
        if proxy is None:
            return None
        gate = _Gate(proxy, proxy.unwrapped())
        gate.factory = self
        return gate


class _GatedEndpoint:
    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, factory: Any) -> Deferred[Any]:
        connecting: Deferred[Any] = self._endpoint.connect(_GateFactory(factory))
        return connecting.addCallback(lambda gate: gate._proxy)


class _AmiFactory(Factory):
    def __init__(self, service: AmiClientService) -> None:
        self._service = service

    def buildProtocol(self, addr: IAddress | None) -> AmiProtocol:
        return self._service._build_protocol()


class AmiClientService(ClientService):
    """Keeps one logged-in AMI session to Asterisk, reconnecting with backoff and jitter.

    Arguments: ``endpoint`` (a stream client endpoint to Asterisk's manager port);
    ``username``/``secret`` from manager.conf; ``md5_challenge`` logs in with
    ``Action: Challenge`` and ``Key: md5(challenge + secret)`` so the secret never
    crosses the wire; ``keepalive_seconds`` between Pings; ``response_timeout_seconds``
    for every action; reconnect delays grow from ``reconnect_initial_seconds`` to
    ``reconnect_max_seconds`` (plus up to one second of jitter), and are at least
    ``auth_failure_retry_seconds`` after a refused login.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        *,
        username: str,
        secret: Secret | str,
        clock: IReactorTime,
        md5_challenge: bool = True,
        keepalive_seconds: float = 20.0,
        response_timeout_seconds: float = 10.0,
        reconnect_initial_seconds: float = 1.0,
        reconnect_max_seconds: float = 60.0,
        auth_failure_retry_seconds: float = 300.0,
        event_mask: str | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._username = username
        self._secret = secret.reveal() if isinstance(secret, Secret) else secret
        self._clock = clock
        self._md5_challenge = md5_challenge
        self._keepalive_seconds = keepalive_seconds
        self._response_timeout_seconds = response_timeout_seconds
        self._auth_failure_retry_seconds = auth_failure_retry_seconds
        self._event_mask = event_mask
        self._backoff = backoffPolicy(initialDelay=reconnect_initial_seconds, maxDelay=reconnect_max_seconds,
                                      factor=2.0, jitter=jitter)
        self._auth_refused = False
        self._session: AmiProtocol | None = None
        self._connections = 0
        self._subscribers: list[EventCallback] = []
        self._login_listeners: list[Callable[[AmiClientService], object]] = []
        super().__init__(cast(IStreamClientEndpoint, _GatedEndpoint(endpoint)), _AmiFactory(self),
                         retryPolicy=self._retry_delay,
                         clock=clock, prepareConnection=self._prepare)

    # --- public ------------------------------------------------------------------------

    @property
    def is_logged_in(self) -> bool:
        return self._session is not None and self._session.logged_in

    def send_action(self, name: str, *, action_id: str | None = None, timeout_seconds: float | None = None,
                    **headers: str | Sequence[str]) -> Deferred[AmiMessage]:
        """Send an action on the logged-in session; see AmiProtocol.send_action.

        Fails at once with AmiNotConnected when there is no logged-in session: nothing
        is queued, so a caller never sends an action later than it believes.
        """
        if self._session is None or not self._session.logged_in:
            return fail(AmiNotConnected(f"{name}: not logged in to AMI"))
        return self._session.send_action(name, action_id=action_id, timeout_seconds=timeout_seconds, **headers)

    def send_list_action(self, name: str, *, action_id: str | None = None,
                         timeout_seconds: float | None = None,
                         **headers: str | Sequence[str]) -> Deferred[tuple[AmiMessage, ...]]:
        """Send a list action (Status, CoreShowChannels); fires with its item events."""
        if self._session is None or not self._session.logged_in:
            return fail(AmiNotConnected(f"{name}: not logged in to AMI"))
        return self._session.send_list_action(name, action_id=action_id, timeout_seconds=timeout_seconds,
                                              **headers)

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for every unsolicited event; returns the unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def add_login_listener(self, callback: Callable[[AmiClientService], object]) -> None:
        """Call ``callback(service)`` after every successful login (first and reconnects)."""
        self._login_listeners.append(callback)

    # --- internals ---------------------------------------------------------------------

    def _retry_delay(self, failed_attempts: int) -> float:
        delay = self._backoff(failed_attempts)
        if self._auth_refused:
            delay = max(delay, self._auth_failure_retry_seconds)
        return delay

    def _build_protocol(self) -> AmiProtocol:
        self._connections += 1
        protocol = AmiProtocol(clock=self._clock, response_timeout_seconds=self._response_timeout_seconds,
                               on_event=self._dispatch, id_prefix=f"gw{self._connections}-")
        protocol.on_connection_lost(self._lost)
        return protocol

    def _dispatch(self, event: AmiMessage) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.failure("AMI event subscriber raised on {event}", event=event.name)

    def _lost(self, protocol: AmiProtocol) -> None:
        if self._session is protocol:
            self._session = None
            if self.running:
                log.warn("AMI session to Asterisk lost")

    def _prepare(self, proxy: Any) -> Deferred[None]:
        protocol: AmiProtocol = proxy.unwrapped()
        attempt = Deferred.fromCoroutine(self._login(protocol))

        def refused(failure: Failure) -> Failure:
            if failure.check(AmiActionError):
                self._auth_refused = True
                log.warn("Asterisk refused AMI login as {username}: {message}",
                         username=self._username, message=failure.getErrorMessage())
                failure = Failure(AmiLoginRefused(failure.getErrorMessage()))
            elif not failure.check(CancelledError):
                log.warn("AMI login as {username} did not complete: {error}",
                         username=self._username, error=failure.getErrorMessage())
            if not protocol.closed and protocol.transport is not None:
                protocol.transport.loseConnection()
            return failure

        return attempt.addErrback(refused)

    async def _login(self, protocol: AmiProtocol) -> None:
        banner_timeout = self._clock.callLater(self._response_timeout_seconds, protocol.abort)
        try:
            banner = await protocol.when_banner()
        finally:
            if banner_timeout.active():
                banner_timeout.cancel()
        extra: dict[str, Any] = {"Events": self._event_mask} if self._event_mask is not None else {}
        if self._md5_challenge:
            challenge = await protocol.send_action("Challenge", AuthType="MD5")
            # main/manager.c authenticate(): MD5 over the challenge, then the secret, as lowercase hex.
            digest = hashlib.md5(usedforsecurity=False)
            digest.update((challenge.get("Challenge") or "").encode())
            digest.update(self._secret.encode())
            key = digest.hexdigest()
            await protocol.send_action("Login", Username=self._username, AuthType="md5", Key=key, **extra)
        else:
            await protocol.send_action("Login", Username=self._username, Secret=self._secret, **extra)
        self._auth_refused = False
        protocol.logged_in = True
        self._session = protocol
        protocol.start_keepalive(self._keepalive_seconds)
        log.info("Logged in to Asterisk AMI {version} as {username}", version=banner.version, username=self._username)
        for listener in list(self._login_listeners):
            try:
                listener(self)
            except Exception:
                log.failure("AMI login listener raised")
