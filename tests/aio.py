"""asyncio inside the tests: the daemon runs on Twisted's asyncio reactor, so do the tests.

`on_asyncio` runs an `async def` test body as an asyncio task on the reactor's loop:
pytest-twisted drives the test as a Deferred, and `as_deferred` lets the body await
redis-py's asyncio client (and, through `wait_deferred`, Twisted Deferreds), which a bare
`Deferred.fromCoroutine` cannot drive.  `redis_client` is a client for one test.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest_twisted
from redis.asyncio import Redis

from gateway.store.bridge import as_deferred

__all__ = ["on_asyncio", "redis_client"]


def on_asyncio(test: Callable[..., Awaitable[None]]) -> Callable[..., Any]:
    """Decorate an `async def` test whose body awaits asyncio things (fixtures still work)."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        await as_deferred(test(*args, **kwargs))  # type: ignore[arg-type]

    return pytest_twisted.ensureDeferred(run)  # type: ignore[no-any-return]


@asynccontextmanager
async def redis_client(url: str, *, decode_responses: bool = True) -> AsyncIterator[Redis]:
    """A redis.asyncio client for one test, closed at the end."""
    client = Redis.from_url(url, decode_responses=decode_responses)
    try:
        yield client
    finally:
        await client.aclose()
