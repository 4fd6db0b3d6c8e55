"""Runs a step against Redis: its reads (one pipeline per round), its logic, then its
writes in one MULTI/EXEC.

`StepScript` is called as a registered script is (``script(keys=..., args=[payload])``),
so NotificationLedger can run its steps instead of its scripts.

**Fence.** A step is correct only while nothing else writes what it read until its writes
land: the partition's owner is that single writer (gateway/push/ownership.py).  Given a
`Fence` (the partition's owner key and this process's name), the step runs on one
connection: WATCH of the owner key and its GET go first, and the step runs only while it
names this process; EXEC then writes nothing if the key was written meanwhile.  A take-over
writes it, and so does this process's own renewal of its lease: after an EXEC that wrote
nothing the owner is read again, and the step runs again from its reads while it is still
this process (FENCE_ATTEMPTS), or raises `FencedOut`.  Without a fence (`fence_of` None or
answering None) the writes go in MULTI/EXEC unfenced: tests and benchmarks with one
writer.

**Writer lock.** Without an owner, a step holds the partition's writer lock
(`PartitionKeys.step_writer`: SET NX PX with a token of its own) from before its reads to
its EXEC, which deletes it: steps of several processes take turns, each fenced on its own
token.  A lock whose holder died mid-step frees after WRITER_LEASE_MS; a step that outlived
its lease is fenced out by the next holder's SET and runs again.

**One step per partition at a time in a process.** Two steps of one process would race
as two processes do (a cancellation read between a claim's reads and its writes would be
lost), so the steps of a partition take turns (`StepLocks`, one per ledger, keyed by the
partition's first KEY).  The fence cannot see them: both are the owner.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from gateway.push.steps import STEPS
from gateway.push.steps.ledger import Ledger, StepError
from gateway.push.steps.overlay import NotLoaded, Overlay

# Runs of one fenced step at most: an EXEC that wrote nothing because this process renewed
# its lease meanwhile is run again (a renewal comes every lease / 5, a step takes
# milliseconds, so a second one in a row means the key keeps changing: another process).
FENCE_ATTEMPTS = 3

# How long a step may hold its partition's writer lock: a step is a few round trips
# (milliseconds), so 2 s is far beyond a slow one and is what a holder killed mid-step
# stalls its partition's steps for.
WRITER_LEASE_MS = 2_000
# How long a step waits for the writer lock before it fails (the caller's error path: the
# intake entry, outcome or receipt is tried again): a lease and a half.
WRITER_WAIT_SECONDS = 3.0
# Waits between tries of a busy lock: from 1 ms, doubling, at most 20 ms (a step takes a
# few ms, and each try is a command the lock's node runs).
WRITER_POLL_FIRST_SECONDS = 0.001
WRITER_POLL_MAX_SECONDS = 0.02
# Runs of one step whose lock lease ran out under it before it gives up.
WRITER_ATTEMPTS = 3
# Bound on one round trip's replies when the client sets no socket timeout (the gateway's
# clients set one: gateway/store/service.py).
DEFAULT_REPLY_SECONDS = 10.0
# What _fenced answers when the writer lock was taken by another step.
BUSY = object()

Send = Callable[[Sequence[tuple[Any, ...]]], Awaitable[list[Any]]]


class WriterBusy(Exception):
    """The partition's writer lock stayed held by other steps longer than WRITER_WAIT_SECONDS."""


class FencedOut(Exception):
    """The partition is another process's (or its owner key kept changing): the step
    wrote nothing."""


@dataclass(frozen=True)
class Fence:
    """What makes a step's writes this process's to make: `key` names `holder`."""

    key: str
    holder: str


class StepLocks:
    """An asyncio lock per partition (by the first KEY of its calls: its high lane)."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def of(self, keys: list[str]) -> asyncio.Lock:
        lock = self._locks.get(keys[0])
        if lock is None:
            lock = self._locks[keys[0]] = asyncio.Lock()
        return lock


def raw_client(redis: Any) -> Any:
    """A client on the same connections that hands back replies as Redis sent them (the
    steps read RESP2's lists, not redis-py's parsed dicts)."""
    raw = redis.__class__(connection_pool=redis.connection_pool)
    raw.response_callbacks.clear()
    return raw


class StepScript:
    """The step of ledger script `name`, called like the registered script.

    fence_of: the `Fence` of a call, given its KEYS (the first is the partition's high
    lane), or None to run it unfenced.  locks: shared by every step of one ledger.
    writer_of: the partition's writer lock key, given a call's KEYS: each step then holds
    it (see the module doc) instead of being fenced by `fence_of`.
    """

    def __init__(self, redis: Any, name: str, fence_of: Callable[[list[str]], Fence | None] | None = None,
                 locks: StepLocks | None = None, writer_of: Callable[[list[str]], str] | None = None) -> None:
        self.redis = raw_client(redis)
        self.name = name
        self.step = STEPS[name]
        self.fence_of = fence_of
        self.locks = locks or StepLocks()
        self.writer_of = writer_of

    async def __call__(self, keys: list[str], args: list[str]) -> list[Any]:
        async with self.locks.of(keys):
            return await self._call(keys, args)

    async def _call(self, keys: list[str], args: list[str]) -> list[Any]:
        if self.writer_of is not None:
            return await self._locked(keys, args[0], self.writer_of(keys))
        fence = self.fence_of(keys) if self.fence_of is not None else None
        if fence is None:
            return await self._unfenced(keys, args[0])
        for _ in range(FENCE_ATTEMPTS):
            done, reply = await self._fenced(keys, args[0], fence)
            if done:
                return reply
        raise FencedOut(f"{fence.key} changed under {FENCE_ATTEMPTS} runs of {self.name}")

    async def _locked(self, keys: list[str], payload: str, lock: str) -> list[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WRITER_WAIT_SECONDS
        pause = WRITER_POLL_FIRST_SECONDS
        lapses = 0
        optimistic = True
        while True:
            token = uuid.uuid4().hex
            try:
                for _ in range(FENCE_ATTEMPTS):
                    done, reply = await self._fenced(keys, payload, Fence(lock, token), release=True, acquire=True,
                                                     optimistic=optimistic)
                    if done:
                        return reply
                    if reply is BUSY:
                        optimistic = False
                        break
                else:
                    raise FencedOut(f"{lock} changed under {FENCE_ATTEMPTS} runs of {self.name}")
            except FencedOut:
                lapses += 1  # its lease ran out and another step took the lock: run again
                if lapses >= WRITER_ATTEMPTS:
                    raise FencedOut(f"{self.name}: the writer lock {lock} ran out under {lapses} runs") from None
                continue
            if loop.time() + pause > deadline:
                raise WriterBusy(f"{lock} held for more than {WRITER_WAIT_SECONDS} s")
            await asyncio.sleep(pause)
            pause = min(WRITER_POLL_MAX_SECONDS, 2 * pause)

    async def _unfenced(self, keys: list[str], payload: str) -> list[Any]:
        async def send(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return list(await pipe.execute())

        led, reply, failure = await self._prepare(keys, payload, send)
        if led.r.writes:
            async with self.redis.pipeline(transaction=True) as pipe:
                for command in led.r.writes:
                    pipe.execute_command(*command)
                self._then(led, await pipe.execute())
        if failure is not None:
            raise failure
        return reply

    async def _fenced(self, keys: list[str], payload: str, fence: Fence, release: bool = False,
                      acquire: bool = False, optimistic: bool = True) -> tuple[bool, Any]:
        """(True, reply) once written; (False, BUSY) when `acquire` found the lock taken;
        (False, None) when EXEC wrote nothing but the key still names this process.

        One round trip takes the lock (`acquire`: SET NX PX), WATCHes it, reads it and
        makes the step's first reads (`optimistic`; else they follow once the lock is
        held); the step runs only if it holds the key.  release: the key is this step's
        writer lock, deleted by its EXEC."""
        pool = self.redis.connection_pool
        connection = await pool.get_connection()
        parser = connection._parser  # its replies are read in bulk (see `send`)
        # Bound on one round trip's replies: the client's socket timeout.
        bound = connection.socket_timeout or DEFAULT_REPLY_SECONDS
        try:
            async def send(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
                # One write, then the replies straight from the connection's parser under
                # one timeout: redis-py's read_response per reply (a timeout context, health
                # checks) was a quarter of the steps' CPU in the gateway (py-spy, 2026-12-06).
                await connection.send_packed_command(connection.pack_commands(commands))
                async with asyncio.timeout(bound):
                    replies = [await parser.read_response() for _ in commands]
                if commands[0][0] != "MULTI":  # a transaction's errors are the caller's to read
                    for reply in replies:
                        if isinstance(reply, ResponseError):
                            raise reply
                return replies

            head: list[tuple[Any, ...]] = [("WATCH", fence.key), ("GET", fence.key)]
            if acquire:
                head.insert(0, ("SET", fence.key, fence.holder, "NX", "PX", WRITER_LEASE_MS))
            if optimistic:  # the lock, its WATCH and the step's first reads in one round trip
                led, head_replies = await self._read(keys, payload, send, full=False, head=head)
            else:  # it was busy: no reads sent in vain while it stays so
                head_replies = await send(head)
            holder = head_replies[-1]
            if acquire and head_replies[0] is None and holder != fence.holder:
                await send([("UNWATCH",)])
                return False, BUSY
            if not optimistic and holder == fence.holder:
                led, _ = await self._read(keys, payload, send, full=False)
            if holder != fence.holder:
                await send([("UNWATCH",)])
                raise FencedOut(f"{fence.key} names {holder or 'nobody'}, not {fence.holder}")
            led, reply, failure = await self._run(led, keys, payload, send)
            writes = [*led.r.writes, ("DEL", fence.key)] if release else led.r.writes
            if not writes:
                await send([("UNWATCH",)])
            else:
                replies = await send([("MULTI",), *writes, ("EXEC",)])
                for queued in replies[:-1]:
                    if isinstance(queued, ResponseError):
                        raise queued  # refused at queueing (OOM...): EXEC wrote nothing
                executed = replies[-1]
                if isinstance(executed, ResponseError):
                    raise executed
                if executed is None:  # the key was written since WATCH
                    [holder] = await send([("GET", fence.key)])
                    if holder != fence.holder:
                        raise FencedOut(f"{fence.key} was taken by {holder or 'nobody'} during {self.name}")
                    return False, None
                self._then(led, executed)
            if failure is not None:
                raise failure
            return True, reply
        except BaseException:
            await connection.disconnect()  # a WATCH or MULTI left on it must not be reused
            raise
        finally:
            await pool.release(connection)

    async def _prepare(self, keys: list[str], payload: str,
                       send: Send) -> tuple[Ledger, list[Any], StepError | None]:
        """Reads and runs the step: (its context with the writes, its reply, its error)."""
        led, _ = await self._read(keys, payload, send, full=False)
        return await self._run(led, keys, payload, send)

    async def _run(self, led: Ledger, keys: list[str], payload: str,
                   send: Send) -> tuple[Ledger, list[Any], StepError | None]:
        try:
            try:
                return led, self.step.run(led), None
            except NotLoaded:
                # its reads left out what this call needed (a TTL, an index entry): read
                # everything it declared and run it again; nothing was sent yet
                led, _ = await self._read(keys, payload, send, full=True)
                return led, self.step.run(led), None
        except StepError as error:  # a script's error reply: what it wrote before stays
            return led, [], error

    async def _read(self, keys: list[str], payload: str, send: Send, *, full: bool,
                    head: Sequence[tuple[Any, ...]] = ()) -> tuple[Ledger, list[Any]]:
        """The step's reads, `head` sent with the first of them; (its context, head's replies)."""
        led = Ledger(keys, payload, Overlay())
        led.full = full
        reads = self.step.reads(led)
        head_replies: list[Any] = []
        try:
            commands = next(reads)
        except StopIteration:
            commands = None
        if head:
            replies = await send([*head, *(commands or [])])
            head_replies, first = replies[:len(head)], replies[len(head):]
        try:
            if commands is not None:
                commands = reads.send(first if head else await send(commands))
                while True:
                    commands = reads.send(await send(commands))
        except StopIteration:
            pass
        return led, head_replies

    @staticmethod
    def _then(led: Ledger, replies: list[Any]) -> None:
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        for position, then in led.r.then.items():
            then(replies[position])
