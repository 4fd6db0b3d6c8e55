"""The operations API and CLI against two real `gateway run` processes sharing one Redis,
with the carrier simulator: views and controls are fleet-wide, errors are JSON, exit
codes mean something, numbers stay masked, every action is audited."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis as sync_redis

from gateway.store.embedded import RedisServerProcess
from tests.fleet.fleet_run import needs_libfaketime, skewed_env
from tests.ops.fleet import Fleet, carrier_view, running_fleet, wait_for

pytestmark = pytest.mark.timeout(300)

PHONE = "13800138000"


def code_request(to: str = PHONE, **extra: Any) -> dict[str, Any]:
    return {"type": "verification_code", "to": to, "params": {"code": "123456", "minutes": "5"}, **extra}


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    client = sync_redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    with running_fleet(tmp_path_factory.mktemp("fleet"), redis_server.url, processes=2) as running:
        wait_for(lambda: carrier_view(running)["sessions_bound"] == 2, "both processes bound")
        yield running


def state_of(fleet: Fleet, notification_id: str) -> str:
    code, body = fleet.call("GET", f"/v1/notifications/{notification_id}")
    assert code == 200, body
    return str(body["state"])


def set_carrier(fleet: Fleet, action: str, expected: str) -> None:
    code, body = fleet.call("POST", f"/v1/carriers/cmcc/{action}")
    assert code == 200, body
    # Seen from the OTHER process: the control reached every process.
    wait_for(lambda: set(carrier_view(fleet, daemon=fleet.daemons[1])["processes"].values()) == {expected},
             f"every process {expected}")


def test_carrier_view_sums_every_process(fleet: Fleet) -> None:
    """GET /v1/carriers on either process lists both processes and sums their sessions;
    `gateway carriers --json` shows the same."""
    for daemon in fleet.daemons:
        view = carrier_view(fleet, daemon=daemon)
        assert view["state"] == "bound" and view["sessions_bound"] == 2 and view["sessions_configured"] == 2
        assert len(view["processes"]) == 2 and view["tps_limit"] == 400  # 200 per process
    result = fleet.cli("carriers", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["carriers"]["cmcc"]["sessions_bound"] == 2
    table = fleet.cli("carriers")
    assert table.returncode == 0 and re.search(r"cmcc\s+bound", table.stdout), table.stdout


@needs_libfaketime
def test_the_cli_on_a_host_a_minute_off_still_sees_the_fleet(fleet: Fleet) -> None:
    """`gateway carriers` on an operator's host a minute ahead or behind: the
    processes' reports are judged on Redis's clock, not the host's (before: no process
    reporting, no session bound)."""
    result = fleet.cli("carriers", "--json", env=skewed_env(60))
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["carriers"]["cmcc"]["sessions_bound"] == 2 and len(view["processes"]) == 2, view
    table = fleet.cli("carriers", env=skewed_env(-60))
    assert "2 process(es) reporting" in table.stdout, table.stdout


@needs_libfaketime
def test_an_operators_action_from_a_host_an_hour_off_is_stamped_on_redis_clock(fleet: Fleet) -> None:
    """The audit entry of `gateway carriers start` run on a host an hour ahead carries
    Redis's time, which the console compares with the fleet's (before: the host's own,
    an hour off)."""
    result = fleet.cli("carriers", "start", "cmcc", env=skewed_env(3600))
    assert result.returncode == 0, result.stderr
    code, body = fleet.call("GET", "/v1/audit?action=carrier.start&limit=1")
    assert code == 200, body
    [entry] = body["audit"]
    assert entry["from"].startswith("cli@") and abs(entry["at"] - time.time()) < 30, entry


def test_stop_and_start_act_on_every_process_and_are_audited(fleet: Fleet) -> None:
    """A stop through one process unbinds both; what is sent meanwhile waits, and goes
    out after `gateway carriers start`; both actions are in the audit log."""
    set_carrier(fleet, "stop", "stopped")
    assert carrier_view(fleet)["sessions_bound"] == 0
    code, body = fleet.call("POST", "/v1/notifications", code_request(id="during-stop"))
    assert code == 202, body
    time.sleep(1.0)  # give a (wrong) dispatcher the chance to send it
    assert state_of(fleet, "during-stop") == "queued"

    started = fleet.cli("carriers", "start", "cmcc")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: carrier_view(fleet, daemon=fleet.daemons[1])["sessions_bound"] == 2, "bound again")
    wait_for(lambda: state_of(fleet, "during-stop") == "delivered", "the waiting notification delivered")

    code, body = fleet.call("GET", "/v1/audit?limit=20")
    assert code == 200
    actions = [(a["action"], a["user"], a["target"]) for a in body["audit"]]
    assert ("carrier.stop", "token", "cmcc") in actions
    assert any(action == "carrier.start" and user != "token" for action, user, _ in actions)
    cli_audit = fleet.cli("audit", "--action", "carrier.stop")
    assert cli_audit.returncode == 0 and '"carrier.stop"' in cli_audit.stdout


def test_tps_changes_at_run_time_in_every_process(fleet: Fleet) -> None:
    """POST /v1/carriers/cmcc/tps sets the limit in each process; null goes back to the config."""
    code, body = fleet.call("POST", "/v1/carriers/cmcc/tps", {"tps": 50})
    assert code == 200, body
    wait_for(lambda: carrier_view(fleet)["tps_limit"] == 100, "50 per process")
    code, body = fleet.call("POST", "/v1/carriers/cmcc/tps", {"tps": "fast"})
    assert code == 400 and body["error"] == "bad_request"
    reset = fleet.cli("carriers", "tps", "cmcc", "default")
    assert reset.returncode == 0, reset.stderr
    wait_for(lambda: carrier_view(fleet)["tps_limit"] == 400, "the configured 200 per process")


def test_errors_are_json_everywhere(fleet: Fleet) -> None:
    """Unknown paths, unsupported methods, a wholly rejected batch, a bad token: JSON errors."""
    code, body = fleet.call("GET", "/nothing-here", token=None)
    assert code == 404 and body["error"] == "not_found"
    code, body = fleet.call("GET", "/console/no-such-file.js", token=None)
    assert code == 404 and body["error"] == "not_found"
    code, body = fleet.call("GET", "/", token=None)
    assert code == 200 and body["service"] == "gateway12123"
    code, body = fleet.call("DELETE", "/v1/notifications/x")
    assert code == 405 and body["error"] == "method_not_allowed"
    code, body = fleet.call("GET", "/v1/no-such-api")
    assert code == 404 and body["error"] == "not_found"
    code, body = fleet.call("POST", "/v1/notifications", [{"id": "typo-1", "type": "nope", "to": PHONE, "params": {}}])
    assert code == 422 and body["accepted"] == [] and "unknown type" in body["rejected"][0]["reason"]
    # The log names the rejected id and why; no line carries an object repr.
    wait_for(lambda: "notification typo-1 rejected (http): unknown type 'nope'" in fleet.first.log_text(),
             "the rejection logged")
    assert "object at 0x" not in fleet.first.log_text()
    code, body = fleet.call("GET", "/v1/carriers", token="wrong")
    assert code == 401 and body["error"] == "unauthorized"
    code, body = fleet.call("POST", "/v1/carriers/nope/stop")
    assert code == 404 and "nope" in body["message"]


def test_search_by_phone_shows_only_the_masked_number(fleet: Fleet) -> None:
    """However the number is typed, the answer carries 138****8000 and never the digits."""
    code, body = fleet.call("POST", "/v1/notifications", code_request(id="searched"))
    assert code == 202
    code, raw = _raw_get(fleet, "/v1/search?phone=%2B86%20138-0013-8000")
    assert code == 200
    assert PHONE not in raw
    results = json.loads(raw)["results"]
    assert "searched" in [r["id"] for r in results] and {r["to"] for r in results} == {"138****8000"}
    found = fleet.cli("search", "--phone", PHONE)
    assert found.returncode == 0 and "searched" in found.stdout and PHONE not in found.stdout
    assert fleet.cli("search", "--phone", "13900000000").returncode == 1


def test_cancel_batch_counts_first_and_cancels_only_waiting(fleet: Fleet) -> None:
    """With the carrier isolated a batch waits; the preview counts it, the confirmed
    cancel expires exactly those, and they are never sent after the carrier is back."""
    set_carrier(fleet, "isolate", "isolated")
    try:
        code, body = fleet.call("POST", "/v1/notifications", [code_request(to=f"1380013800{i}") for i in range(3)])
        assert code == 202, body
        batch = body["batch"]
        ids = [a["id"] for a in body["accepted"]]
        code, preview = fleet.call("POST", f"/v1/batches/{batch}/cancel", {})
        assert code == 200 and preview["waiting"] == 3 and "cancelled" not in preview
        assert all(state_of(fleet, i) == "queued" for i in ids)
        code, done = fleet.call("POST", f"/v1/batches/{batch}/cancel", {"confirm": True})
        assert code == 200 and done["cancelled"] == 3
        # By type and time range: only the two still waiting (the batch is expired now).
        now = time.time()
        fleet.call("POST", "/v1/notifications", [code_request(to=f"1390013900{i}") for i in range(2)])
        code, preview = fleet.call("POST", "/v1/cancel", {"type": "verification_code", "since": now - 60,
                                                          "until": now + 60})
        assert code == 200 and preview["waiting"] == 2, preview
        code, done = fleet.call("POST", "/v1/cancel", {"type": "verification_code", "since": now - 60,
                                                       "until": now + 60, "confirm": True})
        assert code == 200 and done["cancelled"] == 2
    finally:
        set_carrier(fleet, "start", "bound")
    time.sleep(1.0)
    for notification_id in ids:
        code, view = fleet.call("GET", f"/v1/notifications/{notification_id}")
        assert view["state"] == "expired" and view["reason"].startswith("cancelled by token")
    assert fleet.cli("batch", "cancel", "no-such-batch", "--yes").returncode == 1


def test_dead_letter_fixed_and_retried(fleet: Fleet) -> None:
    """A notification rejected for a missing parameter is listed by type, fixed and retried."""
    code, body = fleet.call("POST", "/v1/notifications",
                            {"id": "needs-fix", "type": "verification_code", "to": PHONE, "params": {"code": "1"}})
    assert code == 422, body
    code, body = fleet.call("GET", "/v1/dead-letters?type=verification_code&reason=minutes")
    assert code == 200 and "needs-fix" in [d["id"] for d in body["dead_letters"]]

    def dead_letters_gauge() -> float:
        text = fleet.first.get("/metrics")[1]
        match = re.search(r"^gateway12123_dead_letters (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    wait_for(lambda: dead_letters_gauge() >= 1, "the dead-letter gauge of /metrics counts it")
    code, body = fleet.call("POST", "/v1/dead-letters/needs-fix/retry", {"params": {"minutes": "5"}})
    assert code == 200 and body["results"][0]["retried"], body
    wait_for(lambda: state_of(fleet, "needs-fix") == "delivered", "the fixed notification delivered")
    code, body = fleet.call("POST", "/v1/dead-letters/retry", {"ids": ["no-such-id"]})
    assert code == 409 and body["results"][0]["error"] == "not found"


def test_cli_exit_codes_scripts_can_trust(fleet: Fleet) -> None:
    """Rejected enqueue 1, unknown retry 1, stray argument 2, unknown carrier 2."""
    rejected = fleet.cli("enqueue", "--type", "nope", "--to", PHONE)
    assert rejected.returncode == 1 and "unknown type" in rejected.stderr and not rejected.stdout.strip()
    assert fleet.cli("dead-letters", "retry", "no-such-id").returncode == 1
    stray = fleet.cli("dead-letters", "list", "extra-arg")
    assert stray.returncode == 2 and "takes no ids" in stray.stderr
    assert fleet.cli("carriers", "stop", "nope").returncode == 2
    assert fleet.cli("status", "no-such-id").returncode == 1
    queues = fleet.cli("queues", "--json")
    assert queues.returncode == 0 and "lanes" in json.loads(queues.stdout)


def _raw_get(fleet: Fleet, path: str, headers: dict[str, str] | None = None,
             token: str | None = "test-token") -> tuple[int, str]:
    request = urllib.request.Request(fleet.first.http_base + path)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def login(fleet: Fleet, user: str, password: str) -> tuple[int, Any, str]:
    request = urllib.request.Request(fleet.first.http_base + "/v1/session", method="POST",
                                     data=json.dumps({"user": user, "password": password}).encode())
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers.get("Set-Cookie", "")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), ""


def test_accounts_roles_csrf_and_lockout(fleet: Fleet) -> None:
    """CLI-made accounts log in; the cookie is HttpOnly and SameSite=Strict; actions need
    the CSRF token and the operator role; texts only for operators (audited); five wrong
    passwords lock the account."""
    for name, role in (("alice", "operator"), ("victor", "viewer"), ("mallory", "viewer")):
        made = fleet.cli("users", "add", name, "--role", role, "--password-stdin", input_text=f"{name}-secret-pw\n")
        assert made.returncode == 0, made.stderr
    assert fleet.cli("users", "add", "alice", "--role", "viewer", "--password-stdin",
                     input_text="another-password\n").returncode == 1
    code, body, cookie = login(fleet, "alice", "alice-secret-pw")
    assert code == 200 and body["role"] == "operator"
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    session = {"Cookie": cookie.split(";", 1)[0]}
    code, body = fleet.call("GET", "/v1/carriers", token=None, headers=session)
    assert code == 200 and "cmcc" in body["carriers"]
    code, body = fleet.call("POST", "/v1/carriers/cmcc/tps", {"tps": 150}, token=None, headers=session)
    assert code == 403 and body["error"] == "csrf"
    csrf = login(fleet, "alice", "alice-secret-pw")  # a second session, its own token
    code, body = fleet.call("POST", "/v1/carriers/cmcc/tps", {"tps": None}, token=None,
                            headers={"Cookie": csrf[2].split(";", 1)[0], "X-CSRF-Token": csrf[1]["csrf_token"]})
    assert code == 200, body

    fleet.call("POST", "/v1/notifications", code_request(id="readable"))
    code, viewer, viewer_cookie = login(fleet, "victor", "victor-secret-pw")
    viewer_session = {"Cookie": viewer_cookie.split(";", 1)[0], "X-CSRF-Token": viewer["csrf_token"]}
    code, body = fleet.call("POST", "/v1/carriers/cmcc/stop", token=None, headers=viewer_session)
    assert code == 403 and body["error"] == "forbidden"
    code, body = fleet.call("GET", "/v1/notifications/readable/text", token=None, headers=viewer_session)
    assert code == 403
    code, body = fleet.call("GET", "/v1/notifications/readable/text", token=None, headers=session)
    assert code == 200 and "123456" in body["text"]
    code, body = fleet.call("GET", "/v1/audit?action=notification.view_text")
    assert [(a["user"], a["target"]) for a in body["audit"]][:1] == [("alice", "readable")]

    for _ in range(5):
        assert login(fleet, "mallory", "wrong-password")[0] == 401
    code, body, _ = login(fleet, "mallory", "mallory-secret-pw")
    assert code == 423 and body["error"] == "locked"
    assert fleet.cli("users", "remove", "mallory").returncode == 0
    assert fleet.cli("users", "remove", "mallory").returncode == 1



def test_pausing_a_lane_or_a_type_holds_it_in_every_process(fleet: Fleet) -> None:
    """A paused high lane is not claimed by either process until resumed (then its
    notification is delivered); a paused type waits in scheduled; both are audited."""
    code, body = fleet.call("POST", "/v1/lanes/high/pause")
    assert code == 200 and body == {"lane": "high", "paused": True}
    code, body = fleet.call("POST", "/v1/types/inspection_due/pause")
    assert code == 200
    time.sleep(3)  # one report interval: every process has read the control
    try:
        code, _ = fleet.call("POST", "/v1/notifications", code_request(id="lane-paused"))
        assert code == 202
        time.sleep(2)
        assert state_of(fleet, "lane-paused") == "queued"
        assert fleet.call("GET", "/v1/queues")[1]["paused_lanes"] == ["high"]
        shown = fleet.cli("queues")
        assert shown.returncode == 0 and "PAUSED" in shown.stdout and "inspection_due" in shown.stdout
    finally:
        resumed = fleet.cli("queues", "resume", "--lane", "high")
        fleet.call("POST", "/v1/types/inspection_due/resume")
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: state_of(fleet, "lane-paused") == "delivered", "delivered after the resume")
    assert fleet.call("POST", "/v1/types/verification_code/pause")[0] == 200
    time.sleep(3)
    try:
        fleet.call("POST", "/v1/notifications", code_request(id="type-paused"))
        wait_for(lambda: state_of(fleet, "type-paused") == "scheduled", "held back in scheduled")
        time.sleep(1)
        assert state_of(fleet, "type-paused") == "scheduled"
    finally:
        fleet.call("POST", "/v1/types/verification_code/resume")
    assert fleet.call("POST", "/v1/lanes/nope/pause")[0] == 404
    actions = [a["action"] for a in fleet.call("GET", "/v1/audit?limit=10")[1]["audit"]]
    assert {"lane.pause", "lane.resume", "type.pause", "type.resume"} <= set(actions)


def test_a_lone_surrogate_in_a_body_or_a_query_is_a_400_not_a_500(fleet: Fleet) -> None:
    """JSON may escape half a surrogate pair; no Redis string or password hash takes one.
    Every route answered 500 (login, retries...), and a query name that is not UTF-8 too:
    now a 400 naming the problem, and the daemon logs no traceback for it."""
    def post_escaped(path: str, payload: Any, token: str | None) -> tuple[int, Any]:
        request = urllib.request.Request(fleet.first.http_base + path, method="POST",
                                         data=json.dumps(payload).encode())  # "\ud800" as an escape
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    code, body = post_escaped("/v1/session", {"user": "\ud800", "password": "x"}, None)
    assert code == 400 and "lone UTF-16 surrogate" in body["message"], body
    code, body = post_escaped("/v1/dead-letters/retry", {"ids": ["ok", {"nested": ["\udfff"]}]}, "test-token")
    assert code == 400 and body["error"] == "bad_request", body
    code, text = _raw_get(fleet, "/v1/search?%FF%FE=1&phone=13800138000")
    assert code == 200 and json.loads(text)["by"] == "phone", text
    assert "Traceback" not in fleet.first.log_text()
