"""``gateway ivr-sim``: walk a voice menu against the real Redis, without Asterisk.

    gateway ivr-sim -c config/gateway.yaml --caller 13800138000 --keys 2,20261130001#,151282,1

The same `CallFlow` and `VoiceActions` as the FastAGI server run the call; a scripted
caller answers the AGI commands as Asterisk would (prompts play to their end, each
comma-separated group of keys is typed when the menu asks for input, an empty group is
silence).  When the keys run out the caller stays silent (``--hang-up-when-done``: hangs
up).  One line per step: the node, then what the caller hears (the prompt texts with the
values spoken as they are spoken), the keys typed, or the action and its outcome::

    [greeting] 您好，这里是交管12123语音服务。
    [main] <按键 2>
    [cancel_lookup] (select_booking: selected)

Actions write to Redis as in a real call: ``--keys 2,<booking>#,<last six of the ID number>,1`` cancels the booking.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from redis.asyncio import Redis

from gateway.config import IvrConfig
from gateway.domain import CHINA_TZ
from gateway.ivr.actions import CallContext, VoiceActions
from gateway.ivr.agi import AgiReply, AgiStatus, caller_number
from gateway.ivr.menus import (
    CallFlow,
    Control,
    Finish,
    MenuBook,
    ReadDigits,
    RunAction,
    ServiceHours,
    Speak,
    Step,
)
from gateway.store.keys import Keys

__all__ = ["SimulationResult", "add_arguments", "run", "simulate"]


@dataclass(frozen=True)
class SimulationResult:
    lines: tuple[str, ...]
    outcome: str
    path: tuple[str, ...]
    variables: dict[str, str]


def _reply(result: str, *, timeout: bool = False, endpos: int | None = None) -> AgiReply:
    return AgiReply(AgiStatus.SUCCESS, result=result, timeout=timeout, endpos=endpos)


class _PrintedSpeech:
    """ivr-sim prints a reminder's text instead of synthesising it."""

    async def __call__(self, text: str) -> bool:
        return bool(text.strip())

    def forget(self, text: str) -> None:
        pass


class _ScriptedCaller:
    """Types one group of keys per request for input, as a FastAGI caller would."""

    def __init__(self, groups: Sequence[str], hang_up_when_done: bool) -> None:
        self.groups = list(groups)
        self.hang_up_when_done = hang_up_when_done

    def done(self) -> bool:
        return not self.groups and self.hang_up_when_done

    def answer(self, step: ReadDigits) -> tuple[AgiReply, str]:
        keys = self.groups.pop(0) if self.groups else ""
        if step.max_digits == 1 and step.line.startswith("WAIT FOR DIGIT"):
            return (_reply(str(ord(keys[0]))) if keys else _reply("0")), keys[:1]
        digits = ""
        for key in keys:
            if key == "#":
                return _reply(digits), digits + "#"
            digits += key
            if len(digits) >= step.max_digits:
                return _reply(digits), digits
        return _reply(digits, timeout=True), digits


async def simulate(book: MenuBook, redis: Redis, keys: Keys, *, ivr: IvrConfig, caller: str | None,
                   key_groups: Sequence[str], menu: str = "12123", arguments: Sequence[str] = (),
                   now: float | None = None, hang_up_when_done: bool = False,
                   out: TextIO | None = None) -> SimulationResult:
    """Run one call through `menu` and return (and print to `out`) what the caller heard.

    `caller`: the caller id as Asterisk would give it (None: withheld).  `key_groups`: the
    keys typed at each request for input.  `now`: Unix seconds of the call (default: now).
    """
    clock = time.time() if now is None else now
    flow = CallFlow(
        book, menu,
        service_hours=ServiceHours.parse(ivr.service_hours),
        agent_queue=ivr.agent_queue,
        variables={"notification_id": arguments[0]} if arguments else None,
    )
    actions = VoiceActions(redis, keys, attempts_per_hour=ivr.attempts_per_hour,
                           attempts_per_booking_per_day=ivr.attempts_per_booking_per_day,
                           enumeration_failures_per_minute=ivr.enumeration_failures_per_minute,
                           attempts_per_caller_per_hour=ivr.attempts_per_caller_per_hour,
                           synthesizer=_PrintedSpeech(), rights=ivr.rights)
    context = CallContext(caller=caller_number(caller or ""), variables={}, now=clock, uniqueid="ivr-sim")
    scripted = _ScriptedCaller(key_groups, hang_up_when_done)
    lines: list[str] = []
    heard: list[str] = []
    heard_node = ""

    def emit(line: str) -> None:
        lines.append(line)
        if out is not None:
            print(line, file=out)

    def flush_heard() -> None:
        nonlocal heard_node
        if heard:
            emit(f"[{heard_node}] {''.join(heard)}")
            heard.clear()

    step: Step = flow.start(clock)
    while not isinstance(step, Finish):
        node = step.node
        if heard and node != heard_node:
            flush_heard()
        match step:
            case Speak():
                heard_node = node
                heard.append(step.clip.text)
                step = flow.on_reply(_reply("0", endpos=12345), clock)
            case ReadDigits():
                flush_heard()
                if scripted.done():
                    emit(f"[{node}] (来电者挂机)")
                    step = flow.on_hangup(clock)
                    continue
                reply, typed = scripted.answer(step)
                emit(f"[{node}] <按键 {typed}>" if typed else f"[{node}] <无按键>")
                step = flow.on_reply(reply, clock)
            case Control():
                flush_heard()
                if step.line.startswith("SET VARIABLE"):
                    emit(f"[{node}] ({step.line.lower().replace('set variable ', 'set ')})")
                elif step.line == "HANGUP":
                    emit(f"[{node}] (挂机)")
                step = flow.on_reply(_reply("1" if step.line != "ANSWER" else "0"), clock)
            case RunAction():
                flush_heard()
                context.variables = step.variables
                context.now = clock
                result = await actions.run(step.name, context)
                emit(f"[{node}] ({step.name}: {result.outcome})")
                step = flow.on_action_result(result, clock)
    flush_heard()
    emit(f"(通话结束: {step.outcome})")
    return SimulationResult(tuple(lines), step.outcome, step.path, dict(flow.variables))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gateway ivr-sim`` (the lead adds -c/--config)."""
    parser.add_argument("--caller", default="13800138000",
                        help="caller id (11-digit mobile; 'unknown' for a withheld number)")
    parser.add_argument("--keys", default="",
                        help="keys typed at each request for input, comma-separated groups, e.g. 2,20261130001#,151282,1")
    parser.add_argument("--menu", default="12123", help="menu (FastAGI script) to walk: 12123 or notify")
    parser.add_argument("--arg", action="append", default=[], dest="arguments",
                        help="agi_arg_N, repeatable (notify: the notification id)")
    parser.add_argument("--now", default=None,
                        help="time of the call, ISO 8601 (default: now; China time if no offset)")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of the config's")
    parser.add_argument("--hang-up-when-done", action="store_true",
                        help="hang up when the keys run out (default: stay silent)")
    parser.add_argument("--load-sample", action="store_true",
                        help="load the sample data for the call's day first (writes to Redis)")


def _parse_now(text: str | None) -> float:
    if text is None:
        return time.time()
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=CHINA_TZ)
    return moment.timestamp()


async def run(args: argparse.Namespace, config: Any, book: Any) -> int:
    """``gateway ivr-sim`` with the loaded config and menus (the command layer loads and
    checks them); returns the exit code."""
    from gateway.store.oneshot import redis_for
    from gateway.store.service import make_client

    if args.menu not in book.menus:
        print(f"no menu '{args.menu}' in {book.source} (menus: {', '.join(book.menus)})", file=sys.stderr)
        return 2
    now = _parse_now(args.now)
    groups = args.keys.split(",") if args.keys else []

    async def walk(redis: Redis, keys: Keys) -> int:
        if args.load_sample:
            from gateway.domain import from_unix
            from gateway.domain.sample import load_sample

            await load_sample(redis, keys, today=from_unix(now).date())
        result = await simulate(
            book, redis, keys, ivr=config.ivr, caller=args.caller, key_groups=groups,
            menu=args.menu, arguments=args.arguments, now=now,
            hang_up_when_done=args.hang_up_when_done, out=sys.stdout,
        )
        return 0 if result.outcome != "error" else 1

    if args.redis_url:
        client: Any = make_client(args.redis_url)
        try:
            return await walk(client, Keys(config.redis.prefix, partitions=config.push.partitions))
        finally:
            await client.aclose()
    async with redis_for(config) as (client, keys):
        return await walk(client, keys)
