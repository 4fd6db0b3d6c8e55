"""A call over ivr.fastagi.max_connections, through the real Asterisk: the caller hears the
apology instead of silence (issue 12 item 4).

Measured on this ring: a connection the gateway just closes ends AGI() with AGISTATUS
SUCCESS, so the dialplan's gateway-down fallback does not run and the caller is hung up
without a word.  The refusal therefore sends ``EXEC Playback <prefix>/system_error`` before
it closes.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import yaml

from gateway.domain.sample import SAMPLE_CALLER
from tests.asterisk.ring import AmiDriver, place_call

pytestmark = pytest.mark.asterisk


def test_call_over_the_cap_hears_the_apology(start_gateway: Any, driver: AmiDriver, asterisk: Any) -> None:
    """With the one allowed FastAGI connection taken, Asterisk's call is refused with the
    system_error prompt played, and the dialplan then hangs up."""
    daemon = start_gateway("Local/{number}@ring-callees")
    daemon.stop()
    config = yaml.safe_load(daemon.config_path.read_text(encoding="utf-8"))
    config["ivr"]["fastagi"]["max_connections"] = 1
    daemon.config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    daemon.start()
    daemon.wait_until("/healthz", timeout_seconds=60)
    with socket.create_connection(("127.0.0.1", asterisk.fastagi_port), timeout=10) as held:
        held.sendall(b"agi_network: yes\nagi_network_script: 12123\n\n")
        assert held.recv(100) == b"ANSWER\n"  # the one call the cap allows
        call = place_call(driver, "s", "12123-inbound", callerid=SAMPLE_CALLER)
    assert call.agi_commands() == ["EXEC Playback 12123/system_error"]
    assert call.applications()[-1] == "Hangup"
    daemon.stop()  # the next module starts its own gateway with the ring's usual config
