"""transition.lua and change_if.lua in Python: one notification's state set by the caller
(the dispatcher's and voice's results, partners' cancel_sm and replace_sm).  Arguments,
guarantees and replies: the scripts'."""

from __future__ import annotations

from typing import Any

from gateway.push.steps.ledger import FINAL, Ledger, tonumber
from gateway.push.steps.reads import ReadBatch, Reads


def reads(led: Ledger) -> Reads:
    yield from ReadBatch(led).declared().read()


def transition(led: Ledger) -> list[Any]:
    r, argv = led.r, led.ARGV
    notification_id, state = argv[0], argv[1]
    nf, ne = int(tonumber(argv[2]) or 0), int(tonumber(argv[3]) or 0)
    key = led.nkey(notification_id)
    ntype = r.hget(key, "type")
    if ntype is None:
        return [["0"], [], []]
    fields = [str(x) for x in argv[4:4 + nf]]
    ev = [str(x) for x in argv[4 + nf:4 + nf + ne]]
    r.zrem(led.INFLIGHT, notification_id)
    led.transition(notification_id, key, state, ntype, fields, ev)
    if state in FINAL:
        led.on_final(notification_id, key, state)
    return led.reply(["1"])


def change_if(led: Ledger) -> list[Any]:
    r, argv = led.r, led.ARGV
    notification_id, allowed, state = argv[0], argv[1], argv[2]
    nf = int(tonumber(argv[3]) or 0)
    key = led.nkey(notification_id)
    found_state, ntype, priority = r.hmget(key, "state", "type", "priority")
    found = found_state or ""
    if found not in allowed.split():
        return led.reply(["0", found])
    fields = [str(x) for x in argv[4:4 + nf]]
    if state == "":
        if nf > 0:
            r.hset(key, *fields)
        return led.reply(["1", found])
    r.zrem(led.lane_key(priority), notification_id)
    r.zrem(led.SCHEDULED, notification_id)
    ev = [x for j in range(0, nf - 1, 2) if fields[j] not in ("text", "to", "params") for x in fields[j:j + 2]]
    led.transition(notification_id, key, state, ntype, fields, ev)
    if state in FINAL:
        led.on_final(notification_id, key, state)
    return led.reply(["1", found])
