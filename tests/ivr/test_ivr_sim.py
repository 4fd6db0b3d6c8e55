"""`gateway ivr-sim`: the menu walked against the real Redis, printed as the caller hears it."""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import IvrConfig
from gateway.domain import from_unix
from gateway.domain.bookings import Booking, BookingStatus, BookingStore
from gateway.domain.sample import SAMPLE_CALLER, load_sample, sample_data
from gateway.ivr import simulator
from gateway.ivr.menus import chinese_date, load_menus
from gateway.store.keys import Keys
from gateway.store.service import make_client
from tests.aio import on_asyncio

ROOT = Path(__file__).resolve().parents[2]
BOOK = load_menus(ROOT / "config" / "ivr.yaml")
KEYS = Keys()


def spoken_digits(number: str) -> str:
    return "".join("零幺二三四五六七八九"[int(d)] for d in number)  # 1 read 幺


@contextlib.asynccontextmanager
async def cancellable_sample_booking(redis_url: str, now: float) -> AsyncIterator[tuple[Any, Booking]]:
    """The gateway's client on the sample data, and its cancellable booking."""
    redis = make_client(redis_url)
    try:
        summary = await load_sample(redis, KEYS, today=from_unix(now).date())
        booking = await BookingStore(redis, KEYS).get(summary.cancellable_booking)
        assert booking is not None
        yield redis, booking
    finally:
        await redis.aclose()


@on_asyncio
async def test_cancel_walk_prints_what_the_caller_hears(redis_url: str) -> None:
    """--keys 2,<booking>#,<ID suffix>,1 prints one line per step, the read-back spoken, and cancels."""
    now = time.time()
    async with cancellable_sample_booking(redis_url, now) as (redis, booking):
        out = io.StringIO()
        result = await simulator.simulate(
            BOOK, redis, KEYS, ivr=IvrConfig(), caller=SAMPLE_CALLER,
            key_groups=["2", f"{booking.booking_no}#", booking.id_number.digits[-6:].replace("X", "*"), "1"],
            now=now, out=out,
        )
        lines = out.getvalue().splitlines()
        assert list(result.lines) == lines
        assert lines[:4] == [
            "[greeting] 您好，这里是交管12123语音服务。",
            "[main] 查询考试预约请按1，取消考试预约请按2，查询驾驶证记分和状态请按3，查询机动车检验状态请按4，查询未处理的交通违法请按5，人工服务请按0，重听请按9。",
            "[main] <按键 2>",
            "[cancel_gate] (check_attempts: ok)",
        ]
        assert f"[cancel_identity] <按键 {booking.booking_no}#>" in lines
        assert "[cancel_lookup] (select_booking: selected)" in lines
        readback = (f"[cancel_confirm] 预约号{spoken_digits(booking.booking_no)}，科目二，集美灌口考场，"
                    f"{chinese_date(booking.exam_date, booking.exam_date)}上午，状态：已预约。确认取消该考试预约请按1，不取消请按其他键。")
        assert readback in lines
        assert lines.index("[cancel_confirm] <按键 1>") == lines.index(readback) + 1
        assert "[cancel_do] (cancel_booking: cancelled)" in lines
        assert "[cancel_done] 该考试预约已取消，稍后您将收到短信通知。" in lines
        # keys used up: the caller stays silent and the menu says goodbye
        assert lines[-3:] == ["[goodbye] 感谢您的来电，再见。", "[goodbye] (挂机)", "(通话结束: completed)"]
        after = await BookingStore(redis, KEYS).get(booking.booking_no)
        assert after is not None and after.status is BookingStatus.CANCELLED


@on_asyncio
async def test_licence_and_vehicle_walks(redis_url: str) -> None:
    """3 and 4 with the last six of the ID number speak points, expiry and plates."""
    from gateway.domain.sample import (
        SAMPLE_CALLER_NINE_POINTS,
        SAMPLE_ID_NUMBERS,
        SAMPLE_PLATE_OVERDUE,
    )

    now = time.time()
    redis = make_client(redis_url)
    try:
        await load_sample(redis, KEYS, today=from_unix(now).date())
        suffix = SAMPLE_ID_NUMBERS[SAMPLE_CALLER_NINE_POINTS][-6:].replace("X", "*")
        licence = await simulator.simulate(BOOK, redis, KEYS, ivr=IvrConfig(), caller=SAMPLE_CALLER_NINE_POINTS,
                                           key_groups=["3", suffix, "#"], now=now)
        text = "\n".join(licence.lines)
        assert "[licence_read] 您的驾驶证状态为正常，本记分周期累积记分九分，有效期至" in text
        vehicles = await simulator.simulate(BOOK, redis, KEYS, ivr=IvrConfig(), caller=SAMPLE_CALLER_NINE_POINTS,
                                            key_groups=["4", suffix + "#", "#"], now=now)
        text = "\n".join(vehicles.lines)
        assert "[vehicle_count] 您名下共有两辆机动车。" in text
        plate = SAMPLE_PLATE_OVERDUE.replace("3", "三").replace("5", "五").replace("1", "一").replace("7", "七")
        assert f"号牌{plate}" in text and "状态：逾期未检验" in text
    finally:
        await redis.aclose()


@on_asyncio
async def test_cli_run_with_redis_url(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway ivr-sim -c ... --redis-url ... --load-sample` prints the walk and exits 0."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config")
    simulator.add_arguments(parser)
    today = from_unix(time.time()).date()
    booking = sample_data(today).bookings[0].booking_no
    args = parser.parse_args([
        "-c", str(ROOT / "config" / "gateway.yaml"), "--redis-url", redis_url, "--load-sample",
        "--caller", SAMPLE_CALLER, "--keys", f"1,{booking}#,#",
    ])
    from gateway.config import load_config
    from gateway.ivr.menus import load_menus

    config = load_config(args.config)
    assert await simulator.run(args, config, load_menus(config.resolve(config.ivr.menus_file))) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[greeting] 您好，这里是交管12123语音服务。"
    assert any(line.startswith(f"[status_read] 预约号{spoken_digits(booking)}") for line in out)
    assert out[-1] == "(通话结束: completed)"


@on_asyncio
async def test_withheld_number_hears_not_verified(redis_url: str) -> None:
    """A withheld caller id is never verified; the walk says so and nothing personal."""
    now = time.time()
    redis = make_client(redis_url)
    try:
        summary = await load_sample(redis, KEYS, today=from_unix(now).date())
        result = await simulator.simulate(BOOK, redis, KEYS, ivr=IvrConfig(), caller="unknown",
                                          key_groups=["1", summary.cancellable_booking + "#"], now=now,
                                          hang_up_when_done=True)
        assert "[status_lookup] (booking_status: not_verified)" in result.lines
        assert not any("预约号二" in line for line in result.lines)
        assert result.outcome == "caller_hangup"
    finally:
        await redis.aclose()


@on_asyncio
async def test_a_booking_a_core_system_wrote_in_gbk_still_reads(redis_url: str) -> None:
    """Core systems write the bookings; one field in GBK instead of UTF-8 made every read
    of that booking fail (the client decoded strictly), so its holder calling 12123 got an
    error.  The caller now hears the booking's number, date and state; the unreadable
    field is not read out as noise, and the octets in Redis are left as they were."""
    now = time.time()
    async with cancellable_sample_booking(redis_url, now) as (redis, booking):
        key = KEYS.booking(booking.plan_id, booking.booking_no)
        await redis.execute_command("HSET", key, "site", "集美灌口考场".encode("gbk"))
        out = io.StringIO()
        await simulator.simulate(BOOK, redis, KEYS, ivr=IvrConfig(), caller=SAMPLE_CALLER,
                                 key_groups=["1", f"{booking.booking_no}#", "#"], now=now, out=out)
        lines = out.getvalue().splitlines()
        [read] = [line for line in lines if line.startswith("[status_read]")]
        assert read.startswith(f"[status_read] 预约号{spoken_digits(booking.booking_no)}，科目二，")
        assert "状态：已预约" in read and "\ufffd" not in read
        assert lines[-1] == "(通话结束: completed)"
        raw = await redis.execute_command("HGET", key, "site", **{"NEVER_DECODE": True})
        assert raw == "集美灌口考场".encode("gbk")
