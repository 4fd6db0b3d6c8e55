"""Tests of gateway/ivr.

`on_asyncio` runs an `async def` test body as an asyncio task on the reactor's loop, so
it can await redis-py's asyncio client and (through `wait_deferred`) Twisted Deferreds.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest_twisted

from gateway.store.bridge import as_deferred


def on_asyncio(test: Callable[..., Awaitable[None]]) -> Callable[..., Any]:
    """Decorate an `async def` test whose body awaits asyncio things (fixtures still work)."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        await as_deferred(test(*args, **kwargs))  # type: ignore[arg-type]

    return pytest_twisted.ensureDeferred(run)
