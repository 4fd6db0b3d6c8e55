"""AMI client shell and service: Clock + StringTransport, then the AMI server peer."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from gateway.config import Secret
from gateway.ivr.ami import AmiFraming, AmiMessage
from gateway.ivr.ami_client import (
    AmiActionError,
    AmiClientService,
    AmiConnectionLost,
    AmiLoginRefused,
    AmiNotConnected,
    AmiResponseTimeout,
)
from tests.peers.ami_server import AmiServer, AmiUser, default_user, listen

BANNER = b"Asterisk Call Manager/7.0.3\r\n"


class ScriptedEndpoint:
    """A client endpoint whose connections are StringTransports the test plays server on."""

    def __init__(self) -> None:
        self.connections: list[tuple[object, StringTransport]] = []
        self.refuse = False

    def connect(self, factory):
        if self.refuse:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5038))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)

    @property
    def current(self):
        return self.connections[-1]


def written(transport: StringTransport) -> list[AmiMessage]:
    """The actions the client wrote since the last call."""
    data = transport.value()
    transport.clear()
    return [m for m in AmiFraming(expect_banner=False).receive_data(data) if isinstance(m, AmiMessage)]


def reply(protocol, action: AmiMessage, status: str = "Success", **headers: str) -> None:
    lines = [f"Response: {status}", f"ActionID: {action.action_id}"] + [f"{k}: {v}" for k, v in headers.items()]
    protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())


def make_service(endpoint, clock, **options) -> AmiClientService:
    settings = dict(username="gateway12123", secret=Secret("s3cret"), clock=clock, md5_challenge=False,
                    keepalive_seconds=20, response_timeout_seconds=5, reconnect_initial_seconds=1,
                    reconnect_max_seconds=30, auth_failure_retry_seconds=300, jitter=lambda: 0.0)
    settings.update(options)
    return AmiClientService(endpoint, **settings)


def logged_in_service(clock: Clock, **options):
    endpoint = ScriptedEndpoint()
    service = make_service(endpoint, clock, **options)
    service.startService()
    protocol, transport = endpoint.current
    protocol.dataReceived(BANNER)
    (login,) = written(transport)
    reply(protocol, login, Message="Authentication accepted")
    return service, endpoint, protocol, transport


def test_plain_login_sends_username_and_secret_and_connects():
    """Without MD5, Login carries Username and Secret; whenConnected fires after Success."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    service = make_service(endpoint, clock)
    connected = service.whenConnected()
    service.startService()
    protocol, transport = endpoint.current
    assert transport.value() == b""  # nothing before the banner
    protocol.dataReceived(BANNER)
    (login,) = written(transport)
    assert (login.name, login.get("Username"), login.get("Secret")) == ("Login", "gateway12123", "s3cret")
    assert not connected.called
    reply(protocol, login, Message="Authentication accepted")
    assert connected.called and service.is_logged_in


def test_md5_login_sends_the_digest_never_the_secret():
    """With the MD5 challenge, Login carries md5(challenge + secret) and not the secret."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    service = make_service(endpoint, clock, md5_challenge=True)
    service.startService()
    protocol, transport = endpoint.current
    protocol.dataReceived(BANNER)
    (challenge,) = written(transport)
    assert (challenge.name, challenge.get("AuthType")) == ("Challenge", "MD5")
    reply(protocol, challenge, Challenge="840767130")
    (login,) = written(transport)
    assert login.get("AuthType") == "md5"
    assert login.get("Key") == hashlib.md5(b"840767130s3cret").hexdigest()
    assert "Secret" not in login and b"s3cret" not in transport.value()
    reply(protocol, login, Message="Authentication accepted")
    assert service.is_logged_in


def test_refused_login_is_a_failed_attempt_and_retries_after_the_auth_delay():
    """A refused Login fails the attempt, closes the session and waits auth_failure_retry_seconds."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    service = make_service(endpoint, clock)
    connected = service.whenConnected(failAfterFailures=1)
    service.startService()
    protocol, transport = endpoint.current
    protocol.dataReceived(BANNER)
    (login,) = written(transport)
    reply(protocol, login, "Error", Message="Authentication failed")
    protocol.connectionLost(Failure(ConnectionDone()))  # Asterisk closes after a refusal
    assert connected.called
    failure = []
    connected.addErrback(failure.append)
    assert failure[0].check(AmiLoginRefused)
    assert transport.disconnecting
    (retry,) = clock.getDelayedCalls()
    assert retry.getTime() == 300
    clock.advance(299)
    assert len(endpoint.connections) == 1
    clock.advance(1)
    assert len(endpoint.connections) == 2


def test_connection_refused_backs_off_exponentially_to_the_cap():
    """Refused connections are retried after 2, 4, 8, 16, 30, 30 s (factor 2, capped)."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    endpoint.refuse = True
    service = make_service(endpoint, clock)
    service.startService()
    delays = []
    for _ in range(6):
        (retry,) = clock.getDelayedCalls()
        delays.append(retry.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [2, 4, 8, 16, 30, 30]


def test_auth_delay_ends_after_a_successful_login():
    """After a refused login then a good one, a later disconnect retries at the normal delay."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    service = make_service(endpoint, clock)
    service.startService()
    protocol, transport = endpoint.current
    protocol.dataReceived(BANNER)
    reply(protocol, written(transport)[0], "Error", Message="Authentication failed")
    protocol.connectionLost(Failure(ConnectionDone()))
    clock.advance(300)
    protocol, transport = endpoint.current
    protocol.dataReceived(BANNER)
    reply(protocol, written(transport)[0], Message="Authentication accepted")
    assert service.is_logged_in
    protocol.connectionLost(Failure(ConnectionDone()))
    (retry,) = [c for c in clock.getDelayedCalls() if c.func.__name__ != "_ping"]
    assert retry.getTime() - clock.seconds() == 2


def test_keepalive_pings_and_an_unanswered_ping_aborts_the_session():
    """A logged-in session Pings every keepalive_seconds; a Ping unanswered in time aborts it."""
    clock = Clock()
    service, endpoint, protocol, transport = logged_in_service(clock)
    clock.advance(20)
    (ping,) = written(transport)
    assert ping.name == "Ping"
    reply(protocol, ping, Ping="Pong")
    clock.advance(20)
    (ping2,) = written(transport)
    assert ping2.name == "Ping" and ping2.action_id != ping.action_id
    assert not transport.disconnecting
    clock.advance(5)
    assert transport.disconnecting


def test_response_timeout_fails_the_action():
    """An action unanswered within the response timeout fails with AmiResponseTimeout."""
    clock = Clock()
    service, endpoint, protocol, transport = logged_in_service(clock)
    result = service.send_action("Originate", action_id="rem-n1-1", Channel="PJSIP/1@t")
    clock.advance(4.9)
    assert not result.called
    clock.advance(0.1)
    failures = []
    result.addErrback(failures.append)
    assert failures[0].check(AmiResponseTimeout)


def test_connection_loss_fails_actions_in_flight():
    """Actions in flight when the connection drops fail with AmiConnectionLost."""
    clock = Clock()
    service, endpoint, protocol, transport = logged_in_service(clock)
    result = service.send_action("Originate", action_id="rem-n1-1", Channel="PJSIP/1@t")
    protocol.connectionLost(Failure(ConnectionDone()))
    failures = []
    result.addErrback(failures.append)
    assert failures[0].check(AmiConnectionLost)
    assert failures[0].value.action_id == "rem-n1-1"
    assert not service.is_logged_in


def test_send_without_session_fails_at_once_and_writes_nothing():
    """send_action before login fails with AmiNotConnected and nothing is written."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    service = make_service(endpoint, clock)
    service.startService()
    protocol, transport = endpoint.current
    failures = []
    service.send_action("Originate", Channel="PJSIP/1@t").addErrback(failures.append)
    assert failures[0].check(AmiNotConnected)
    assert transport.value() == b""


def test_error_response_fails_with_the_message():
    """Response: Error fails the action with AmiActionError carrying the response."""
    clock = Clock()
    service, endpoint, protocol, transport = logged_in_service(clock)
    result = service.send_action("Originate", Channel="PJSIP/1@t")
    (originate,) = written(transport)
    reply(protocol, originate, "Error", Message="Originate failed")
    failures = []
    result.addErrback(failures.append)
    assert failures[0].check(AmiActionError)
    assert failures[0].value.response.get("Message") == "Originate failed"


def test_events_reach_subscribers_even_when_one_raises():
    """Every subscriber gets each event; one raising does not stop the others or the session."""
    clock = Clock()
    service, endpoint, protocol, transport = logged_in_service(clock)
    seen: list[str] = []

    def broken(event: AmiMessage) -> None:
        raise RuntimeError("subscriber bug")

    service.subscribe(broken)
    unsubscribe = service.subscribe(lambda e: seen.append(e.name))
    protocol.dataReceived(b"Event: Hangup\r\nChannel: PJSIP/a\r\n\r\nEvent: Newchannel\r\n\r\n")
    assert seen == ["Hangup", "Newchannel"]
    unsubscribe()
    protocol.dataReceived(b"Event: Hangup\r\n\r\n")
    assert seen == ["Hangup", "Newchannel"]
    assert not transport.disconnecting


def test_protocol_violation_aborts_the_session():
    """A message beyond the framing limits aborts the connection."""
    clock = Clock()
    service, endpoint, protocol, transport = logged_in_service(clock)
    protocol.dataReceived(b"Event: Big\r\n" + b"X: y\r\n" * 2000)
    assert transport.disconnecting


# --- against the AMI server peer -----------------------------------------------------


@pytest.fixture
def no_twisted_errors():
    """Collects every logged failure (e.g. automat NoTransition) during the test."""
    errors: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    yield errors
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def ami_server():
    server = AmiServer(users={"gateway12123": default_user("s3cret")}, clock=global_reactor)
    port = listen(server, global_reactor)
    yield server, port.getHost().port
    port.stopListening()


def real_service(port: int, **options) -> AmiClientService:
    endpoint = TCP4ClientEndpoint(global_reactor, "127.0.0.1", port)
    settings = dict(clock=global_reactor, reconnect_initial_seconds=0.01, reconnect_max_seconds=0.05)
    settings.update(options)
    return make_service(endpoint, **settings)


@pytest_twisted.inlineCallbacks
def test_md5_login_ping_and_status_against_the_peer(ami_server, no_twisted_errors):
    """MD5 login, Ping and an empty Status list work against the AMI server peer."""
    server, port = ami_server
    service = real_service(port, md5_challenge=True)
    service.startService()
    try:
        yield service.whenConnected(failAfterFailures=1)
        pong = yield service.send_action("Ping")
        assert pong.get("Ping") == "Pong"
        items = yield service.send_list_action("Status", Variables="NOTIFICATION_ID")
        assert items == ()
        assert [a.name for a in server.actions] == ["Challenge", "Login", "Ping", "Status"]
        assert "Secret" not in server.actions[1]
    finally:
        yield service.stopService()
    assert no_twisted_errors == []


@pytest_twisted.inlineCallbacks
def test_bad_secret_is_refused_by_the_peer_and_not_retried_quickly(ami_server, no_twisted_errors):
    """A wrong secret is refused, the peer closes, and no retry comes before the auth delay."""
    server, port = ami_server
    service = real_service(port, secret="wrong", auth_failure_retry_seconds=300)
    service.startService()
    try:
        with pytest.raises(AmiLoginRefused):
            yield service.whenConnected(failAfterFailures=1)
        # Another connection attempt to the peer would show up as a second Login.
        yield server.wait_for_action("Ping").addTimeout(0.3, global_reactor).addErrback(lambda f: None)
        assert len(server.actions_named("Login")) == 1
    finally:
        yield service.stopService()
    assert no_twisted_errors == []


@pytest_twisted.inlineCallbacks
def test_plain_login_and_reconnect_after_the_peer_drops(ami_server, no_twisted_errors):
    """After the peer drops the session the service reconnects and logs in again."""
    server, port = ami_server
    service = real_service(port, md5_challenge=False)
    logins: list[Deferred[None]] = [Deferred(), Deferred()]
    service.add_login_listener(lambda s: logins.pop(0).callback(None) if logins else None)
    first, second = logins
    service.startService()
    try:
        yield first
        server.drop_sessions()
        yield second
        assert len(server.actions_named("Login")) == 2
        pong = yield service.send_action("Ping")
        assert pong.get("Ping") == "Pong"
    finally:
        yield service.stopService()
    assert no_twisted_errors == []


@pytest_twisted.inlineCallbacks
def test_peer_refuses_an_action_the_user_has_no_right_to(ami_server):
    """Status needs write class system, call or reporting; without them the peer refuses it."""
    server, port = ami_server
    server.users["gateway12123"] = AmiUser(secret="s3cret", read=frozenset({"call"}),
                                           write=frozenset({"originate"}))
    service = real_service(port)
    service.startService()
    try:
        yield service.whenConnected(failAfterFailures=1)
        with pytest.raises(AmiActionError):
            yield service.send_list_action("Status")
    finally:
        yield service.stopService()
