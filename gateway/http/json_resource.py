"""A twisted.web Resource whose refusals are JSON, never Twisted's HTML pages.

Twisted answers an unsupported method with an HTML "405 Method Not Allowed" (or "501
Huh?" for a method it does not know at all) and an unknown child with "No Such
Resource"; an API answers JSON: ``{"error": ..., "message": ...}``.
"""

from __future__ import annotations

import json

from twisted.web.error import UnsupportedMethod
from twisted.web.resource import Resource
from twisted.web.server import Request

__all__ = ["JsonNotFound", "JsonResource", "json_refusal"]


def json_refusal(request: Request, code: int, error: str, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return json.dumps({"error": error, "message": message}, ensure_ascii=False, allow_nan=False).encode("utf-8")


class JsonResource(Resource):
    """Unsupported methods get a JSON 405 with an Allow header; unknown children a JSON 404."""

    def render(self, request: Request) -> bytes | int:
        try:
            return super().render(request)
        except UnsupportedMethod as e:
            methods: list[object] = list(e.allowedMethods)
            allowed = sorted({m.decode() if isinstance(m, bytes) else str(m) for m in methods})
            request.setHeader(b"allow", ", ".join(allowed).encode())
            method = request.method.decode("ascii", "replace")
            return json_refusal(request, 405, "method_not_allowed",
                                f"{method} is not allowed here (allowed: {', '.join(allowed)})")

    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: N802 - twisted API
        return JsonNotFound()


class JsonNotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        path = request.path.decode("utf-8", "replace")
        return json_refusal(request, 404, "not_found", f"nothing at {path}")
