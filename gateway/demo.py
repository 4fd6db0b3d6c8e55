"""`gateway demo` (what `make demo` runs): the whole gateway, end to end, on embedded defaults.

One process runs, on one reactor: the gateway exactly as `gateway run` builds it from
config/gateway.yaml (embedded Redis in var/demo/redis, carrier links, push pipeline, MO,
SMPP listener, FastAGI, HTTP), plus the carrier simulators for China Mobile and Unicom.
Telecom's simulator is left down on purpose, so Telecom numbers show the failover.  The
caller of the voice menu is the Asterisk-faithful FastAGI client from tests/peers (the
demo runs from the source tree).

It loads the sample core data, sends one notification of every type, shows them go
through submitted to delivered, lets a citizen cancel a booking by SMS with the two-step
code, lets another cancel one by phone through the voice menu, and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def settled_states() -> frozenset[str]:
    """The ledger's final states, and scheduled (held for quiet hours): where the demo
    stops waiting.  Imported here, not at the top: the reactor is installed first."""
    from gateway.push.state import FINAL_STATES

    return FINAL_STATES | {"scheduled"}


def main(args: argparse.Namespace) -> int:
    from gateway.commands import EXIT_FAILURE, load_or_exit, run_async

    config = load_or_exit(args.config)
    data_dir = Path("var/demo/redis")
    if data_dir.exists() and not args.keep:
        shutil.rmtree(data_dir)
    config = dataclasses.replace(config, redis=dataclasses.replace(config.redis, url="embedded", data_dir=str(data_dir)))
    demo = Demo(config)
    code = run_async(demo.run)
    return code if code is not None else EXIT_FAILURE


def notification_samples(sample: Any, today: date) -> list[dict[str, Any]]:
    """One notification of every type, addressed to the sample people."""
    from gateway.domain.sample import (
        SAMPLE_CALLER,
        SAMPLE_CALLER_AFTER_DEADLINE,
        SAMPLE_CALLER_CANCELLED,
        SAMPLE_CALLER_NINE_POINTS,
        SAMPLE_CALLER_TWELVE_POINTS,
        SAMPLE_CALLER_UNICOM,
        SAMPLE_PLATE_OVERDUE,
    )

    d = lambda days: (today + timedelta(days=days)).isoformat()  # noqa: E731
    rows = [
        ("points_reached_9", SAMPLE_CALLER_NINE_POINTS, {"name": "刘德明", "date": d(0), "points": "9"}),
        ("points_reached_12", SAMPLE_CALLER_TWELVE_POINTS, {"name": "郑美玲", "office": "厦门市公安局交警支队车管所"}),
        ("camera_violation", SAMPLE_CALLER_NINE_POINTS, {"plate": "闽DA8829", "plate_type": "小型汽车", "time": f"{d(-2)} 08:15",
                                                        "location": "厦门市思明区湖滨南路", "violation": "不按导向车道行驶"}),
        ("inspection_due", SAMPLE_CALLER_CANCELLED, {"plate": "闽D6F220", "due_date": d(30)}),
        ("inspection_overdue", SAMPLE_CALLER_NINE_POINTS, {"plate": SAMPLE_PLATE_OVERDUE, "due_date": d(-40)}),
        ("inspection_missed_three_cycles", SAMPLE_CALLER_NINE_POINTS, {"plate": SAMPLE_PLATE_OVERDUE}),
        ("scrapping_due", SAMPLE_CALLER_TWELVE_POINTS, {"plate": "闽DD12345", "scrap_date": d(300)}),
        ("licence_renewal_due", SAMPLE_CALLER_AFTER_DEADLINE, {"name": "王志强", "expiry_date": d(60)}),
        ("licence_renewal_overdue", SAMPLE_CALLER_UNICOM, {"name": "张丽华", "expiry_date": d(-10)}),
        ("licence_audit_due", SAMPLE_CALLER_CANCELLED, {"name": "黄伟", "due_date": d(45)}),
        ("medical_certificate_due", SAMPLE_CALLER_TWELVE_POINTS, {"name": "郑美玲", "due_date": d(20)}),
        ("licence_cancelled", SAMPLE_CALLER_AFTER_DEADLINE, {"name": "王志强", "date": d(-1), "reason": "驾驶证有效期满未换证"}),
        ("exam_booking_confirmed", SAMPLE_CALLER, {"name": "林晓燕", "subject": "科目二", "date": d(7),
                                                   "session": "08:30", "site": "厦门集美考场", "booking_no": sample.cancellable_booking,
                                                   "cancel_deadline": f"{d(4)} 17:00", "attempts_left": "4"}),
        # Late: the exam is tomorrow.  Sent at once even at night, flagged late.
        ("exam_booking_confirmed", SAMPLE_CALLER_AFTER_DEADLINE, {
            "name": "王志强", "subject": "科目三", "date": d(1), "session": "14:00-16:00", "site": "翔安新店考场",
            "booking_no": "20261203077", "cancel_deadline": f"{d(-2)} 17:00"}),
        ("exam_booking_unsuccessful", SAMPLE_CALLER_CANCELLED, {"name": "黄伟", "subject": "科目三", "date": d(8),
                                                                "session": "下午", "reason": "考试名额已满"}),
        ("plate_preselection_result", SAMPLE_CALLER_UNICOM, {"plate": "闽D88K66", "deadline": d(3)}),
        ("fine_overdue", SAMPLE_CALLER_NINE_POINTS, {"date": d(-40), "amount": "200"}),
        ("documents_mailed", SAMPLE_CALLER_AFTER_DEADLINE, {"item": "驾驶证", "date": d(0), "tracking_no": "1180123456789"}),
        ("exam_booking_cancelled", SAMPLE_CALLER_CANCELLED, {"name": "黄伟", "booking_no": sample.cancelled_booking,
                                                             "subject": "科目二", "site": "厦门集美考场", "date": d(7), "session": "下午"}),
        ("exam_result", SAMPLE_CALLER, {"name": "林晓燕", "date": d(-20), "subject": "科目一", "result": "合格（95分）"}),
        ("id_card_ready", SAMPLE_CALLER_UNICOM, {"name": "张丽华", "office": "厦门市集美区公安分局户政大厅"}),
        ("verification_code", SAMPLE_CALLER_TWELVE_POINTS, {"code": "482913", "minutes": "5"}),
    ]
    seen: dict[str, int] = {}
    samples = []
    for kind, to, params in rows:
        seen[kind] = seen.get(kind, 0) + 1
        suffix = f"-{seen[kind]}" if seen[kind] > 1 else ""
        samples.append({"id": f"demo-{kind}{suffix}", "type": kind, "to": to, "params": params})
    return samples


# Types added with the full catalogue of seed 003, whose texts the demo prints.
SHOWN_TYPES = ("exam_booking_confirmed", "exam_booking_unsuccessful", "plate_preselection_result",
               "fine_overdue", "documents_mailed", "camera_violation", "id_card_ready")


class Demo:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.out = sys.stdout
        self.started = time.monotonic()

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    async def run(self) -> int:
        from twisted.internet import reactor

        from gateway.app import build_gateway
        from gateway.smpp.simulator import CarrierSimulator, options_for_carrier
        from gateway.store.bridge import wait_deferred

        self.say("gateway12123 demo: embedded Redis, carrier simulators, the whole gateway in one process")
        simulators: dict[str, Any] = {}
        for carrier in self.config.carriers:
            if carrier.name == "ctcc":
                continue  # left down: Telecom numbers fail over to another carrier
            simulator = CarrierSimulator(options_for_carrier(carrier, receipt_delay_seconds=0.3, seed=12123), reactor)
            simulator.startService()
            simulators[carrier.name] = simulator
        self.say(f"  carrier simulators up: {', '.join(simulators)} (ctcc is down for the failover)")

        root = build_gateway(self.config, reactor)
        root.startService()
        try:
            return await self._scenario(root, simulators)
        finally:
            await wait_deferred(root.stopService())
            for simulator in simulators.values():
                await wait_deferred(simulator.stopService())

    async def _scenario(self, root: Any, simulators: dict[str, Any]) -> int:
        from gateway.domain.sample import load_sample
        from gateway.push.intake import status

        redis, keys = root.redis.client, root.redis.keys
        await self._wait_ready(root)
        checks = root.readiness()
        self.say(f"  daemon healthy: /readyz {json.dumps(checks)}")

        today = _china_today()
        sample = await load_sample(redis, keys, today=today)
        self.say(f"  sample core data loaded: {sample.people} people, {sample.bookings} bookings, {sample.plans} exam plans")

        # -- 1. every notification type ----------------------------------------------------
        self.say("\n1. one notification of every type, XADDed to 12123:notify as a core system would")
        samples = notification_samples(sample, today)
        for item in samples:
            await redis.xadd(keys.notify_stream, {
                "id": item["id"], "type": item["type"], "to": item["to"],
                "params": json.dumps(item["params"], ensure_ascii=False), "channel": "sms"})
        states = await self._follow([s["id"] for s in samples], redis, keys)
        await self._show_texts(root, samples)

        # -- 2. SMS cancellation with the two-step code -------------------------------------
        self.say("\n2. a citizen texts 12123 to cancel an exam booking (two-step code)")
        sms_result = await self._sms_cancellation(root, simulators, sample)

        # -- 3. voice call through the menu --------------------------------------------------
        self.say("\n3. a citizen calls 12123 and cancels a booking through the voice menu (FastAGI)")
        voice_result = await self._voice_cancellation(root, sample)

        # -- summary -------------------------------------------------------------------------
        confirmations = await self._settle(redis, keys, [f"booking-cancelled:{sms_result.get('booking')}",
                                                         f"booking-cancelled:{voice_result.get('booking')}"])
        self.say(f"\n  cancellation confirmation SMS: {json.dumps(confirmations)}")
        rows = [await status(redis, keys, s["id"]) or {} for s in samples]
        for sample_item, row in zip(samples, rows, strict=True):
            due = await redis.hget(keys.notification(sample_item["id"]), "due_at")
            if row.get("state") == "scheduled" and due:
                row["state"] = f"held until {_local_time(float(due), self.config.push.quiet_hours.timezone)}"
        self._summary(samples, rows, sms_result, voice_result, simulators)
        ok = (all(str(r.get("state")).startswith(("delivered", "held until")) for r in rows)
              and len(states) == len(samples)
              and sms_result["cancelled"] and voice_result["cancelled"])
        return 0 if ok else 1

    async def _show_texts(self, root: Any, samples: list[dict[str, Any]]) -> None:
        """Print the rendered Chinese texts of a few types, as the citizen reads them."""
        from gateway.push.render import sms_parts

        redis, keys = root.redis.client, root.redis.keys
        self.say("  some of the texts (dates written the Chinese way, one signature per service):")
        for item in samples:
            if item["type"] not in SHOWN_TYPES:
                continue
            raw = await redis.hmget(keys.notification(item["id"]), "text", "late", "channel")
            text, late, channel = (v or "" for v in raw)
            flags = "  [late: sent at once" + (", voice if the SMS fails" if channel == "auto" else "") + "]" if late == "1" else ""
            self.say(f"    {item['type']} ({len(text)} chars, {sms_parts(text)} part{'s' if sms_parts(text) > 1 else ''}){flags}")
            self.say(f"      {text}")

    async def _wait_ready(self, root: Any, timeout_seconds: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            checks = root.readiness()
            if checks.get("redis") and sum(1 for link in root.carrier_links.values() if link.is_bound()) >= 2:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"gateway not ready after {timeout_seconds}s: {root.readiness()}")

    async def _follow(self, ids: list[str], redis: Any, keys: Any, timeout_seconds: float = 30.0) -> dict[str, str]:
        """Show a progress bar of the notifications' states until all are final."""
        deadline = time.monotonic() + timeout_seconds
        states: dict[str, str] = {}
        settled = settled_states()
        while time.monotonic() < deadline:
            pipe = redis.pipeline(transaction=False)
            for notification_id in ids:
                pipe.hget(keys.notification(notification_id), "state")
            states = {i: (s or "queued") for i, s in zip(ids, await pipe.execute(), strict=True)}
            done = sum(1 for s in states.values() if s in settled)
            counts = {("held" if s == "scheduled" else s): list(states.values()).count(s)
                      for s in sorted(set(states.values()))}
            bar = "#" * (30 * done // len(ids))
            line = f"  [{bar:<30}] {done}/{len(ids)}  " + "  ".join(f"{k}={v}" for k, v in counts.items())
            end = "\r" if self.out.isatty() and done < len(ids) else "\n"
            if end == "\n" and done < len(ids):
                await asyncio.sleep(0.25)
                if done < len(ids):
                    continue
            print(line.ljust(100), end=end, file=self.out, flush=True)
            if done == len(ids):
                return states
            await asyncio.sleep(0.1)
        self.say("\n  (some notifications were still in flight when the demo moved on)")
        return states

    async def _sms_cancellation(self, root: Any, simulators: dict[str, Any], sample: Any) -> dict[str, Any]:
        from gateway.domain.bookings import BookingStore
        from gateway.domain.sample import SAMPLE_CALLER
        from gateway.privacy import mask_phone
        from gateway.store.bridge import wait_deferred

        redis, keys = root.redis.client, root.redis.keys
        cmcc = simulators["cmcc"]
        booking_no = sample.cancellable_booking
        seen = len(cmcc.received)
        text = f"QXYY {booking_no}"
        self.say(f"  {mask_phone(SAMPLE_CALLER)} -> 12123: {text}")
        await wait_deferred(cmcc.send_mo(SAMPLE_CALLER, text))
        reply = await self._reply_to(cmcc, SAMPLE_CALLER, seen, lambda t: re.search(r"\d{6}", t) is not None)
        self.say(f"  12123 -> {mask_phone(SAMPLE_CALLER)}: {reply}")
        code = re.search(r"(?<!\d)(\d{6})(?!\d)", reply)
        if code is None:
            return {"cancelled": False, "why": "no code in the reply"}
        seen = len(cmcc.received)
        self.say(f"  {mask_phone(SAMPLE_CALLER)} -> 12123: {code.group(1)}")
        await wait_deferred(cmcc.send_mo(SAMPLE_CALLER, code.group(1)))
        reply = await self._reply_to(cmcc, SAMPLE_CALLER, seen, lambda t: True)
        self.say(f"  12123 -> {mask_phone(SAMPLE_CALLER)}: {reply}")
        booking = await BookingStore(redis, keys).get(booking_no)
        cancelled = booking_state(booking) == "cancelled"
        self.say(f"  booking {booking_no}: {booking_state(booking)}")
        return {"cancelled": cancelled, "booking": booking_no}

    async def _reply_to(self, simulator: Any, digits: str, seen: int, accept: Any, timeout_seconds: float = 15.0) -> str:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for message in simulator.received[seen:]:
                if message.destination.endswith(digits) and accept(message.text):
                    return str(message.text)
            await asyncio.sleep(0.05)
        return "(no reply)"

    async def _voice_cancellation(self, root: Any, sample: Any) -> dict[str, Any]:
        from twisted.internet import reactor

        from gateway.domain.bookings import BookingStore
        from gateway.domain.sample import SAMPLE_CALLER_UNICOM, SAMPLE_ID_NUMBERS
        from gateway.privacy import mask_phone
        from gateway.store.bridge import wait_deferred

        sys.path.insert(0, str(REPO))  # the caller is the test peer from tests/peers
        from tests.peers.fastagi_client import CallerInput, place_call

        fastagi = root.getServiceNamed("fastagi")
        port = fastagi.listening_port.getHost().port
        booking_no = sample.slot_booking
        # The booking number and, as the second factor, the last six of the holder's ID number.
        keys_typed = ["2", booking_no + "#", SAMPLE_ID_NUMBERS[SAMPLE_CALLER_UNICOM][-6:].replace("X", "*"), "1"]
        self.say(f"  caller {mask_phone(SAMPLE_CALLER_UNICOM)} dials 12123 and types: {', '.join(keys_typed)}")
        client = await wait_deferred(place_call(reactor, port, "12123", callerid=SAMPLE_CALLER_UNICOM,
                                                inputs=[CallerInput(k) for k in keys_typed]))
        for sentence in heard_sentences(fastagi.menus, [p.what for p in client.played]):
            self.say(f"    caller hears: {sentence}")
        booking = await BookingStore(root.redis.client, root.redis.keys).get(booking_no)
        cancelled = booking_state(booking) == "cancelled"
        self.say(f"  booking {booking_no}: {booking_state(booking)}")
        return {"cancelled": cancelled, "booking": booking_no, "commands": len(client.commands)}

    async def _settle(self, redis: Any, keys: Any, ids: list[str], timeout_seconds: float = 10.0) -> dict[str, str]:
        """Wait for the cancellation confirmations to reach a final state."""
        deadline = time.monotonic() + timeout_seconds
        states: dict[str, str] = {}
        settled = settled_states()
        while time.monotonic() < deadline:
            states = {i: (await redis.hget(keys.notification(i), "state")) or "queued" for i in ids}
            if all(s in settled for s in states.values()):
                break
            await asyncio.sleep(0.1)
        return states

    def _summary(self, samples: list[dict[str, Any]], rows: list[dict[str, Any]], sms: dict[str, Any],
                 voice: dict[str, Any], simulators: dict[str, Any]) -> None:
        from gateway.privacy import mask_phone

        self.say("\nsummary")
        self.say(f"  {'notification':<34} {'to':<13} {'carrier':<8} {'parts':>5}  state")
        for item, row in zip(samples, rows, strict=True):
            self.say(f"  {item['id'].removeprefix('demo-'):<34} {mask_phone(item['to']):<13} {row.get('carrier', '-'):<8} "
                     f"{row.get('parts', '-')!s:>5}  {row.get('state', '?')}")
        failovers = sum(1 for item, row in zip(samples, rows, strict=True)
                        if item["to"][:3] in ("177", "189") and row.get("carrier") not in (None, "ctcc"))
        delivered = sum(1 for r in rows if r.get("state") == "delivered")
        scheduled = sum(1 for r in rows if str(r.get("state")).startswith("held until"))
        self.say(f"\n  notifications: {len(samples)}, delivered {delivered}, held for quiet hours {scheduled}")
        self.say(f"  failover: {failovers} Telecom notifications sent through another carrier while ctcc was down")
        self.say(f"  SMS cancellation of {sms.get('booking')}: {'done' if sms['cancelled'] else 'NOT DONE'}")
        self.say(f"  voice cancellation of {voice.get('booking')}: {'done' if voice['cancelled'] else 'NOT DONE'}")
        for name, simulator in simulators.items():
            report = simulator.report()
            self.say(f"  simulator {name}: {report.get('messages', len(simulator.received))} messages received")
        self.say(f"  elapsed {time.monotonic() - self.started:.1f}s")


def booking_state(booking: Any) -> str:
    status = getattr(booking, "status", None)
    return str(getattr(status, "value", status))


def heard_sentences(book: Any, files: list[str]) -> list[str]:
    """The caller's side of a call as text: each clip played, joined into sentences."""
    names: dict[str, str] = {}
    for prompt in book.prompts.values():
        for part in prompt.parts:
            if hasattr(part, "name"):
                names[part.name] = part.text
    for word in book.voice.vocabulary:
        clip = book.voice.word_clip(word)
        names[clip.name] = clip.text
    sentences: list[str] = []
    current = ""
    for file in files:
        name = file.rsplit("/", 1)[-1]
        if name.startswith("pause-"):
            # A silence at punctuation: shown as the mark it stands for (issue 15, item 10).
            if current and current[-1] not in "，。：；、？！":
                current += "。" if name == "pause-long" else "，"
            if current.endswith(("。", "？", "！")):
                sentences.append(current)
                current = ""
            continue
        if name.startswith("char-"):
            text = chr(int(name[5:], 16))
        else:
            text = names.get(name, f"<{name}>")
        current += text
        if current.endswith(("。", "？", "！")):
            sentences.append(current)
            current = ""
    if current:
        sentences.append(current)
    return sentences


def _local_time(seconds: float, timezone: str) -> str:
    """'08:00 2026-12-03 Asia/Shanghai': when a notification held for quiet hours goes out."""
    import datetime as dt
    import zoneinfo

    local = dt.datetime.fromtimestamp(seconds, zoneinfo.ZoneInfo(timezone))
    return f"{local:%H:%M %Y-%m-%d} {timezone}"


def _china_today() -> date:
    import datetime as dt
    import zoneinfo

    return dt.datetime.now(zoneinfo.ZoneInfo("Asia/Shanghai")).date()
