"""The HTTP admin and intake API (twisted.web), 127.0.0.1:8123 by default.

GET /healthz   the process is up (always 200 while the reactor runs)
GET /readyz    200 when Redis answers and takes writes, submit outcomes are recorded, at least
               one carrier link is bound, and no carrier that carries traffic has been down
               longer than http.carrier_down_grace_seconds; else 503
GET /metrics   Prometheus text format
/v1/...        bearer token from the config; 401 without it, 413 for an oversized body,
               400 with a JSON error body for a bad request (the resource's own checks)

An oversized body is refused as soon as its Content-Length is known, before it is read.
At most ``http.max_connections`` connections are open at once: one more is answered 503
with Retry-After and closed, unread.  A connection with no request for
``http.idle_timeout_seconds`` is closed (twisted.web's own default is 12 hours).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gateway import metrics
from gateway.config import HttpConfig
from gateway.connections import ClosedAtOnce, RefusalLog
from gateway.http.json_resource import JsonNotFound, JsonResource


def json_response(request: Request, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")


class Healthz(JsonResource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return json_response(request, 200, {"status": "up"})


class Readyz(JsonResource):
    """Ready means: every check passes (Redis answers, a carrier link is bound, no carrier
    that should carry traffic is down beyond its grace; gateway/app.py builds them)."""

    isLeaf = True

    def __init__(self, checks: Callable[[], dict[str, bool]]) -> None:
        super().__init__()
        self._checks = checks

    def render_GET(self, request: Request) -> bytes:
        checks = self._checks()
        ready = all(checks.values())
        return json_response(request, 200 if ready else 503, {"ready": ready, "checks": checks})


class Metrics(JsonResource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(metrics.REGISTRY)


class BearerTokenGuard(Resource):
    """Wraps the /v1 tree: checks the bearer token and the body size, then delegates."""

    def __init__(self, wrapped: Resource, token: str, max_body_bytes: int) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._token = token.encode()
        self._max_body_bytes = max_body_bytes

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        header = request.getHeader(b"authorization") or b""
        scheme, _, presented = header.partition(b" ")
        if not self._token or scheme.lower() != b"bearer" or not hmac.compare_digest(presented.strip(), self._token):
            return _Refusal(401, "unauthorized", "a valid bearer token is required")
        if _body_length(request) > self._max_body_bytes:
            return _Refusal(413, "payload_too_large", f"body larger than {self._max_body_bytes} bytes")
        # Transparent once passed: the wrapped tree resolves the rest of /v1/...
        return self._wrapped.getChildWithDefault(path, request)


def _body_length(request: Request) -> int:
    content = request.content
    if content is None:
        return 0
    position = content.tell()
    content.seek(0, 2)
    size = content.tell()
    content.seek(position)
    return size


class _Refusal(Resource):
    isLeaf = True

    def __init__(self, code: int, error: str, message: str) -> None:
        super().__init__()
        self._code, self._error, self._message = code, error, message

    def render(self, request: Request) -> bytes:
        if self._code == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="gateway12123"')
        return json_response(request, self._code, {"error": self._error, "message": self._message})


class _SizeLimitedRequest(Request):
    """Refuses a body over the limit as soon as that is known, before reading the rest.

    With Content-Length that is at once; a chunked body (no length) is counted as it
    arrives and cut off when it passes the limit, so nobody can stream without bound.
    """

    max_body_bytes = 1_048_576
    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body_bytes:
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body_bytes:
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        self._refused = True
        body = json.dumps({"error": "payload_too_large",
                           "message": f"body larger than {self.max_body_bytes} bytes"}).encode()
        transport = self.channel.transport
        assert transport is not None  # a request being parsed has its connection
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n"
                        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        # Nothing more of this request is parsed or stored.
        transport.loseConnection()
        self.channel._dataBuffer = []


_BUSY_BODY = json.dumps({"error": "too_many_connections",
                         "message": "the server has too many connections; try again"}).encode()
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                  b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
                  + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


class CappedSite(Site):
    """A Site with at most ``max_connections`` connections open; see the module docstring.

    Each channel is wrapped in a ProtocolWrapper that tells the site when it is gone
    (registerProtocol / unregisterProtocol), whatever HTTP version it speaks.
    """

    def __init__(self, resource: Resource, *, max_connections: int, idle_timeout_seconds: float,
                 reactor: IReactorTime | None = None, **kwargs: Any) -> None:
        super().__init__(resource, timeout=idle_timeout_seconds, reactor=reactor, **kwargs)
        self.max_connections = max_connections
        self.open_connections = 0
        self._refusals = RefusalLog("HTTP", self.reactor)

    def buildProtocol(self, addr: Any) -> Protocol:  # type: ignore[override]
        if self.open_connections >= self.max_connections:
            self._refusals.refused("max_connections", f"{self.max_connections} open")
            return ClosedAtOnce(_BUSY_RESPONSE)
        channel = super().buildProtocol(addr)
        assert channel is not None
        return ProtocolWrapper(self, channel)  # type: ignore[arg-type]

    def registerProtocol(self, protocol: Protocol) -> None:
        self.open_connections += 1

    def unregisterProtocol(self, protocol: Protocol) -> None:
        self.open_connections -= 1


class _V1(JsonResource):
    """/v1: the notifications intake (bearer token, as before) and the operations API
    (bearer token or console session; gateway/http/api.py)."""

    def __init__(self, notifications: Resource | None, guard_token: str, max_body_bytes: int,
                 api: Resource | None) -> None:
        super().__init__()
        self._notifications = notifications
        self._token = guard_token
        self._max_body_bytes = max_body_bytes
        self._api = api

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:  # noqa: N802 - twisted API
        if _body_length(request) > self._max_body_bytes:
            return _Refusal(413, "payload_too_large", f"body larger than {self._max_body_bytes} bytes")
        # /v1/notifications and /v1/notifications/{id}: the intake API; deeper paths
        # (/v1/notifications/{id}/timeline, .../text) belong to the operations API.
        postpath = request.postpath or []
        if path == b"notifications" and len([p for p in postpath if p]) <= 1:
            inner = JsonResource()
            if self._notifications is not None:
                inner.putChild(b"notifications", self._notifications)
            return BearerTokenGuard(inner, self._token, self._max_body_bytes).getChildWithDefault(path, request)
        if self._api is None:
            return JsonNotFound()
        # The API is a leaf that routes on the whole path after /v1.
        postpath.insert(0, path)
        request.postpath = postpath
        if request.prepath:
            request.prepath.pop()
        return self._api


class _Root(JsonResource):
    """/: every unknown path is a JSON 404 (not Twisted's "No Such Resource" page)."""

    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: N802 - twisted API
        return self if path == b"" else super().getChild(path, request)

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 - twisted API
        return json_response(request, 200, {
            "service": "gateway12123",
            "endpoints": ["/healthz", "/readyz", "/metrics", "/v1/...", "/console/"],
        })


def build_site(config: HttpConfig, *, readiness: Callable[[], dict[str, bool]],
               v1: Resource | None, api: Resource | None = None, console: Resource | None = None,
               reactor: IReactorTime | None = None) -> Site:
    """The resource tree; `v1` holds /v1/notifications (None: 404), `api` the operations
    API (gateway/http/api.py), `console` the static console."""
    root = _Root()
    root.putChild(b"healthz", Healthz())
    root.putChild(b"readyz", Readyz(readiness))
    root.putChild(b"metrics", Metrics())
    notifications = v1.children.get(b"notifications") if v1 is not None else None
    # The guard stands even with push switched off: /v1 never answers without a token.
    root.putChild(b"v1", _V1(notifications, config.token.reveal(), config.max_body_bytes, api))
    if console is not None:
        root.putChild(b"console", console)

    request_factory = type("LimitedRequest", (_SizeLimitedRequest,), {"max_body_bytes": config.max_body_bytes})
    site = CappedSite(root, requestFactory=request_factory, max_connections=config.max_connections,
                      idle_timeout_seconds=config.idle_timeout_seconds, reactor=reactor)
    site.displayTracebacks = False
    site.noisy = False
    return site
