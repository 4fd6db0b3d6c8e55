"""The operations API under /v1 (JSON in, JSON out), used by the console and by scripts.

Authentication: ``Authorization: Bearer <http.token>`` (machines; acts as an operator
named ``token``) or the console's session cookie (``gw_session``, HttpOnly,
SameSite=Strict).  With the cookie, every request that changes something must carry
the session's CSRF token in ``X-CSRF-Token``.  Roles: ``viewer`` may read, ``operator``
may also act and read message texts.  Every action is audited (gateway/ops/actions.py).

Errors are JSON everywhere: ``{"error": "<code>", "message": "<what to do>"}`` with
400, 401, 403, 404, 405, 409, 413, 423 (account locked), 429, 503.  The routes are
listed in `ROUTES` and documented in docs/operations.md.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.ops import accounts, actions
from gateway.ops.actions import ActionError, Actor
from gateway.ops.fleet import read_charts, read_fleet, read_queues
from gateway.store.bridge import as_deferred
from gateway.store.keys import Keys

__all__ = ["SESSION_COOKIE", "ApiContext", "OperationsApi", "json_error"]

log = Logger()

SESSION_COOKIE = b"gw_session"


def json_error(request: Request, code: int, error: str, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps({"error": error, "message": message}, ensure_ascii=False, allow_nan=False).encode("utf-8")


@dataclass
class ApiContext:
    """What the API needs from the running gateway (no reference to the service tree)."""

    redis: Callable[[], Any]  # the redis.asyncio client, or None while Redis is not up
    keys: Keys
    token: str  # http.token ('' = no bearer access)
    carriers: Callable[[], Mapping[str, Any]]  # name -> CarrierConfig (configured, enabled)
    quiet_until: Callable[[float], float]  # end of the current quiet window, or 0
    clock: Any
    status_ttl_seconds: float = 10.0
    timezone: str = "Asia/Shanghai"  # the console shows times in it (quiet hours are local)


Handler = Callable[["_Call"], Awaitable[tuple[int, Any]]]


@dataclass
class _Call:
    request: Request
    actor: Actor
    params: dict[str, str]  # path parameters
    query: dict[str, str]
    body: dict[str, Any]
    redis: Any
    context: ApiContext
    session: accounts.Session | None


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    role: str  # "" (anyone, even anonymous), "viewer", "operator"
    action: bool  # changes something: CSRF checked for cookie sessions


ROUTES: list[_Route] = []


def route(method: str, path: str, *, role: str = "viewer") -> Callable[[Handler], Handler]:
    regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")

    def register(handler: Handler) -> Handler:
        ROUTES.append(_Route(method, regex, handler, role, method not in ("GET", "HEAD")))
        return handler

    return register


def _client_address(request: Request) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", "") or peer)


def _float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ActionError(400, "bad_request", f"{name} must be a number") from None


class OperationsApi(Resource):
    """A leaf resource that routes /v1/<path> to the handlers below."""

    isLeaf = True

    def __init__(self, context: ApiContext, prefix: tuple[bytes, ...] = ()) -> None:
        super().__init__()
        self.context = context
        self.prefix = prefix

    def render(self, request: Request) -> bytes | int:
        segments = [*self.prefix, *(request.postpath or [])]
        path = "/" + "/".join(s.decode("utf-8", "replace") for s in segments).strip("/")
        method = request.method.decode("ascii", "replace")
        match_any = False
        for candidate in ROUTES:
            found = candidate.pattern.match(path)
            if not found:
                continue
            match_any = True
            if candidate.method == method or (method == "HEAD" and candidate.method == "GET"):
                d = as_deferred(self._serve(request, candidate, found.groupdict()))
                d.addErrback(self._internal_error, request)
                return NOT_DONE_YET
        if match_any:
            return json_error(request, 405, "method_not_allowed", f"{method} is not allowed on {path}")
        return json_error(request, 404, "not_found", f"no API route {path}")

    def _internal_error(self, failure: Failure, request: Request) -> None:
        if failure.check(RedisError, OSError):
            body = json_error(request, 503, "unavailable", "storage unavailable; try again")
        else:
            log.failure("operations API request failed", failure)
            body = json_error(request, 500, "internal", "internal error")
        _finish(request, body)

    async def _serve(self, request: Request, candidate: _Route, params: dict[str, str]) -> None:
        redis = self.context.redis()
        if redis is None:
            _finish(request, json_error(request, 503, "unavailable", "storage not started yet"))
            return
        actor, session, refusal = await self._authenticate(request, redis, candidate)
        if refusal is not None:
            _finish(request, refusal)
            return
        assert actor is not None
        query = {k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace") for k, v in (request.args or {}).items()}
        body: dict[str, Any] = {}
        if candidate.method in ("POST", "PUT", "DELETE") and request.content is not None:
            raw = request.content.read()
            if raw.strip():
                try:
                    parsed = json.loads(raw)
                except (ValueError, RecursionError):
                    _finish(request, json_error(request, 400, "bad_request", "body is not JSON"))
                    return
                if not isinstance(parsed, dict):
                    _finish(request, json_error(request, 400, "bad_request", "body must be a JSON object"))
                    return
                if _holds_lone_surrogate(parsed):
                    # JSON may escape half a surrogate pair ("\\ud800"); no Redis string or
                    # password hash takes it (every handler failed with a 500)
                    _finish(request, json_error(request, 400, "bad_request",
                                                "body holds a lone UTF-16 surrogate (\\ud800-\\udfff), not text"))
                    return
                body = parsed
        call = _Call(request, actor, params, query, body, redis, self.context, session)
        try:
            code, answer = await candidate.handler(call)
        except ActionError as e:
            _finish(request, json_error(request, e.code, e.error, e.message))
            return
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        _finish(request, json.dumps(answer, ensure_ascii=False, allow_nan=False).encode("utf-8"))

    async def _authenticate(self, request: Request, redis: Any,
                            candidate: _Route) -> tuple[Actor | None, accounts.Session | None, bytes | None]:
        origin = _client_address(request)
        if not candidate.role:
            return Actor("anonymous", "", origin), None, None
        header = request.getHeader(b"authorization") or b""
        scheme, _, presented = header.partition(b" ")
        if scheme.lower() == b"bearer":
            token = self.context.token.encode()
            if token and hmac.compare_digest(presented.strip(), token):
                return Actor("token", "operator", origin), None, None
            return None, None, _unauthorized(request, "a valid bearer token is required")
        cookie = (request.getCookie(SESSION_COOKIE) or b"").decode("ascii", "replace")
        session = await accounts.find_session(redis, self.context.keys, cookie) if cookie else None
        if session is None:
            return None, None, _unauthorized(request, "log in (POST /v1/session) or send a bearer token")
        if candidate.action:
            presented_csrf = (request.getHeader(b"x-csrf-token") or b"").decode("ascii", "replace")
            if not hmac.compare_digest(presented_csrf, session.csrf_token):
                return None, None, json_error(request, 403, "csrf", "missing or wrong X-CSRF-Token")
        if candidate.role == "operator" and session.role != "operator":
            return None, None, json_error(request, 403, "forbidden", "this needs the operator role")
        return Actor(session.user, session.role, origin), session, None


def _unauthorized(request: Request, message: str) -> bytes:
    request.setHeader(b"www-authenticate", b'Bearer realm="gateway12123"')
    return json_error(request, 401, "unauthorized", message)


def _finish(request: Request, body: bytes) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.write(body)
    request.finish()


# -- session ------------------------------------------------------------------------------


def _holds_lone_surrogate(value: Any) -> bool:
    """Whether any key or string in a parsed JSON body holds a lone surrogate."""
    pending = [value]
    while pending:  # a loop, not recursion: json.loads already bounded the depth
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and any("\ud800" <= char <= "\udfff" for char in item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


@route("POST", "/session", role="")
async def login(call: _Call) -> tuple[int, Any]:
    user, password = call.body.get("user"), call.body.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        raise ActionError(400, "bad_request", "give user and password")
    keys = call.context.keys
    try:
        session = await accounts.check_login(call.redis, keys, user, password)
    except accounts.LoginRefused as e:
        await actions.audit(call.redis, keys, Actor(user[:64], "", call.actor.origin),
                            "login.locked" if e.locked else "login.failed")
        raise ActionError(423 if e.locked else 401, "locked" if e.locked else "unauthorized", str(e)) from None
    secure = call.request.isSecure()
    call.request.addCookie(SESSION_COOKIE, session.cookie.encode(), path=b"/", httpOnly=True, secure=secure,
                           sameSite="strict", max_age=str(accounts.SESSION_SECONDS).encode())
    await actions.audit(call.redis, keys, Actor(session.user, session.role, call.actor.origin), "login")
    return 200, {"user": session.user, "role": session.role, "csrf_token": session.csrf_token}


@route("GET", "/session")
async def whoami(call: _Call) -> tuple[int, Any]:
    session = call.session
    if session is None:
        return 200, {"user": call.actor.user, "role": call.actor.role, "csrf_token": None}
    return 200, {"user": session.user, "role": session.role, "csrf_token": session.csrf_token}


@route("DELETE", "/session")
async def logout(call: _Call) -> tuple[int, Any]:
    cookie = (call.request.getCookie(SESSION_COOKIE) or b"").decode("ascii", "replace")
    if cookie:
        await accounts.end_session(call.redis, call.context.keys, cookie)
    call.request.addCookie(SESSION_COOKIE, b"", path=b"/", httpOnly=True, sameSite="strict", max_age=b"0")
    await actions.audit(call.redis, call.context.keys, call.actor, "logout")
    return 200, {"logged_out": True}


# -- status -------------------------------------------------------------------------------


async def _fleet(call: _Call) -> dict[str, Any]:
    now = call.context.clock.seconds()
    return await read_fleet(call.redis, call.context.keys, now=now, quiet_until=call.context.quiet_until(now),
                            configured_carriers=call.context.carriers(),
                            ttl_seconds=call.context.status_ttl_seconds)


@route("GET", "/overview")
async def overview(call: _Call) -> tuple[int, Any]:
    fleet = await _fleet(call)
    fleet["charts"] = await read_charts(call.redis, call.context.keys, now=fleet["now"])
    fleet["timezone"] = call.context.timezone
    return 200, fleet


@route("GET", "/carriers")
async def carriers(call: _Call) -> tuple[int, Any]:
    fleet = await _fleet(call)
    return 200, {"carriers": fleet["carriers"], "processes": fleet["processes"]}


@route("GET", "/queues")
async def queues(call: _Call) -> tuple[int, Any]:
    now = call.context.clock.seconds()
    queues = await read_queues(call.redis, call.context.keys, now=now, quiet_until=call.context.quiet_until(now))
    paused = await actions.paused(call.redis, call.context.keys)
    queues["paused_lanes"], queues["paused_types"] = paused["lanes"], paused["types"]
    return 200, queues


@route("GET", "/charts")
async def charts(call: _Call) -> tuple[int, Any]:
    return 200, await read_charts(call.redis, call.context.keys, now=call.context.clock.seconds())


# -- carrier control ----------------------------------------------------------------------


def _carrier_action(state: str) -> Handler:
    async def handler(call: _Call) -> tuple[int, Any]:
        return 200, await actions.set_carrier(call.redis, call.context.keys, call.actor, call.params["name"], state,
                                              known=call.context.carriers())

    return handler


route("POST", "/carriers/{name}/stop", role="operator")(_carrier_action("stopped"))
route("POST", "/carriers/{name}/start", role="operator")(_carrier_action("running"))
route("POST", "/carriers/{name}/isolate", role="operator")(_carrier_action("isolated"))


@route("POST", "/carriers/{name}/tps", role="operator")
async def carrier_tps(call: _Call) -> tuple[int, Any]:
    if "tps" not in call.body:
        raise ActionError(400, "bad_request", 'give {"tps": N}, or {"tps": null} for the configured value')
    tps = call.body["tps"]
    value = None if tps is None else _float(tps, "tps")
    return 200, await actions.set_carrier_tps(call.redis, call.context.keys, call.actor, call.params["name"], value,
                                              known=call.context.carriers())


# -- lanes and types ----------------------------------------------------------------------


def _pause_action(kind: str, pause: bool) -> Handler:
    async def handler(call: _Call) -> tuple[int, Any]:
        return 200, await actions.set_paused(call.redis, call.context.keys, call.actor, kind, call.params["name"],
                                             pause)

    return handler


for _kind, _plural in (("lane", "lanes"), ("type", "types")):
    route("POST", f"/{_plural}/{{name}}/pause", role="operator")(_pause_action(_kind, True))
    route("POST", f"/{_plural}/{{name}}/resume", role="operator")(_pause_action(_kind, False))


# -- search and notifications -------------------------------------------------------------


@route("GET", "/search")
async def search(call: _Call) -> tuple[int, Any]:
    q = call.query
    limit = int(_float(q.get("limit", 100), "limit"))
    return 200, await actions.search(call.redis, call.context.keys, notification_id=q.get("id", ""),
                                     batch=q.get("batch", ""), phone=q.get("phone", ""), limit=limit)


@route("GET", "/notifications/{id}/timeline")
async def notification_timeline(call: _Call) -> tuple[int, Any]:
    return 200, await actions.timeline(call.redis, call.context.keys, call.params["id"])


@route("GET", "/notifications/{id}/text", role="operator")
async def notification_text(call: _Call) -> tuple[int, Any]:
    return 200, await actions.notification_text(call.redis, call.context.keys, call.actor, call.params["id"])


# -- dead letters -------------------------------------------------------------------------


@route("GET", "/dead-letters")
async def dead_letters(call: _Call) -> tuple[int, Any]:
    q = call.query
    rows = await actions.dead_letters(
        call.redis, call.context.keys, type=q.get("type", ""), carrier=q.get("carrier", ""),
        reason=q.get("reason", ""), since=_float(q["since"], "since") if q.get("since") else None,
        until=_float(q["until"], "until") if q.get("until") else None,
        limit=int(_float(q.get("limit", 100), "limit")))
    return 200, {"dead_letters": rows}


@route("POST", "/dead-letters/retry", role="operator")
async def dead_letters_retry(call: _Call) -> tuple[int, Any]:
    ids = call.body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ActionError(400, "bad_request", 'give {"ids": ["...", ...]}')
    results = await actions.retry_dead_letter_with(call.redis, call.context.keys, call.actor, ids)
    return (200 if all(r.get("retried") for r in results) else 409), {"results": results}


@route("POST", "/dead-letters/{id}/retry", role="operator")
async def dead_letter_fix(call: _Call) -> tuple[int, Any]:
    params = call.body.get("params")
    if params is not None and not isinstance(params, dict):
        raise ActionError(400, "bad_request", '"params" must be an object')
    results = await actions.retry_dead_letter_with(call.redis, call.context.keys, call.actor, [call.params["id"]],
                                                   params)
    ok = results and results[0].get("retried")
    return (200 if ok else 409 if results[0].get("state") else 404), {"results": results}


# -- cancelling ---------------------------------------------------------------------------


@route("POST", "/batches/{id}/cancel", role="operator")
async def batch_cancel(call: _Call) -> tuple[int, Any]:
    confirm = call.body.get("confirm") is True
    return 200, await actions.cancel_batch(call.redis, call.context.keys, call.actor, call.params["id"],
                                           confirm=confirm)


@route("POST", "/cancel", role="operator")
async def cancel_by_type(call: _Call) -> tuple[int, Any]:
    body = call.body
    if not isinstance(body.get("type"), str):
        raise ActionError(400, "bad_request", 'give "type", "since" and "until" (Unix seconds)')
    return 200, await actions.cancel_by_type(call.redis, call.context.keys, call.actor, body["type"],
                                             _float(body.get("since"), "since"), _float(body.get("until"), "until"),
                                             confirm=body.get("confirm") is True)


# -- audit --------------------------------------------------------------------------------


@route("GET", "/audit")
async def audit_log(call: _Call) -> tuple[int, Any]:
    q = call.query
    return 200, {"audit": await actions.read_audit(call.redis, call.context.keys,
                                                   limit=int(_float(q.get("limit", 100), "limit")),
                                                   action=q.get("action", ""), user=q.get("user", ""))}

