"""state._gather: asyncio.gather, with a single awaitable awaited in place (no Task, no
extra loop turns), and the same answers and errors either way."""

from __future__ import annotations

import asyncio

import pytest

from gateway.push.state import _gather
from tests.aio import on_asyncio


async def _value(v: int) -> int:
    await asyncio.sleep(0)
    return v


async def _fails() -> int:
    await asyncio.sleep(0)
    raise ValueError("partition 3 refused")


@on_asyncio
async def test_one_awaitable_runs_in_the_callers_task() -> None:
    caller = asyncio.current_task()

    async def where() -> object:
        return asyncio.current_task()

    assert await _gather(where()) == [caller]
    # More than one: gather's own Tasks.
    tasks = await _gather(where(), where())
    assert caller not in tasks and len(set(map(id, tasks))) == 2


@pytest.mark.parametrize("count", [1, 3])
@on_asyncio
async def test_answers_and_errors_are_gathers(count: int) -> None:
    assert await _gather(*(_value(v) for v in range(count))) == list(range(count))
    with pytest.raises(ValueError, match="partition 3 refused"):
        await _gather(*([_fails()] + [_value(v) for v in range(count - 1)]))
    results = await _gather(*([_fails()] + [_value(v) for v in range(count - 1)]), return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1:] == list(range(count - 1))
