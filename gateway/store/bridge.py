"""Crossing between Twisted Deferreds and asyncio coroutines on the one event loop.

The daemon runs on Twisted's asyncio reactor, so redis-py's asyncio client shares the loop.
`Deferred.fromCoroutine` cannot drive a coroutine that awaits asyncio futures, hence
`ensure_future` first; and an asyncio coroutine awaits a Deferred through `asFuture`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


def as_deferred(coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Schedule an asyncio coroutine on the running loop; its result as a Deferred."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


async def wait_deferred(d: Deferred[T]) -> T:
    """Await a Deferred from inside an asyncio coroutine."""
    return await d.asFuture(asyncio.get_running_loop())
