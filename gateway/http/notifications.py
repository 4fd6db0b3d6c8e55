"""POST /v1/notifications and GET /v1/notifications/{id} (twisted.web).

The server (gateway/http/server.py) checks the bearer token (401) and the body size
(413) before these resources run.

POST body: one request object or a list of them, each with the intake stream's fields
(``id``, ``type``, ``to``, ``params`` as a JSON object, optional ``priority``,
``expires_at``, ``channel``).  A body that is not JSON, not an object or list of
objects, empty, or longer than ``max_batch`` items is a bad request: 400 with
``{"error": "bad_request", "message": ...}`` and nothing recorded.  Otherwise the answer
is 202 (422 when every item was rejected) with what happened to each item, in order,
and the batch the POST made (items without their own ``batch`` field join it)::

    {"accepted": [{"id": "a1", "state": "queued"},
                  {"id": "a2", "state": "queued", "duplicate": true}],
     "rejected": [{"id": "a3", "reason": "missing parameter 'plate'"}]}

Rejected items are recorded too (state rejected; GET shows them).  Redis unreachable or
refusing writes (OOM, READONLY, MISCONF...): 503 with ``Retry-After: 5``; the caller
retries with the same ids (acceptance is idempotent).

GET answers the notification's state as JSON with the recipient masked (200), or 404.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.http.json_resource import JsonResource
from gateway.push.intake import Intake, IntakeRequest
from gateway.push.state import AcceptOutcome, NotificationLedger
from gateway.store.bridge import as_deferred
from gateway.store.refusals import RefusalLog, SystemClock, is_unavailable

__all__ = ["NotificationStatusResource", "NotificationsResource"]

log = Logger()
# Shared by POST and GET: one line per 5 s while Redis is away or refuses writes.
_unavailable_log = RefusalLog("/v1/notifications", SystemClock(), log)


class _NotStrictJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN, Infinity and -Infinity, which RFC 8259 does not allow and
    # which no client could read back (issue 12: GET then answered invalid JSON).
    raise _NotStrictJson(f"body is not strict JSON: {name} is not a number (RFC 8259)")


def _write_json(request: Request, code: int, body: Any) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.write(json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    request.finish()


def _bad_request(request: Request, message: str) -> bytes:
    request.setResponseCode(400)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return json.dumps({"error": "bad_request", "message": message}, ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


# Seconds a client is asked to wait (Retry-After) while Redis is away or refuses writes:
# the gateway's own writers try again every 5 s at most (OutcomeWriter backoff), and the
# health probe that turns /readyz back to ready runs each second.
RETRY_AFTER_SECONDS = 5


def _failed(request: Request, failure: Failure, what: str) -> None:
    error = failure.value
    if error is not None and is_unavailable(error):
        _unavailable_log.failed(error, 1)
        if not (request.finished or getattr(request, "_disconnected", False)):
            request.setHeader(b"retry-after", str(RETRY_AFTER_SECONDS).encode())
        _write_json(request, 503, {"error": "unavailable",
                                   "message": "storage unavailable or refusing writes; retry with the same ids",
                                   "retry_after_seconds": RETRY_AFTER_SECONDS})
    else:
        log.failure("{what} failed", failure, what=what)
        _write_json(request, 500, {"error": "internal", "message": "internal error"})


class NotificationsResource(JsonResource):
    """/v1/notifications: POST accepts; /v1/notifications/{id}: GET reads."""

    def __init__(self, intake: Intake, ledger: NotificationLedger, *, max_batch: int = 1000) -> None:
        super().__init__()
        self.intake = intake
        self.ledger = ledger
        self.max_batch = max_batch

    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: N802 - twisted API
        if path == b"":
            return self
        return NotificationStatusResource(self.ledger, path.decode("utf-8", "replace"))

    def render_POST(self, request: Request) -> bytes | int:  # noqa: N802 - twisted API
        content = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(content, parse_constant=_refuse_constant)
        except _NotStrictJson as e:
            return _bad_request(request, str(e))
        except (ValueError, RecursionError):  # RecursionError: e.g. a body of 50,000 "["
            return _bad_request(request, "body is not JSON")
        items = body if isinstance(body, list) else [body]
        if not items:
            return _bad_request(request, "empty list")
        if len(items) > self.max_batch:
            return _bad_request(request, f"more than {self.max_batch} notifications in one request")
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                return _bad_request(request, f"item {index} is not a JSON object")
        # Every POST is a batch operators can find and cancel (gateway/ops/actions.py);
        # an item's own "batch" field wins.
        batch = f"http-{uuid.uuid4().hex[:12]}"
        requests = [IntakeRequest(fields=item if item.get("batch") else {**item, "batch": batch}, source="http")
                    for item in items]
        d = as_deferred(self.intake.accept_many(requests))

        def answer(outcomes: list[AcceptOutcome]) -> None:
            body = _answer(outcomes)
            body["batch"] = batch  # type: ignore[assignment]
            # Nothing accepted: 422, so a caller that only reads the status sees the refusal.
            _write_json(request, 422 if body["rejected"] and not body["accepted"] else 202, body)

        d.addCallbacks(answer, lambda failure: _failed(request, failure, "POST /v1/notifications"))
        return NOT_DONE_YET


def _answer(outcomes: list[AcceptOutcome]) -> dict[str, list[dict[str, Any]]]:
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.state == "rejected":
            rejected.append({"id": outcome.id, "reason": outcome.reason})
            continue
        row: dict[str, Any] = {"id": outcome.id, "state": outcome.state}
        if outcome.duplicate:
            row["duplicate"] = True
        accepted.append(row)
    return {"accepted": accepted, "rejected": rejected}


class NotificationStatusResource(JsonResource):
    isLeaf = True

    def __init__(self, ledger: NotificationLedger, notification_id: str) -> None:
        super().__init__()
        self.ledger = ledger
        self.notification_id = notification_id

    def render_GET(self, request: Request) -> int:  # noqa: N802 - twisted API
        d = as_deferred(self.ledger.get(self.notification_id))

        def answer(view: dict[str, Any] | None) -> None:
            if view is None:
                _write_json(request, 404, {"error": "not_found", "message": "no such notification"})
            else:
                _write_json(request, 200, view)

        d.addCallbacks(answer, lambda failure: _failed(request, failure, "GET /v1/notifications/{id}"))
        return NOT_DONE_YET
