"""Runs each ledger script and its step (gateway/push/steps/) side by side, and says where
they differ.

Before each call, the twin redis-server is made a copy of the ledger's (DUMP and RESTORE
of every key).  The script then runs on the ledger's server, the step on the twin, and
the two servers are compared key by key: type, value, TTL (within 2 s), streams by their
entries' fields (an XADD's id is the server's clock) and groups.  So each call is checked
from the same starting point, whatever else the test writes, and the pipeline under test
runs on what the scripts wrote.

tests/push/harness.py installs twins when GATEWAY_TEST_STEPS_TWIN names the twin's URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import traceback
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.push.steps.driver import StepScript

SCRIPTS = {"_accept": "accept.lua", "_claim": "claim.lua", "_outcomes": "outcomes.lua", "_promote": "promote.lua",
           "_recover": "recover.lua", "_receipts_overdue": "receipts_overdue.lua",
           "_transition": "transition.lua", "_change_if": "change_if.lua"}
TTL_SLACK_SECONDS = 2
# Every twin of the process takes turns: a test may run several pipelines (processes of a
# fleet) on one server, and each call is copied and compared alone.
ONE_AT_A_TIME = asyncio.Lock()


async def _per_key(redis: Redis, *commands: str) -> tuple[list[str], list[Any]]:
    """Every key, and the replies of `commands` asked of each (two per key for two)."""
    keys = [key async for key in redis.scan_iter(count=1000)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            for command in commands:
                if command == "DUMP":
                    pipe.dump(key)  # bytes, never decoded as text
                else:
                    pipe.execute_command(command, key)
        return keys, list(await pipe.execute())


async def copy_all(source: Redis, target: Redis) -> None:
    await target.flushall()
    keys, replies = await _per_key(source, "DUMP", "PTTL")
    if not keys:
        return
    async with target.pipeline(transaction=False) as pipe:
        for k, key in enumerate(keys):
            dumped, pttl = replies[2 * k], replies[2 * k + 1]
            if dumped is not None:
                pipe.restore(key, max(0, pttl), dumped, replace=True)
        await pipe.execute()


async def snapshot(redis: Redis) -> dict[str, Any]:
    """Every key's type, value and expiry (EXPIRETIME: when, not how long from now, so
    that two servers read one after the other compare), in comparable form."""
    keys, kinds_and_expiry = await _per_key(redis, "TYPE", "EXPIRETIME")
    async with redis.pipeline(transaction=False) as pipe:
        for k, key in enumerate(keys):
            kind = kinds_and_expiry[2 * k]
            if kind == "hash":
                pipe.hgetall(key)
            elif kind == "string":
                pipe.get(key)
            elif kind == "list":
                pipe.lrange(key, 0, -1)
            elif kind == "set":
                pipe.smembers(key)
            elif kind == "zset":
                pipe.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                pipe.xrange(key)
                pipe.xinfo_groups(key)
            else:
                pipe.type(key)
        values = iter(await pipe.execute())
    out: dict[str, Any] = {}
    for k, key in enumerate(keys):
        kind, expiry = kinds_and_expiry[2 * k], kinds_and_expiry[2 * k + 1]
        value = next(values)
        if kind == "set":
            value = sorted(value)
        elif kind == "stream":
            groups = [(g["name"], g["pending"], g["last-delivered-id"]) for g in next(values)]
            value = ([fields for _, fields in value], groups)
        out[key] = (kind, value, expiry)
    return out


def differences(lua: dict[str, Any], step: dict[str, Any]) -> list[str]:
    found = []
    for key in sorted(set(lua) | set(step)):
        if key not in step:
            found.append(f"{key}: only the script left it: {lua[key][:2]}")
        elif key not in lua:
            found.append(f"{key}: only the step left it: {step[key][:2]}")
        else:
            (lkind, lvalue, lttl), (skind, svalue, sttl) = lua[key], step[key]
            if (lkind, lvalue) != (skind, svalue):
                found.append(f"{key}: script {lkind} {lvalue!r} != step {skind} {svalue!r}")
            elif (lttl < 0 or sttl < 0) and lttl != sttl or abs(lttl - sttl) > TTL_SLACK_SECONDS:
                found.append(f"{key}: expires at {lttl} after the script, at {sttl} after the step")
    return found


def comparable_reply(reply: Any) -> Any:
    """A ledger script's reply with its counts as a dict (Lua's pairs() has no order)."""
    if isinstance(reply, list) and len(reply) == 3 and isinstance(reply[1], list):
        counts = reply[1]
        return [reply[0], dict(zip(counts[::2], counts[1::2], strict=True)), reply[2]]
    return reply


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return " < ".join(f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" for frame in reversed(frames[-3:]))


def _short(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class Twin:
    """Stands in for one registered script: runs the script and the step, compares."""

    def __init__(self, name: str, script: Any, redis: Redis, twin: Redis, mismatches: list[str],
                 one_at_a_time: asyncio.Lock) -> None:
        self.name, self.script, self.redis, self.twin = name, script, redis, twin
        self.one_at_a_time = one_at_a_time
        self.step = StepScript(twin, name)
        self.mismatches = mismatches
        self.calls = 0

    async def __call__(self, keys: list[str], args: list[str]) -> Any:
        # the ledger runs partitions' scripts concurrently: one copy and compare at a time
        async with self.one_at_a_time:
            return await self._compared(keys, args)

    async def _compared(self, keys: list[str], args: list[str]) -> Any:
        self.calls += 1
        await copy_all(self.redis, self.twin)
        results: list[Any] = []
        for run in (lambda: self.script(keys=keys, args=args), lambda: self.step(keys=keys, args=args)):
            try:
                results.append(("reply", await run()))
            except (ResponseError, Exception) as error:  # the step's error is a StepError
                results.append(("error", f"{error!r} at {_where(error)}"))
        (lua_kind, lua_reply), (step_kind, step_reply) = results
        where = f"{self.name} call {self.calls}"
        if lua_kind != step_kind:
            self.mismatches.append(f"{where}: step {step_kind} {_short(repr(step_reply))}, "
                                   f"script {lua_kind} {lua_reply!r}")
        elif lua_kind == "reply" and comparable_reply(lua_reply) != comparable_reply(step_reply):
            self.mismatches.append(f"{where}: replies differ: script {lua_reply!r}, step {step_reply!r}")
        for difference in differences(await snapshot(self.redis), await snapshot(self.twin)):
            self.mismatches.append(f"{where}: {difference}")
        if lua_kind == "error":
            await self.script(keys=keys, args=args)  # raises the script's error again
        return lua_reply


class Twins:
    """Twins for every ledger script of `ledger`."""

    def __init__(self, ledger: Any, twin_url: str) -> None:
        self.twin = Redis.from_url(twin_url, decode_responses=True)
        self.mismatches: list[str] = []
        self.twins = []
        for attribute, name in SCRIPTS.items():
            twin = Twin(name, getattr(ledger, attribute), ledger.redis, self.twin, self.mismatches, ONE_AT_A_TIME)
            setattr(ledger, attribute, twin)
            self.twins.append(twin)

    async def close(self) -> None:
        """Raises with the differences found; appends the calls compared to the file
        GATEWAY_TEST_STEPS_TWIN_CALLS names (tests/push/test_steps.py counts them)."""
        await self.twin.aclose()
        calls_file = os.environ.get("GATEWAY_TEST_STEPS_TWIN_CALLS")
        if calls_file:
            with open(calls_file, "a", encoding="utf-8") as out:
                out.write(json.dumps({twin.name: twin.calls for twin in self.twins}) + "\n")
        assert not self.mismatches, "the steps left Redis otherwise than the scripts:\n" + "\n".join(
            _short(m) for m in self.mismatches[:12])
