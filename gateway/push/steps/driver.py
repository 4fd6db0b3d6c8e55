"""Runs a step against Redis: its reads in pipelines (one per round), its logic, then its
writes in one MULTI/EXEC.

`StepScript` is called as a registered script is (``script(keys=..., args=[payload])``),
so NotificationLedger can run its steps instead of its scripts.  It does not fence: it
is correct only where one process writes the keys (see the package doc).
"""

from __future__ import annotations

from typing import Any

from gateway.push.steps import STEPS
from gateway.push.steps.ledger import Ledger, StepError
from gateway.push.steps.overlay import NotLoaded, Overlay


def raw_client(redis: Any) -> Any:
    """A client on the same connections that hands back replies as Redis sent them (the
    steps read RESP2's lists, not redis-py's parsed dicts)."""
    raw = redis.__class__(connection_pool=redis.connection_pool)
    raw.response_callbacks.clear()
    return raw


class StepScript:
    """The step of ledger script `name`, called like the registered script."""

    def __init__(self, redis: Any, name: str) -> None:
        self.redis = raw_client(redis)
        self.name = name
        self.step = STEPS[name]

    async def __call__(self, keys: list[str], args: list[str]) -> list[Any]:
        led = await self._run_reads(keys, args[0], full=False)
        failure: StepError | None = None
        try:
            try:
                reply = self.step.run(led)
            except NotLoaded:
                # its reads left out what this call needed (a TTL, an index entry): read
                # everything it declared and run it again; nothing was sent yet
                led = await self._run_reads(keys, args[0], full=True)
                reply = self.step.run(led)
        except StepError as error:  # a script's error reply: what it wrote before stays
            failure, reply = error, []
        overlay = led.r
        if overlay.writes:
            async with self.redis.pipeline(transaction=True) as pipe:
                for command in overlay.writes:
                    pipe.execute_command(*command)
                replies = await pipe.execute()
            for position, then in overlay.then.items():
                then(replies[position])
        if failure is not None:
            raise failure
        return reply

    async def _run_reads(self, keys: list[str], payload: str, *, full: bool) -> Ledger:
        led = Ledger(keys, payload, Overlay())
        led.full = full
        reads = self.step.reads(led)
        try:
            commands = next(reads)
            while True:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for command in commands:
                        pipe.execute_command(*command)
                    replies = await pipe.execute()
                commands = reads.send(replies)
        except StopIteration:
            pass
        return led
