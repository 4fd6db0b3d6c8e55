"""Two `gateway run` processes on one Redis; one of them is frozen (SIGSTOP) for longer
than its claims' lease and then resumed, as a VM paused by its hypervisor, a process
stopped by a debugger or swapped out comes back.

While it stands still its claims run out and the other process takes them back and sends
them.  What it had on the wire when it stopped may reach the citizen twice: those submits
never had their answer in time, and each is counted as a possible duplicate.  What it
had only queued in its carrier link must not go out when it wakes up: before the claim
fence (gateway/push/worker.py, `OutboundSms.may_send`) it did, as soon as the answers
that had come in meanwhile freed its windows: 36 of 200 sent twice, 4 of them on the
wire (now 4).
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from tests.fleet import fleet_run as fleet
from tests.fleet.test_fleet_daemons import wait_for

MESSAGES = 200
LEASE_SECONDS = 6
PAUSE_SECONDS = 15  # past the lease (6 s) and its sweep; short of the bind lease
BIND_LEASE_SECONDS = 60.0  # the binds stay valid through the pause: only the claims run out
SESSIONS, WINDOW = 2, 2  # at most 4 submits on the wire per process
RESPONSE_LATENCY_SECONDS = 0.25


@pytest.fixture
def slow_simulator(tmp_path: Path) -> Iterator[fleet.SimulatorProcess]:
    with fleet.answering_after(tmp_path / "sim", RESPONSE_LATENCY_SECONDS) as sim:
        yield sim


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_process_paused_past_its_claims_sends_none_of_what_it_had_queued(
        tmp_path: Path, redis_url: str, slow_simulator: fleet.SimulatorProcess) -> None:
    templates = fleet.write_templates(tmp_path)
    carrier = fleet.carrier_section(slow_simulator.smpp_port, link_tps=100, account_tps=1000,
                                    max_binds=2 * SESSIONS, bind_lease_seconds=BIND_LEASE_SECONDS,
                                    window=WINDOW, sessions=SESSIONS)
    push = {"templates_file": str(templates), "lease_seconds": LEASE_SECONDS, "max_in_flight": 40, "batch_size": 20}
    paused = fleet.fleet_daemon(tmp_path / "paused", redis_url, carrier, push)
    other = fleet.fleet_daemon(tmp_path / "other", redis_url, carrier, push)
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)

    def states() -> Counter[str | None]:
        return Counter(fleet.record_fields(client, MESSAGES, "pause"))

    try:
        fleet.start_fleet([paused, other])
        wait_for(lambda: slow_simulator.stats()["binds_by_system_id"].get(fleet.SYSTEM_ID) == 2 * SESSIONS,
                 "both processes bound")
        fleet.enqueue(client, MESSAGES, "pause")
        wait_for(lambda: states()["submitted"] >= 20, "sending")
        assert paused.process is not None
        paused.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(PAUSE_SECONDS)
        finally:
            paused.process.send_signal(signal.SIGCONT)
        # registered_delivery 0: "submitted" is final here.
        wait_for(lambda: states()["submitted"] == MESSAGES, "every notification submitted", timeout_seconds=60)
        time.sleep(2)  # what the resumed process might still send would show now

        copies = slow_simulator.copies()
        sent_twice = sum(1 for n in copies.values() if n > 1)
        counted = sum(int(n or 0) for n in fleet.record_fields(client, MESSAGES, "pause", "possible_duplicates"))
        assert len(copies) == MESSAGES
        # Only what was on the wire when it stopped, each counted.
        assert sent_twice <= SESSIONS * WINDOW, f"{sent_twice} of {MESSAGES} sent twice"
        assert counted >= sent_twice
        _, metrics_text = paused.get("/metrics")
        fenced = re.search(r'^gateway12123_submits_fenced_total\{carrier="cmcc"\} (\S+)$', metrics_text, re.M)
        assert fenced is not None and float(fenced.group(1)) > 0, "the resumed process fenced nothing"
        assert "not renewed in time" not in paused.log_text()  # its binds were never in doubt
    finally:
        client.close()
        for daemon in (paused, other):
            daemon.stop()
