"""The fault-suite harness: the real daemon under carrier, process and Redis faults.

Theory of operation
-------------------
A run is the production shape with the carriers replaced by simulators:

* the carriers' SMSCs are `CarrierSimulator`s **in this process** (port 0, on the
  reactor), so the harness can ask each one what it received (`copies_of`) and inject
  the faults of `SimulatorOptions` (dropped links, throttling, odd receipts); a carrier
  planned with ``simulator=None`` gets a port that nobody listens on (its link is down
  for the whole run);
* Redis is a real redis-server with append-only persistence: an external
  `RedisServerProcess` that the harness owns (so it can restart it) or the daemon's
  embedded one;
* the gateway is ``gateway run --log-format json`` as a subprocess
  (tests/integration/daemon.py), which the harness may SIGKILL and start again;
* the work is N notifications XADDed straight to the intake stream in pipelined
  batches, each with a unique number and a unique text (the sequence number is a
  parameter), so the simulators' records tell every message and every copy apart.

The harness then polls the notification hashes until each one is final and counts
(`Tally`):

* **accepted**: entries XADDed;
* **delivered**: final ``delivered`` *and* received by a simulator;
* **failed with a reason**: final ``failed`` / ``undeliverable`` / ``rejected`` with a
  non-empty ``error`` / ``reason``, or ``expired`` with its ``expires_at`` reached;
* **unconfirmed**: final ``unconfirmed`` (no receipt within push.receipt_timeout_seconds)
  with its error, carrier message ids, and received by a simulator: the carrier never
  sent the receipt;
* **lost**: everything else: no hash, not final, final without a reason, or
  ``delivered`` although no simulator received it;
* **duplicated**: extra whole copies a simulator received of one message;
* **response unknown**: the sum of ``possible_duplicates`` the pipeline recorded (a
  submit whose response never came, retried: the only legitimate source of a copy).

The scenarios themselves are the `scenario_*` coroutines at the end, shared by
tests/integration/test_faults.py (small N, assertions) and bench/soak.py (N from the
command line).  Everything here runs on the Twisted asyncio reactor; blocking calls
(HTTP polls, redis-server restarts) go to a thread so the simulators keep answering.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.push.render import TemplateSet, load_templates
from gateway.push.state import FINAL_STATES
from gateway.smpp.simulator import CarrierSimulator, SimulatorOptions
from gateway.store.bridge import wait_deferred
from gateway.store.embedded import RedisServerProcess, free_port
from gateway.store.keys import Keys
from gateway.store.service import make_client
from tests.integration.daemon import REPO, Daemon, write_config

__all__ = [
    "CarrierPlan",
    "FaultRun",
    "LogFindings",
    "Notification",
    "Tally",
    "scenario_carrier_down",
    "scenario_fastagi_hangups",
    "scenario_gateway_killed",
    "scenario_link_drops",
    "scenario_odd_receipts",
    "scenario_redis_refuses_writes",
    "scenario_redis_restart",
    "scenario_throttling",
    "violations",
    "workload",
]

KEYS = Keys()
_STATES_LUA = """
local out = {}
for i = 1, #ARGV do out[i] = redis.call('HGET', ARGV[i], 'state') or '' end
return out
"""
TEMPLATES: TemplateSet = load_templates(REPO / "config" / "templates.yaml")
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
# A whole mainland mobile number (1[3-9] and nine more digits) or resident ID number (17
# digits and a check character) standing alone.
WHOLE_MOBILE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")
WHOLE_ID_NUMBER = re.compile(r"(?<!\d)\d{17}[\dXx](?![\dXx])")
# Reasons a final state must carry to count as recorded (expired: its deadline).
REASON_FIELD = {"failed": "error", "undeliverable": "error", "rejected": "reason"}

# Carriers as in config/gateway.yaml, with the prefixes the workloads use.
CMCC_PREFIXES = ("134", "135", "136", "137", "138", "139", "150", "151", "152", "157", "158", "159", "182",
                 "183", "187", "188", "198")
CUCC_PREFIXES = ("130", "131", "132", "155", "156", "166", "175", "176", "185", "186")


# ----------------------------------------------------------------------------------------
# The work
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One request as a core system XADDs it, and the text the citizen must get."""

    id: str
    type: str
    to: str
    params: Mapping[str, str]
    text: str

    def stream_fields(self) -> dict[str, str]:
        return {"id": self.id, "type": self.type, "to": self.to,
                "params": json.dumps(dict(self.params), ensure_ascii=False), "channel": "sms"}


def workload(tag: str, n: int, prefixes: Sequence[str] = ("138",)) -> list[Notification]:
    """`n` notifications: a verification code (1 part, high lane), a booking cancellation
    (2 UCS2 parts, high) and an overdue inspection (2 parts, normal lane) in turn.

    Numbers are unique (prefix + the sequence number) and so are texts (the sequence
    number is a parameter), so a simulator's record names each message and each copy.
    """
    out: list[Notification] = []
    for i in range(n):
        prefix = prefixes[i % len(prefixes)]
        to = prefix + f"{i:0{11 - len(prefix)}d}"
        kind = i % 3
        if kind == 0:
            type_name, params = "verification_code", {"code": f"{i:06d}", "minutes": "10"}
        elif kind == 1:
            type_name, params = "exam_booking_cancelled", {
                "name": "林晓燕", "booking_no": f"2026113{i:07d}", "subject": "科目二", "site": "集美灌口考场",
                "date": "2026-12-01", "session": "08:30-10:30"}
        else:
            plate = f"闽{chr(ord('A') + i // 100_000 % 26)}{i % 100_000:05d}"
            type_name, params = "inspection_overdue", {"plate": plate, "due_date": f"2026-01-{1 + i % 28:02d}"}
        template = TEMPLATES.get(type_name)
        assert template is not None
        out.append(Notification(f"{tag}-{i:06d}", type_name, to, params, template.render(params)))
    return out


# ----------------------------------------------------------------------------------------
# The count
# ----------------------------------------------------------------------------------------


@dataclass
class LogFindings:
    """What the daemon's JSON log says about bugs and privacy."""

    lines: int = 0
    failures: list[str] = field(default_factory=list)  # events with a traceback (log.failure)
    errors: list[str] = field(default_factory=list)  # error/critical level events
    unstructured: list[str] = field(default_factory=list)  # lines that are not JSON (stderr)
    whole_numbers: int = 0  # whole mobile or ID numbers found anywhere in the log

    def summary(self) -> str:
        return (f"log lines={self.lines} failures={len(self.failures)} errors={len(self.errors)} "
                f"unstructured={len(self.unstructured)} whole_numbers={self.whole_numbers}")


@dataclass
class Tally:
    """The count a scenario ends with (see the module docstring for the definitions)."""

    scenario: str
    accepted: int = 0
    delivered: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # final state -> count (with reasons)
    unconfirmed: int = 0
    duplicated: int = 0
    response_unknown: int = 0
    lost: int = 0
    unexplained_duplicates: int = 0  # copies beyond the notification's recorded response-unknowns
    lost_examples: list[str] = field(default_factory=list)
    failure_reasons: Counter[str] = field(default_factory=Counter)
    by_carrier: Counter[str] = field(default_factory=Counter)
    elapsed_seconds: float = 0.0
    faults: dict[str, Any] = field(default_factory=dict)  # what was injected (drops, kills...)
    leftovers: dict[str, int] = field(default_factory=dict)  # half-done work left in Redis
    log: LogFindings = field(default_factory=LogFindings)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def line(self) -> str:
        failed = ",".join(f"{k}={v}" for k, v in sorted(self.failed.items())) or "-"
        rate = self.accepted / self.elapsed_seconds if self.elapsed_seconds else 0.0
        return (f"[{self.scenario}] accepted={self.accepted} delivered={self.delivered} "
                f"failed_with_reason={self.failed_total} ({failed}) unconfirmed={self.unconfirmed} "
                f"duplicated={self.duplicated} response_unknown={self.response_unknown} lost={self.lost} "
                f"unexplained_duplicates={self.unexplained_duplicates} "
                f"in {self.elapsed_seconds:.1f}s ({rate:.0f}/s); faults={self.faults}; "
                f"carriers={dict(self.by_carrier)}; "
                f"leftovers={ {k: v for k, v in self.leftovers.items() if v} or 0}; {self.log.summary()}"
                + (f"; lost e.g. {self.lost_examples}" if self.lost_examples else "")
                + (f"; reasons {dict(self.failure_reasons.most_common(3))}" if self.failure_reasons else ""))

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "accepted": self.accepted, "delivered": self.delivered,
            "failed_with_reason": self.failed_total, "failed_by_state": dict(self.failed),
            "unconfirmed": self.unconfirmed, "duplicated": self.duplicated,
            "response_unknown": self.response_unknown, "lost": self.lost,
            "unexplained_duplicates": self.unexplained_duplicates,
            "elapsed_seconds": round(self.elapsed_seconds, 2), "faults": self.faults,
            "by_carrier": dict(self.by_carrier), "leftovers": self.leftovers,
            "log_failures": len(self.log.failures),
            "log_errors": len(self.log.errors), "log_whole_numbers": self.log.whole_numbers,
        }


def read_log(path: Path, since: int = 0) -> LogFindings:
    """Scan the daemon's JSON-lines log from byte offset `since`."""
    findings = LogFindings()
    if not path.exists():
        return findings
    with path.open("rb") as f:
        f.seek(since)
        raw = f.read().decode("utf-8", "replace")
    findings.whole_numbers = len(WHOLE_MOBILE.findall(raw)) + len(WHOLE_ID_NUMBER.findall(raw))
    for line in raw.splitlines():
        if not line.strip():
            continue
        findings.lines += 1
        try:
            event = json.loads(line)
        except ValueError:
            findings.unstructured.append(line[:200])
            continue
        # gateway/logs.py's schema: message, level, traceback (older lines: log_*).
        text = str(event.get("message") or event.get("log_masked_text") or event.get("log_format") or "")[:300]
        if "traceback" in event or "log_failure" in event:
            findings.failures.append(text)
        level = event.get("level") or event.get("log_level")
        name = level.get("name") if isinstance(level, dict) else str(level or "")
        if name in ("error", "critical"):
            findings.errors.append(text)
    return findings


# ----------------------------------------------------------------------------------------
# A run
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CarrierPlan:
    """One carrier of a run.

    simulator: how its SMSC behaves (port and credentials are filled in), or None for an
        SMSC that is down for the whole run (nothing listens on its port).
    settings: further keys of the carrier's section in gateway.yaml.
    """

    name: str
    prefixes: tuple[str, ...]
    simulator: SimulatorOptions | None = SimulatorOptions()
    settings: Mapping[str, Any] = field(default_factory=dict)


# Carrier keys every run uses: production window and sessions, a fast reconnect so that
# a dropped link costs a fraction of a second (the default first delay is 1 s).
CARRIER_DEFAULTS: Mapping[str, Any] = {
    "sessions": 2, "window": 200, "tps_limit": 5000, "reconnect_initial_seconds": 0.2,
    "reconnect_max_seconds": 2.0, "response_timeout_seconds": 10.0,
    # as config/gateway.yaml: the carriers interconnect for 12123, so each takes the
    # others' numbers when their carrier is down (scenario 6)
    "accepts_other_carriers": True,
}
# Quiet hours start == end: none, so the normal-lane reminders are not held whatever the
# time of day the suite runs at (quiet hours have their own tests).  Retries start after half a second instead of two (production) so that a message that
# needs all five attempts is settled in 7.5 s rather than 30 s; the number of attempts
# (max_attempts 5), which decides what fails, is the production one.  Entries a killed
# process left pending are claimed after 2 s instead of 60 s.
PUSH_DEFAULTS: Mapping[str, Any] = {
    "quiet_hours": {"start": "00:00", "end": "00:00", "timezone": "Asia/Shanghai"},
    "claim_idle_seconds": 2,
    "retry_initial_seconds": 0.5,
}


class FaultRun:
    """Simulators, Redis and the daemon of one scenario; `async with` stops them all.

    Args:
        directory: a fresh directory for the config, logs and Redis data.
        carriers: the carriers, in configuration (and failover) order.
        redis: "external" (a RedisServerProcess the run owns and may restart) or
            "embedded" (the daemon's own).
        push: keys of the push section besides PUSH_DEFAULTS.
        config: further top-level keys of gateway.yaml.
    """

    def __init__(self, directory: Path, carriers: Sequence[CarrierPlan], *, redis: str = "external",
                 push: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.directory = directory
        self.plans = list(carriers)
        self.simulators: dict[str, CarrierSimulator] = {}
        self.redis_mode = redis
        self.redis_server: RedisServerProcess | None = None
        self.push = {**PUSH_DEFAULTS, **(push or {})}
        self.extra_config = dict(config or {})
        self.daemon: Daemon | None = None
        self.client: Any = None
        self.kills = 0
        self.redis_restarts = 0
        # What the daemon answered while Redis refused writes (refuse_writes).
        self.refusal: dict[str, int] = {}
        self._log_offset = 0
        self._states_script: Any = None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> FaultRun:
        self.directory.mkdir(parents=True, exist_ok=True)
        carriers_config = []
        for plan in self.plans:
            system_id, password = f"gw{plan.name}"[:15], f"{plan.name}-pw"
            if plan.simulator is not None:
                options = dataclasses.replace(plan.simulator, port=0, credentials={system_id: password})
                simulator = CarrierSimulator(options, self.reactor)
                simulator.startService()
                self.simulators[plan.name] = simulator
                port = simulator.port_number
            else:
                port = free_port()  # nobody listens there: the link stays down
            carriers_config.append({"name": plan.name, "host": "127.0.0.1", "port": port,
                                    "system_id": system_id, "password": password,
                                    "prefixes": list(plan.prefixes), **CARRIER_DEFAULTS, **plan.settings})
        if self.redis_mode == "external":
            self.redis_server = RedisServerProcess(data_dir=self.directory / "redis-external")
            await asyncio.to_thread(self.redis_server.start)
            redis_config: dict[str, Any] = {"url": self.redis_server.url}
            url = self.redis_server.url
        else:
            redis_config = {"url": "embedded", "data_dir": str(self.directory / "redis")}
            url = f"unix://{self.directory / 'redis' / 'redis.sock'}"
        path = write_config(self.directory, redis=redis_config, carriers=carriers_config, push=self.push,
                            **self.extra_config)
        self.daemon = Daemon(path, self.directory / "gateway.log", extra_args=["--log-format", "json"])
        await self.start_gateway()
        self.client = make_client(url)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.daemon is not None and self.daemon.process is not None and self.daemon.process.poll() is None:
            try:
                await asyncio.to_thread(self.daemon.terminate, 30.0)
            finally:
                self.daemon.kill()
        if self.client is not None:
            await self.client.aclose()
        for simulator in self.simulators.values():
            await wait_deferred(simulator.stopService())
        if self.redis_server is not None:
            await asyncio.to_thread(self.redis_server.stop)

    async def start_gateway(self, timeout_seconds: float = 30.0) -> float:
        """Start `gateway run` and wait until every running simulator has all its binds;
        returns the seconds that took."""
        assert self.daemon is not None
        started = time.monotonic()
        self.daemon.start()
        deadline = started + timeout_seconds
        while True:
            process = self.daemon.process
            assert process is not None
            if process.poll() is not None:
                raise AssertionError(f"the daemon exited with {process.returncode}:\n{self.daemon.log_text()[-4000:]}")
            if await self._ready():
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise AssertionError(f"the daemon was not ready in {timeout_seconds}s:\n{self.daemon.log_text()[-4000:]}")
            await asyncio.sleep(0.05)

    async def _ready(self) -> bool:
        assert self.daemon is not None
        try:
            code, _ = await asyncio.to_thread(self.daemon.get, "/readyz")
        except OSError:
            return False
        if code != 200:
            return False
        for plan in self.plans:
            simulator = self.simulators.get(plan.name)
            if simulator is not None:
                wanted = int({**CARRIER_DEFAULTS, **plan.settings}["sessions"])
                if plan.settings.get("bind_mode") == "transmitter_receiver":
                    wanted *= 2
                if len(simulator.bound_sessions()) < wanted:
                    return False
        return True

    async def kill_gateway(self) -> float:
        """SIGKILL the daemon (no drain, no unbind) and start it again; seconds to ready."""
        assert self.daemon is not None
        self.daemon.kill()
        self.kills += 1
        return await self.start_gateway()

    async def restart_redis(self, down_seconds: float = 2.0) -> None:
        """Stop the external redis-server (SIGTERM: the AOF is flushed), leave it down for
        `down_seconds`, and start it again on the same port and data."""
        assert self.redis_server is not None
        await asyncio.to_thread(self.redis_server.stop)
        await asyncio.sleep(down_seconds)
        await asyncio.to_thread(self.redis_server.start)
        self.redis_restarts += 1

    async def refuse_writes(self, seconds: float) -> None:
        """Make the external redis-server refuse writes for `seconds` (then accept again):
        ``maxmemory`` below the data in use with the ``noeviction`` policy, so every
        command that may grow memory (and every script whose first write is one) gets
        ``OOM command not allowed when used memory > 'maxmemory'``; reads still work.
        Meanwhile ask the daemon for /readyz and POST one notification, and note what
        it answered (``refusal``)."""
        assert self.redis_server is not None and self.daemon is not None
        await self.client.config_set("maxmemory-policy", "noeviction")
        await self.client.config_set("maxmemory", "1mb")  # below any run's data: refused at once
        started = time.monotonic()
        refusal = self.refusal
        refusal["redis_refused_writes_seconds"] = int(seconds)
        probe = {"id": "refusal-probe", "type": "verification_code", "to": "13800000000",
                 "params": {"code": "1", "minutes": "5"}}
        while time.monotonic() - started < seconds:
            code, _ = await asyncio.to_thread(self.daemon.get, "/readyz")
            if code == 503:
                refusal["readyz_503_polls"] = refusal.get("readyz_503_polls", 0) + 1
            else:
                refusal["readyz_200_polls"] = refusal.get("readyz_200_polls", 0) + 1
            if time.monotonic() - started > seconds / 2 and "post_status" not in refusal:
                status, retry_after = await asyncio.to_thread(self._post_probe, probe)
                refusal["post_status"] = status
                refusal["post_retry_after_seconds"] = retry_after
            await asyncio.sleep(0.5)
        await self.client.config_set("maxmemory", "0")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # ready again once the gateway saw a write pass
            code, _ = await asyncio.to_thread(self.daemon.get, "/readyz")
            if code == 200:
                refusal["ready_again_after_ms"] = int((time.monotonic() - started - seconds) * 1000)
                break
            await asyncio.sleep(0.1)

    def _post_probe(self, probe: Mapping[str, Any]) -> tuple[int, int]:
        """POST one notification; (status, Retry-After seconds or -1)."""
        import urllib.error
        import urllib.request

        assert self.daemon is not None
        request = urllib.request.Request(self.daemon.http_base + "/v1/notifications",
                                         data=json.dumps(probe).encode(), method="POST")
        request.add_header("Authorization", "Bearer test-token")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, int(response.headers.get("Retry-After") or -1)
        except urllib.error.HTTPError as e:
            return e.code, int(e.headers.get("Retry-After") or -1)

    def log_findings(self) -> LogFindings:
        assert self.daemon is not None
        return read_log(self.daemon.log_path, self._log_offset)

    # -- work ----------------------------------------------------------------------------

    async def enqueue(self, notifications: Sequence[Notification], batch: int = 1000) -> None:
        """XADD every notification to the intake stream, `batch` per pipeline."""
        stream = KEYS.notify_stream
        for start in range(0, len(notifications), batch):
            async with self.client.pipeline(transaction=False) as pipe:
                for notification in notifications[start:start + batch]:
                    pipe.xadd(stream, notification.stream_fields())
                await pipe.execute()

    async def _states(self, ids: Sequence[str]) -> dict[str, str | None]:
        """The state of each notification ('' when it has no hash): one script call per
        10,000, because a pipeline of HGETs costs the harness (and so the simulators on
        its reactor) about a second per 20,000 in redis-py."""
        if self._states_script is None:
            self._states_script = self.client.register_script(_STATES_LUA)
        out: dict[str, str | None] = {}
        for start in range(0, len(ids), 10_000):
            chunk = ids[start:start + 10_000]
            values = await self._states_script(keys=[], args=[KEYS.notification(i) for i in chunk])
            out.update((i, v or None) for i, v in zip(chunk, values, strict=True))
        return out

    async def wait_settled(self, notifications: Sequence[Notification], *, timeout_seconds: float,
                           poll_seconds: float = 0.2,
                           milestones: Sequence[tuple[float, Callable[[], Awaitable[Any]]]] = ()) -> None:
        """Poll until every notification is final, or until the timeout; the count tells
        what did not settle.

        milestones: (fraction, coroutine function) run once when that fraction of the
            notifications has been submitted or is final (kill the daemon, restart Redis).
        """
        pending = [n.id for n in notifications]
        total = len(pending)
        deadline = time.monotonic() + timeout_seconds
        todo = sorted(milestones, key=lambda m: m[0])
        while True:
            try:
                states = await self._states(pending)
            except REDIS_ERRORS + (ResponseError,):
                await asyncio.sleep(poll_seconds)  # Redis restarting (LOADING) or away
                continue
            pending = [i for i, s in states.items() if s not in FINAL_STATES]
            submitted = sum(1 for i in pending if states[i] == "submitted")
            progress = (total - len(pending) + submitted) / total if total else 1.0
            while todo and todo[0][0] <= progress:
                _, action = todo.pop(0)
                await action()
            if not pending and not todo:
                return
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(poll_seconds)

    async def tally(self, scenario: str, notifications: Sequence[Notification]) -> Tally:
        """Count the run (see the module docstring)."""
        result = Tally(scenario, accepted=len(notifications))
        wanted = ("state", "error", "reason", "expires_at", "possible_duplicates", "carrier", "message_ids")
        rows: list[list[str | None]] = []
        for start in range(0, len(notifications), 2000):
            chunk = notifications[start:start + 2000]
            async with self.client.pipeline(transaction=False) as pipe:
                for n in chunk:
                    pipe.hmget(KEYS.notification(n.id), wanted)
                rows.extend(await pipe.execute())
        for n, row in zip(notifications, rows, strict=True):
            state, error, reason, expires_at, duplicates, carrier, message_ids = row
            copies = sum(s.copies_of(n.to, n.text) for s in self.simulators.values())
            recorded_unknown = int(duplicates or 0)
            result.response_unknown += recorded_unknown
            result.duplicated += max(0, copies - 1)
            if copies - 1 > recorded_unknown:
                result.unexplained_duplicates += copies - 1 - recorded_unknown
            lost_because = ""
            if state is None:
                lost_because = "no state"
            elif state == "delivered":
                if copies:
                    result.delivered += 1
                    result.by_carrier[carrier or "?"] += 1
                else:
                    lost_because = "delivered but never received"
            elif state == "expired":
                if expires_at:
                    result.failed[state] += 1
                else:
                    lost_because = "expired without expires_at"
            elif state in REASON_FIELD:
                why = error if REASON_FIELD[state] == "error" else reason
                if why:
                    result.failed[state] += 1
                    result.failure_reasons[why] += 1
                else:
                    lost_because = f"{state} without a reason"
            elif state == "unconfirmed":
                if copies and message_ids and error:
                    result.unconfirmed += 1
                else:
                    lost_because = "unconfirmed without a reason, message ids or a copy at the carrier"
            else:
                lost_because = f"still {state}"
            if lost_because:
                result.lost += 1
                if len(result.lost_examples) < 5:
                    result.lost_examples.append(f"{n.id}: {lost_because}")
        result.faults.update(self.fault_counts())
        recovered = await self._count_field(notifications, "recovered_at")
        if recovered:
            result.faults["lease_recovered"] = recovered
        result.leftovers = await self.leftovers()
        result.log = self.log_findings()
        return result

    async def _count_field(self, notifications: Sequence[Notification], name: str) -> int:
        count = 0
        for start in range(0, len(notifications), 5000):
            async with self.client.pipeline(transaction=False) as pipe:
                for n in notifications[start:start + 5000]:
                    pipe.hexists(KEYS.notification(n.id), name)
                count += sum(1 for present in await pipe.execute() if present)
        return count

    async def leftovers(self) -> dict[str, int]:
        """Work still half done in Redis (all 0 once a run has settled): intake entries
        not yet accepted or pending for a (dead) consumer, claims in flight, queued and
        scheduled notifications."""
        stream = KEYS.notify_stream
        try:
            pending = (await self.client.xpending(stream, "gateway"))["pending"]
        except ResponseError:  # no group: nothing was ever read
            pending = 0
        return {"stream_entries": await self.client.xlen(stream), "stream_pending": int(pending),
                "inflight": await self.client.zcard(KEYS.inflight),
                "queued": sum([await self.client.zcard(KEYS.lane(p)) for p in ("high", "normal", "bulk")]),
                "scheduled": await self.client.zcard(KEYS.scheduled)}

    def fault_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name, simulator in self.simulators.items():
            c = simulator.counters
            for what in ("dropped_connections", "throttled", "unanswered", "receipts_skipped",
                         "receipts_redelivered"):
                value = getattr(c, what)
                if value:
                    counts[f"{name}.{what}"] = value
        if self.kills:
            counts["gateway_sigkills"] = self.kills
        if self.redis_restarts:
            counts["redis_restarts"] = self.redis_restarts
        counts.update(self.refusal)
        return counts


async def run_notifications(run: FaultRun, scenario: str, notifications: Sequence[Notification], *,
                            timeout_seconds: float,
                            milestones: Sequence[tuple[float, Callable[[], Awaitable[Any]]]] = ()) -> Tally:
    """Enqueue, wait until settled, count."""
    started = time.monotonic()
    await run.enqueue(notifications)
    await run.wait_settled(notifications, timeout_seconds=timeout_seconds, milestones=milestones)
    elapsed = time.monotonic() - started
    result = await run.tally(scenario, notifications)
    result.elapsed_seconds = elapsed
    return result


# ----------------------------------------------------------------------------------------
# The scenarios (the issue "Proof under load and faults")
# ----------------------------------------------------------------------------------------

FAST_RECEIPTS = {"receipt_delay_seconds": 0.2, "redeliver_delay_seconds": 1.0}


def _sim(**options: Any) -> SimulatorOptions:
    return SimulatorOptions(**{**FAST_RECEIPTS, **options})


async def scenario_link_drops(directory: Path, n: int = 20_000, drop_after_pdus: int = 500,
                              timeout_seconds: float = 150.0) -> Tally:
    """1. Both carriers drop the TCP connection at every `drop_after_pdus`-th PDU of a
    connection (no unbind; the dropped PDU is processed but never answered)."""
    carriers = [CarrierPlan("cmcc", CMCC_PREFIXES, _sim(drop_after_pdus=drop_after_pdus)),
                CarrierPlan("cucc", CUCC_PREFIXES, _sim(drop_after_pdus=drop_after_pdus, seed=2))]
    work = workload("drops", n, ("138", "130", "159", "186"))
    async with FaultRun(directory, carriers) as run:
        return await run_notifications(run, "link drops", work, timeout_seconds=timeout_seconds)


async def scenario_throttling(directory: Path, n: int = 3000, throttle_rate: float = 0.33,
                              timeout_seconds: float = 120.0) -> Tally:
    """2. The carrier answers ESME_RTHROTTLED to `throttle_rate` of all submits."""
    carriers = [CarrierPlan("cmcc", CMCC_PREFIXES, _sim(throttle_rate=throttle_rate))]
    work = workload("throttle", n, ("138", "139"))
    async with FaultRun(directory, carriers) as run:
        return await run_notifications(run, "throttling", work, timeout_seconds=timeout_seconds)


async def scenario_gateway_killed(directory: Path, n: int = 4000, kills: int = 3,
                                  timeout_seconds: float = 150.0, redis: str = "external",
                                  lease_seconds: float | None = None,
                                  push_settings: Mapping[str, Any] | None = None) -> Tally:
    """3. The gateway gets SIGKILL `kills` times during the run and is started again at
    once; the new process takes over the dead ones' stream entries (XAUTOCLAIM) and
    in-flight claims (lease expiry: push.lease_seconds, the daemon's default unless
    `lease_seconds` is given); `push_settings`: further push keys (push.ledger_engine)."""
    carriers = [CarrierPlan("cmcc", CMCC_PREFIXES, _sim(), settings={"tps_limit": 1000}),
                CarrierPlan("cucc", CUCC_PREFIXES, _sim(seed=2), settings={"tps_limit": 1000})]
    work = workload("kill9", n, ("138", "130"))
    push = {**({"lease_seconds": lease_seconds} if lease_seconds else {}), **(push_settings or {})}
    async with FaultRun(directory, carriers, redis=redis, push=push) as run:
        restarts: list[float] = []

        async def kill() -> None:
            restarts.append(await run.kill_gateway())

        points = [(0.1 + 0.5 * k / max(1, kills), kill) for k in range(kills)]
        result = await run_notifications(run, "gateway SIGKILLed", work, timeout_seconds=timeout_seconds,
                                         milestones=points)
        result.faults["restart_to_ready_seconds"] = [round(r, 1) for r in restarts]
        return result


async def scenario_redis_restart(directory: Path, n: int = 4000, restarts: int = 1,
                                 timeout_seconds: float = 120.0) -> Tally:
    """4. The external redis-server (append-only, fsync every second) is stopped and
    started again during the run."""
    carriers = [CarrierPlan("cmcc", CMCC_PREFIXES, _sim(), settings={"tps_limit": 1500})]
    work = workload("redis", n, ("138", "139"))
    async with FaultRun(directory, carriers, redis="external") as run:
        points = [(0.25 + 0.5 * k / max(1, restarts), run.restart_redis) for k in range(restarts)]
        return await run_notifications(run, "redis restarted", work, timeout_seconds=timeout_seconds,
                                       milestones=points)


async def scenario_redis_refuses_writes(directory: Path, n: int = 2000, refuse_seconds: float = 20.0,
                                        timeout_seconds: float = 120.0) -> Tally:
    """8. redis-server refuses writes (OOM: maxmemory below the data, noeviction) for
    `refuse_seconds` while submits are on the wire: outcomes and receipts that cannot be
    recorded must be kept and recorded once Redis accepts writes again, never resent."""
    carriers = [CarrierPlan("cmcc", CMCC_PREFIXES, _sim(), settings={"tps_limit": 200})]
    work = workload("refused", n, ("138", "139"))
    async with FaultRun(directory, carriers, redis="external") as run:
        return await run_notifications(run, "redis refuses writes", work, timeout_seconds=timeout_seconds,
                                       milestones=[(0.2, lambda: run.refuse_writes(refuse_seconds))])


async def scenario_odd_receipts(directory: Path, n: int = 3000, receipt_rate: float = 0.5,
                                timeout_seconds: float = 90.0, stray_receipts: int = 0,
                                early_receipts_max: int = 1_000_000) -> Tally:
    """5. Receipts come before the submit_sm_resp, every one twice, and half never: those
    notifications end unconfirmed after push.receipt_timeout_seconds (here 5 s).  With
    `stray_receipts`, each receipt brings that many of another account's (UNDELIV, ids
    this account never gets), parked up to `early_receipts_max`."""
    carriers = [CarrierPlan("cmcc", CMCC_PREFIXES, _sim(receipt_before_response=True, duplicate_receipts=True,
                                                        receipt_rate=receipt_rate, stray_receipts=stray_receipts))]
    work = workload("receipts", n, ("138", "139"))
    push = {"receipt_timeout_seconds": 5, "early_receipts_max": early_receipts_max}
    async with FaultRun(directory, carriers, push=push) as run:
        return await run_notifications(run, "odd receipts", work, timeout_seconds=timeout_seconds)


async def scenario_carrier_down(directory: Path, n: int = 3000, timeout_seconds: float = 90.0) -> Tally:
    """6. China Mobile's SMSC is down for the whole run (nothing listens on its port):
    its numbers fail over to China Unicom's link."""
    carriers = [CarrierPlan("cmcc", CMCC_PREFIXES, None), CarrierPlan("cucc", CUCC_PREFIXES, _sim())]
    work = workload("down", n, ("138", "150", "187"))
    async with FaultRun(directory, carriers) as run:
        return await run_notifications(run, "carrier down", work, timeout_seconds=timeout_seconds)


# ----------------------------------------------------------------------------------------
# 7. FastAGI: a hundred calls that hang up anywhere
# ----------------------------------------------------------------------------------------


@dataclass
class CallsTally:
    """The count of the FastAGI scenario."""

    calls: int = 0
    abrupt: int = 0  # raw sockets closed or reset before the environment was complete
    ended_by_server: int = 0  # the client kept its socket; the server closed it
    unfinished: int = 0  # client sockets still open at the end
    recorded: int = 0  # ivr.call events for our uniqueids (each with an outcome)
    unrecorded: list[str] = field(default_factory=list)
    recorded_twice: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    metric_total_delta: float = 0.0
    open_server_sockets: list[str] = field(default_factory=list)
    normal_call_outcome: str = ""
    normal_call_heard_goodbye: bool = False
    elapsed_seconds: float = 0.0
    log: LogFindings = field(default_factory=LogFindings)

    def line(self) -> str:
        return (f"[fastagi hang-ups] calls={self.calls} (abrupt={self.abrupt}, ended_by_server={self.ended_by_server}) "
                f"recorded={self.recorded} unrecorded={len(self.unrecorded)} recorded_twice={len(self.recorded_twice)} "
                f"unfinished={self.unfinished} open_server_sockets={len(self.open_server_sockets)} "
                f"metric_delta={self.metric_total_delta:.0f} outcomes={dict(self.outcomes)} "
                f"normal_call={self.normal_call_outcome} in {self.elapsed_seconds:.1f}s; {self.log.summary()}")

    def as_json(self) -> dict[str, Any]:
        return {"scenario": "fastagi hang-ups", "calls": self.calls, "abrupt": self.abrupt,
                "recorded": self.recorded, "unrecorded": len(self.unrecorded),
                "recorded_twice": len(self.recorded_twice), "unfinished": self.unfinished,
                "open_server_sockets": len(self.open_server_sockets), "outcomes": dict(self.outcomes),
                "normal_call_outcome": self.normal_call_outcome,
                "elapsed_seconds": round(self.elapsed_seconds, 2), "log_failures": len(self.log.failures),
                "log_errors": len(self.log.errors), "log_whole_numbers": self.log.whole_numbers}


# /proc/net/tcp socket states (include/net/tcp_states.h), hex.
_TCP_LISTEN, _TCP_TIME_WAIT, _TCP_CLOSE = "0A", "06", "07"


def server_sockets(port: int) -> list[str]:
    """States of TCP sockets whose local port is `port`, other than listening, closed and
    TIME_WAIT (the server closed first: nothing left open).  ESTABLISHED or CLOSE_WAIT
    here is a call the server still holds."""
    states: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] not in (_TCP_LISTEN, _TCP_TIME_WAIT, _TCP_CLOSE):
                states.append(fields[3])
    return states


async def _metric_total(run: FaultRun, name: str) -> float:
    assert run.daemon is not None
    code, body = await asyncio.to_thread(run.daemon.get, "/metrics")
    assert code == 200
    total = 0.0
    for line in str(body).splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _random_inputs(rng: random.Random, booking: str) -> list[str]:
    """Key groups a caller might press: queries, cancellations, nonsense, silence."""
    choice = rng.randrange(6)
    wrong = f"2099{rng.randrange(10**7):07d}#"
    if choice == 0:
        return ["1", wrong, "#"]
    if choice == 1:
        return ["2", wrong, "1", "#"]
    if choice == 2:
        return [str(rng.randrange(3, 10)), str(rng.randrange(3, 10)), str(rng.randrange(3, 10))]
    if choice == 3:
        return ["0"]
    if choice == 4:
        return ["1", booking + "#", "#"]  # someone else's booking from this number
    return []


async def _abrupt_call(port: int, rng: random.Random) -> None:
    """Connect and write part of an environment, then close or reset the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    environment = b"agi_network: yes\nagi_network_script: 12123\nagi_uniqueid: 1764460800.999\n"
    writer.write(environment[: rng.randrange(len(environment))])
    await writer.drain()
    if rng.random() < 0.5:
        writer.transport.abort()
    else:
        writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


# The first calls hang up at command 0, 1, ... of a status query (ANSWER, the greeting,
# the main menu, WAIT FOR DIGIT, the identity prompt, GET DATA, ...), once closing the
# socket and once keeping it as a dead channel; the rest hang up at random.
SWEEP_COMMANDS = 12


async def scenario_fastagi_hangups(directory: Path, calls: int = 100, concurrency: int = 20,
                                   seed: int = 12123, timeout_seconds: float = 60.0) -> CallsTally:
    """7. `calls` FastAGI calls hang up at various points: first a sweep over the first
    commands of a status query (socket closed, then kept as a dead channel), then at
    random (in a prompt, while typing, while an action runs; a tenth of them drop the
    connection mid-environment); then one normal call."""
    from gateway.domain import from_unix
    from gateway.domain.sample import SAMPLE_CALLER, load_sample
    from tests.peers.fastagi_client import place_call

    carriers = [CarrierPlan("cmcc", CMCC_PREFIXES, _sim())]
    result = CallsTally()
    rng = random.Random(seed)
    async with FaultRun(directory, carriers) as run:
        assert run.daemon is not None
        summary = await load_sample(run.client, KEYS, today=from_unix(time.time()).date())
        port = int(run.daemon.config["ivr"]["fastagi"]["listen"].rsplit(":", 1)[1])
        before = await _metric_total(run, "gateway12123_agi_calls_total")
        started = time.monotonic()
        uniqueids: list[str] = []
        kept_socket: set[str] = set()
        clients: list[Any] = []

        def one_call(k: int) -> Awaitable[Any]:
            if k < 2 * SWEEP_COMMANDS:
                # The sweep: hang up at each of the first commands, socket closed or kept.
                hang_up_at, close = k % SWEEP_COMMANDS, k < SWEEP_COMMANDS
            elif rng.random() < 0.1:
                result.abrupt += 1
                return _abrupt_call(port, random.Random(rng.random()))
            else:
                hang_up_at, close = rng.randrange(0, 14), rng.random() < 0.6
            uniqueid = f"1764460800.{10_000 + k}"
            uniqueids.append(uniqueid)
            if not close:
                kept_socket.add(uniqueid)
            caller = f"13{rng.randrange(5, 10)}{rng.randrange(10**8):08d}"
            inputs = ["1", "2099123456#", "#"] if k < 2 * SWEEP_COMMANDS else _random_inputs(rng, summary.slot_booking)
            d = place_call(run.reactor, port, "12123", callerid=caller, uniqueid=uniqueid, inputs=inputs,
                           hangup_at=lambda index, line, at=hang_up_at: index >= at,
                           close_on_hangup=close)
            d.addCallback(clients.append)
            return wait_deferred(d)

        for start in range(0, calls, concurrency):
            wave = [one_call(k) for k in range(start, min(calls, start + concurrency))]
            done, _ = await asyncio.wait([asyncio.ensure_future(w) for w in wave], timeout=timeout_seconds)
            result.unfinished += len(wave) - len(done)
        result.calls = calls
        result.ended_by_server = sum(1 for c in clients if c.uniqueid in kept_socket)

        # Every call is recorded once: wait (bounded) for the events, then count.
        deadline = time.monotonic() + 10
        while True:
            events = [f for _, f in await run.client.xrange(KEYS.events_stream) if f.get("type") == "ivr.call"]
            seen = Counter(f.get("uniqueid", "") for f in events)
            if all(seen[u] for u in uniqueids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        for f in events:
            if f.get("uniqueid") in set(uniqueids) and f.get("outcome"):
                result.outcomes[f["outcome"]] += 1
        result.recorded = sum(1 for u in uniqueids if seen[u] >= 1)
        result.unrecorded = [u for u in uniqueids if not seen[u]]
        result.recorded_twice = [u for u in uniqueids if seen[u] > 1]
        deadline = time.monotonic() + 5
        while (sockets := server_sockets(port)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        result.open_server_sockets = sockets
        result.metric_total_delta = await _metric_total(run, "gateway12123_agi_calls_total") - before

        # A normal call afterwards: the booking status read back to its end.
        normal = await wait_deferred(place_call(run.reactor, port, "12123", callerid=SAMPLE_CALLER,
                                                uniqueid="1764460800.99999",
                                                inputs=["1", summary.cancellable_booking + "#", "#"]))
        result.normal_call_heard_goodbye = normal.hung_up_by_script and bool(normal.played)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            events = [f for _, f in await run.client.xrange(KEYS.events_stream)
                      if f.get("type") == "ivr.call" and f.get("uniqueid") == "1764460800.99999"]
            if events:
                result.normal_call_outcome = events[0].get("outcome", "")
                break
            await asyncio.sleep(0.1)
        result.elapsed_seconds = time.monotonic() - started
        result.log = run.log_findings()
    return result


def violations(result: Tally | CallsTally) -> list[str]:
    """The invariants a run must keep, broken ones named (empty: all kept).

    SMS: nothing lost; every notification delivered, failed with a reason or
    unconfirmed (its receipt never came); no more copies than response-unknown submits, for each
    message; no whole mobile number and no traceback in the daemon's log.  FastAGI: every
    call over, recorded once, counted, no socket left open on the server, no error logged,
    and the normal call completed.
    """
    broken: list[str] = []
    if isinstance(result, Tally):
        checks = [
            (result.accepted > 0, "nothing accepted"),
            (result.lost == 0, f"{result.lost} lost"),
            (result.delivered + result.failed_total + result.unconfirmed == result.accepted,
             "counts do not add up to accepted"),
            (result.duplicated <= result.response_unknown, "more duplicates than response-unknown submits"),
            (result.unexplained_duplicates == 0,
             f"{result.unexplained_duplicates} copies beyond their message's response-unknown submits"),
            # Lanes and the scheduled set may keep stale ids (a claim skips them), so the
            # notifications' own states tell about those; the intake and the claims must be empty.
            (not any(result.leftovers.get(k) for k in ("stream_entries", "stream_pending", "inflight")),
             f"half-done work left in Redis: {result.leftovers}"),
        ]
    else:
        checks = [
            (result.unfinished == 0, f"{result.unfinished} calls still open at the client"),
            (not result.unrecorded, f"{len(result.unrecorded)} calls never recorded"),
            (not result.recorded_twice, f"{len(result.recorded_twice)} calls recorded twice"),
            (result.metric_total_delta == result.calls, "gateway12123_agi_calls_total does not count every call"),
            (not result.open_server_sockets, f"server sockets still open: {result.open_server_sockets}"),
            (not result.log.errors, f"{len(result.log.errors)} errors logged"),
            (result.normal_call_outcome == "completed" and result.normal_call_heard_goodbye,
             f"the normal call ended {result.normal_call_outcome or 'unrecorded'}"),
        ]
    checks += [
        (result.log.whole_numbers == 0, f"{result.log.whole_numbers} whole mobile or ID numbers in the log"),
        (not result.log.failures, f"{len(result.log.failures)} tracebacks logged: {result.log.failures[:2]}"),
        (not result.log.unstructured, f"lines that are not JSON in the log: {result.log.unstructured[:2]}"),
    ]
    broken += [what for ok, what in checks if not ok]
    return broken


def print_tally(result: Tally | CallsTally, stream: Any = None) -> None:
    """The count as one line (pytest -s shows it)."""
    print(result.line(), file=stream, flush=True)


def write_json(results: Iterable[Tally | CallsTally], path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps([r.as_json() for r in results], ensure_ascii=False, indent=2))
