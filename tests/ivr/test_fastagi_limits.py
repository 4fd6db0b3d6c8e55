"""FastAGI limits on a Clock (issue 12 item 4): the per-command reply timeout."""

from __future__ import annotations

from twisted.internet.task import Clock

from gateway import metrics
from gateway.config import FastAgiConfig, IvrConfig
from gateway.ivr.agi import get_data, wait_for_digit
from gateway.ivr.fastagi import FastAgiService, key_wait_seconds
from gateway.store.service import make_client
from tests.ivr.test_fastagi import BOOK, KEYS, _connect

ENVIRONMENT = b"agi_network: yes\nagi_network_script: 12123\nagi_callerid: 13800138000\n\n"


def test_key_wait_of_a_command() -> None:
    """GET DATA waits its timeout per key, WAIT FOR DIGIT its timeout, others nothing."""
    assert key_wait_seconds(get_data("", 8000, 20)) == 160.0
    assert key_wait_seconds(get_data("12123/enter_booking", 6000, 6)) == 36.0
    assert key_wait_seconds(wait_for_digit(5000)) == 5.0
    assert key_wait_seconds('STREAM FILE 12123/welcome "0123456789*#"') == 0.0
    assert key_wait_seconds("ANSWER") == 0.0


def test_unanswered_command_ends_the_call_after_the_reply_timeout() -> None:
    """A command unanswered for reply_timeout_seconds (plus its key wait) aborts the call."""
    clock = Clock()
    before = metrics.agi_calls.labels(outcome="reply_timeout")._value.get()
    config = IvrConfig(fastagi=FastAgiConfig(reply_timeout_seconds=30.0))
    service = FastAgiService(config, lambda: BOOK, make_client("redis://127.0.0.1:1"), KEYS, clock)
    protocol, transport = _connect(service, ENVIRONMENT)
    assert transport.value() == b"ANSWER\n"
    clock.advance(29.9)
    assert not transport.disconnecting
    protocol.dataReceived(b"200 result=0\n")  # answered: the next command gets a new timer
    clock.advance(29.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    assert metrics.agi_calls.labels(outcome="reply_timeout")._value.get() - before == 1
