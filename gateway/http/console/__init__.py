"""The operators' console: static files shipped in the package (no CDN, works offline).

The page (index.html, console.js, console.css) reads the same JSON API scripts use
(gateway/http/api.py); it holds no logic the API does not check again.
"""

from __future__ import annotations

from pathlib import Path

from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import File

from gateway.http.json_resource import JsonNotFound

__all__ = ["CONSOLE_DIR", "console_resource"]

CONSOLE_DIR = Path(__file__).parent

# Only our own files, no inline script, no framing: the page cannot be made to run
# someone else's code or be clickjacked into an action.
_SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                b"form-action 'self'; base-uri 'none'",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-cache",
}


class _ConsoleFiles(File):
    childNotFound = JsonNotFound()  # type: ignore[assignment]  # JSON 404 for a missing file, not HTML

    def render_GET(self, request: Request) -> bytes | int:  # noqa: N802 - twisted API
        for name, value in _SECURITY_HEADERS.items():
            request.setHeader(name, value)
        return super().render_GET(request)

    def directoryListing(self) -> Resource:  # noqa: N802 - twisted API
        return JsonNotFound()

    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: N802 - twisted API
        if path.endswith(b".py") or path.startswith(b"__"):
            return JsonNotFound()
        return super().getChild(path, request)


def console_resource() -> Resource:
    files = _ConsoleFiles(str(CONSOLE_DIR), defaultType="text/plain")
    files.indexNames = ["index.html"]
    files.contentTypes = {**files.contentTypes, ".js": "text/javascript; charset=utf-8",
                          ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8",
                          ".png": "image/png"}
    return files
