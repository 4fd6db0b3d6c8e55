"""The menu file: loading, validation messages, speech of values, and the sans-IO
interpreter driven by hand (no reactor, no Redis)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError
from gateway.domain import CHINA_TZ
from gateway.ivr.actions import CATALOGUE
from gateway.ivr.agi import ALL_DIGITS, AgiReply, AgiStatus
from gateway.ivr.menus import (
    TRANSFER_VARIABLE,
    ActionResult,
    CallFlow,
    Control,
    Finish,
    MenuBook,
    ReadDigits,
    RunAction,
    ServiceHours,
    Speak,
    Step,
    Voice,
    chinese_date,
    chinese_number,
    load_menus,
    parse_menus,
    spoken_time,
)

IVR_YAML = Path(__file__).resolve().parents[2] / "config" / "ivr.yaml"


@pytest.fixture(scope="module")
def raw_menus() -> dict[str, Any]:
    return yaml.safe_load(IVR_YAML.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def book() -> MenuBook:
    return load_menus(IVR_YAML)


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_menus(data, source="ivr.yaml", actions=CATALOGUE)
    return raised.value.problems


# --- loading and validation ---------------------------------------------------------------


def test_default_menus_load(book: MenuBook) -> None:
    """config/ivr.yaml is valid and has the inbound and the reminder script."""
    assert set(book.menus) >= {"12123", "notify"}
    assert book.sound_prefix == "12123"
    main = book.menus["12123"].nodes["main"]
    assert sorted(main.branches) == ["0", "1", "2", "3", "4", "5", "9"]  # type: ignore[union-attr]


def test_unknown_node_reported_with_path(raw_menus: dict[str, Any]) -> None:
    """A reference to a node that does not exist names the file, the key path and the node."""
    data = copy.deepcopy(raw_menus)
    data["menus"]["12123"]["nodes"]["main"]["branches"]["4"] = "vehicle_gat"
    problems = problems_of(data)
    assert "ivr.yaml: menus.12123.nodes.main.branches.4: unknown node 'vehicle_gat'" in problems


def test_unreachable_node_reported(raw_menus: dict[str, Any]) -> None:
    """A node nothing leads to is reported as unreachable."""
    data = copy.deepcopy(raw_menus)
    data["menus"]["12123"]["nodes"]["orphan"] = {"kind": "play", "prompts": ["goodbye"], "next": "main"}
    problems = problems_of(data)
    assert any(p.startswith("ivr.yaml: menus.12123.nodes.orphan: unreachable node") for p in problems)


def test_missing_prompt_and_text(raw_menus: dict[str, Any]) -> None:
    """A prompt id that is not declared, and a declared prompt without text, are both reported."""
    data = copy.deepcopy(raw_menus)
    data["menus"]["12123"]["nodes"]["greeting"]["prompts"] = ["welcom"]
    data["prompts"]["goodbye"] = "  "
    problems = problems_of(data)
    assert "ivr.yaml: menus.12123.nodes.greeting.prompts[0]: missing prompt 'welcom' (declare it under prompts:)" in problems
    assert "ivr.yaml: prompts.goodbye: missing prompt text" in problems


def test_every_problem_at_once(raw_menus: dict[str, Any]) -> None:
    """Problems in different places are collected and reported together."""
    data = copy.deepcopy(raw_menus)
    nodes = data["menus"]["12123"]["nodes"]
    nodes["cancel_do"]["action"] = "cancel_everything"
    nodes["status_lookup"]["outcomes"]["maybe"] = "main"
    nodes["main"]["branches"]["12"] = "main"
    nodes["main"]["branches"]["A"] = "main"
    nodes["main"]["timeout_seconds"] = 0
    data["prompts"]["bad_placeholder"] = "预约号{booking_no:hex}"
    nodes["status_gate"]["kind"] = "jump"
    problems = problems_of(data)
    text = "\n".join(problems)
    assert "menus.12123.nodes.cancel_do.action: unknown action 'cancel_everything'" in text
    assert "menus.12123.nodes.status_lookup.outcomes.maybe: 'booking_status' has no outcome 'maybe'" in text
    assert "menus.12123.nodes.main.branches.12: '12' can never be entered: this collect takes 1 to 1 keys" in text
    assert "menus.12123.nodes.main.branches.A: bad digits 'A'" in text
    assert "menus.12123.nodes.main.timeout_seconds: 0 is out of range" in text
    assert "prompts.bad_placeholder: placeholder {booking_no:hex}: format 'hex'" in text
    assert "menus.12123.nodes.status_gate.kind: 'jump' is not one of" in text
    assert all(p.startswith("ivr.yaml: ") for p in problems)


def test_unmapped_action_outcome(raw_menus: dict[str, Any]) -> None:
    """An action outcome that leads nowhere (no mapping, no next) is an error."""
    data = copy.deepcopy(raw_menus)
    del data["menus"]["12123"]["nodes"]["cancel_do"]["outcomes"]["deadline_passed"]
    problems = problems_of(data)
    assert any("cancel_do.outcomes: outcome deadline_passed lead nowhere" in p for p in problems)


def test_yaml_numbers_as_branch_keys(tmp_path: Path) -> None:
    """Unquoted digit keys are taken as written (YAML 1.1 would make 09 a number)."""
    text = IVR_YAML.read_text(encoding="utf-8").replace('"9": main\n          "#"', '9: main\n          "#"')
    assert '9: main' in text
    path = tmp_path / "ivr.yaml"
    path.write_text(text, encoding="utf-8")
    book = load_menus(path)
    assert "9" in book.menus["12123"].nodes["after_query"].branches  # type: ignore[union-attr]


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    """A missing menus file is a ConfigError, not a crash."""
    with pytest.raises(ConfigError):
        load_menus(tmp_path / "nope.yaml")


# --- speech -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "spoken"),
    [(0, "零"), (7, "七"), (10, "十"), (12, "十二"), (30, "三十"), (101, "一百零一"), (110, "一百一十"),
     (2026, "两千零二十六"), (1005, "一千零五"), (10050, "一万零五十"), (120000, "十二万"), (-3, "负三")],
)
def test_chinese_number(n: int, spoken: str) -> None:
    """Numbers are read as Mandarin quantities."""
    assert chinese_number(n) == spoken


def test_chinese_date() -> None:
    """A date reads the year digit by digit, month and day as numbers."""
    assert chinese_date(date(2026, 12, 7)) == "二零二六年十二月七日"
    assert chinese_date(date(2030, 10, 30)) == "二零三零年十月三十日"


def test_voice_prefers_vocabulary_words() -> None:
    """Vocabulary words are one clip each (longest first); digits become numerals."""
    voice = Voice(["考场", "集美灌口考场", "上午"])
    clips = voice.text("集美灌口考场8点30分")
    assert [c.text for c in clips] == ["集美灌口考场", "八", "点", "三", "十", "分"]
    assert voice.value("20261130001", "digits")[0].text == "二"
    assert "".join(c.text for c in voice.value("闽D3K517", "chars")) == "闽D三K五一七"
    assert "".join(c.text for c in voice.value("2026-12-07", "date")) == "二零二六年十二月七日"
    assert "".join(c.text for c in voice.value("2", "number")) == "两"
    assert "".join(c.text for c in voice.text("2点")) == "两点"


def test_every_clip_has_a_distinct_file(book: MenuBook) -> None:
    """prompts build makes one file per clip; no two clips share a name with different text."""
    clips = book.all_clips()
    names: dict[str, str] = {}
    for clip in clips:
        assert names.setdefault(clip.name, clip.text) == clip.text
    assert "welcome" in names and "booking_readback-1" in names


def test_values_only_speak_clips_that_exist(book: MenuBook) -> None:
    """The clips of a filled readback are all among the files prompts build makes."""
    files = {c.name for c in book.all_clips()}
    variables = {"booking_no": "20261130001", "subject": "科目二", "site": "集美灌口考场",
                 "exam_date": "2026-11-30", "session": "上午8点半至10点半", "status": "已预约"}
    clips = book.prompt_clips("booking_readback", variables)
    assert {c.name for c in clips} <= files
    assert "".join(c.text for c in clips) == (
        "预约号二零二六幺幺三零零零幺，科目二，集美灌口考场，二零二六年十一月三十日上午八点半至十点半，状态：已预约。"
    )


# --- the interpreter ----------------------------------------------------------------------

NOON = datetime(2026, 11, 23, 12, 0, tzinfo=CHINA_TZ).timestamp()
NIGHT = datetime(2026, 11, 23, 23, 0, tzinfo=CHINA_TZ).timestamp()
OK = AgiReply(AgiStatus.SUCCESS, result="0")


class Caller:
    """A hand-driven Asterisk: `barge` keys stop interruptible prompts, `groups` answer reads."""

    def __init__(self, groups: list[str] | None = None, barge: list[str] | None = None,
                 actions: Mapping[str, Callable[[Mapping[str, str]], ActionResult]] | None = None,
                 hang_up_on: Callable[[Step], bool] | None = None, missing: frozenset[str] = frozenset()) -> None:
        self.groups = list(groups or [])
        self.missing = missing  # clip names Asterisk has no file for
        self.gone = False
        self.barge = list(barge or [])
        self.actions = actions or {}
        self.hang_up_on = hang_up_on
        self.steps: list[Step] = []

    def run(self, flow: CallFlow, now: float = NOON) -> Finish:
        step = flow.start(now)
        while not isinstance(step, Finish):
            self.steps.append(step)
            assert len(self.steps) < 1000
            if self.gone and not isinstance(step, RunAction):
                # As Asterisk: every command on a channel that is gone gets 511.
                step = flow.on_reply(AgiReply(AgiStatus.DEAD_CHANNEL, text="Command Not Permitted"), now)
                continue
            if self.hang_up_on is not None and self.hang_up_on(step) and not isinstance(step, RunAction):
                self.gone = True
                step = flow.on_reply(AgiReply(AgiStatus.SUCCESS, result="-1"), now)
                continue
            if isinstance(step, Speak) and step.clip.name in self.missing:
                # res_agi.c: STREAM FILE of a file that does not exist.
                step = flow.on_reply(AgiReply(AgiStatus.SUCCESS, result="-1", endpos=0), now)
                continue
            match step:
                case Speak():
                    if step.interruptible and self.barge:
                        key = self.barge.pop(0)
                        step = flow.on_reply(AgiReply(AgiStatus.SUCCESS, result=str(ord(key)), endpos=80), now)
                    else:
                        step = flow.on_reply(AgiReply(AgiStatus.SUCCESS, result="0", endpos=9000), now)
                case ReadDigits():
                    keys = self.groups.pop(0) if self.groups else ""
                    if step.line.startswith("WAIT FOR DIGIT"):
                        result = str(ord(keys[0])) if keys else "0"
                        step = flow.on_reply(AgiReply(AgiStatus.SUCCESS, result=result), now)
                    else:
                        done = keys.endswith("#")
                        step = flow.on_reply(AgiReply(AgiStatus.SUCCESS, result=keys.rstrip("#"), timeout=not done), now)
                case Control():
                    step = flow.on_reply(AgiReply(AgiStatus.SUCCESS, result="1"), now)
                case RunAction():
                    action = self.actions.get(step.name, lambda v: ActionResult("error"))
                    step = flow.on_action_result(action(step.variables), now)
        return step

    def lines(self) -> list[str]:
        return [s.line for s in self.steps if not isinstance(s, RunAction)]

    def played(self) -> list[str]:
        return [s.clip.name for s in self.steps if isinstance(s, Speak) and not s.clip.name.startswith("pause-")]


def flow_for(book: MenuBook, menu: str = "12123", hours: str = "08:30-17:30") -> CallFlow:
    return CallFlow(book, menu, service_hours=ServiceHours.parse(hours), agent_queue="12123-agents")


def test_prompts_that_take_keys_have_all_escape_digits(book: MenuBook) -> None:
    """Menu prompts are interruptible with every key; goodbyes take none."""
    caller = Caller(groups=["7", "8", "6"])
    finish = caller.run(flow_for(book))
    assert finish.outcome == "invalid_input"
    for step in caller.steps:
        if isinstance(step, Speak):
            expected = '""' if step.node == "goodbye_errors" else f'"{ALL_DIGITS}"'
            assert step.line.endswith(expected), step.line
    assert caller.lines()[-1] == "HANGUP"


def test_three_invalid_entries_end_the_call_politely(book: MenuBook) -> None:
    """Three wrong or empty entries at the main menu lead to the goodbye and a hang-up."""
    caller = Caller(groups=["7", "", "6"])
    finish = caller.run(flow_for(book))
    assert finish.outcome == "invalid_input"
    assert finish.path == ("greeting", "main", "goodbye_errors")
    played = caller.played()
    assert played.count("invalid_choice") == 1 and played.count("no_choice") == 1
    assert played[-1] == "too_many_errors"


def test_key_during_greeting_is_the_menu_choice(book: MenuBook) -> None:
    """A key pressed during the greeting skips the menu prompt and is taken as the choice."""
    caller = Caller(barge=["9"], groups=["", "", ""])
    finish = caller.run(flow_for(book))
    # 9 = repeat: the menu comes back, then three silences end the call.
    assert finish.path[:3] == ("greeting", "main", "main")
    first_main = [s for s in caller.steps if isinstance(s, (Speak, ReadDigits)) and s.node == "main"]
    assert isinstance(first_main[0], Speak) and first_main[0].clip.name == "main_menu"
    assert caller.played()[0] == "welcome"
    # the greeting's key answered the first main menu: no WAIT FOR DIGIT was needed for it
    reads = [s for s in caller.steps if isinstance(s, ReadDigits)]
    assert len(reads) == 3


def test_type_ahead_keeps_every_key(book: MenuBook) -> None:
    """Digits typed during the identity prompt: the first stops it, GET DATA reads the rest."""
    seen: dict[str, str] = {}

    def select(variables: Mapping[str, str]) -> ActionResult:
        seen.update(variables)
        return ActionResult("not_verified")

    caller = Caller(barge=["2", "2"], groups=["0261130001#", "123456", "", "", ""],
                    actions={"check_attempts": lambda v: ActionResult("ok"), "select_booking": select})
    caller.run(flow_for(book))
    assert seen["identity"] == "20261130001"
    reads = [s for s in caller.steps if isinstance(s, ReadDigits)]
    assert reads[0].line == 'GET DATA "" 8000 19'  # one key already typed of 20


def test_confirmation_other_key_keeps_booking(book: MenuBook) -> None:
    """At the read-back, any key but 1 keeps the booking (cancel_booking never runs)."""
    ran: list[str] = []

    def action(name: str, outcome: str) -> Callable[[Mapping[str, str]], ActionResult]:
        def run(variables: Mapping[str, str]) -> ActionResult:
            ran.append(name)
            return ActionResult(outcome, {"booking_no": "20261130001", "subject": "科目二",
                                          "site": "集美灌口考场", "exam_date": "2026-11-30",
                                          "session": "上午", "status": "已预约"})
        return run

    caller = Caller(groups=["2", "20261130001#", "123456", "3", "#"],
                    actions={"check_attempts": action("check_attempts", "ok"),
                             "select_booking": action("select_booking", "selected"),
                             "cancel_booking": action("cancel_booking", "cancelled")})
    finish = caller.run(flow_for(book))
    assert "cancel_booking" not in ran
    assert "cancel_kept" in finish.path and finish.outcome == "completed"


def test_hangup_reply_ends_call_and_runs_final_action(book: MenuBook) -> None:
    """A result of -1 mid-reminder ends the call as caller_hangup; the final action still runs
    and sees the reminder as not heard."""
    recorded: dict[str, str] = {}

    def record(variables: Mapping[str, str]) -> ActionResult:
        recorded.update(variables)
        return ActionResult("recorded")

    caller = Caller(
        actions={"load_reminder": lambda v: ActionResult("points_reached_9", {"points": "9"}),
                 "record_reminder": record},
        hang_up_on=lambda s: isinstance(s, Speak) and s.clip.name.startswith("reminder_points"),
    )
    flow = CallFlow(book, "notify", service_hours=ServiceHours.parse("08:30-17:30"),
                    agent_queue="q", variables={"notification_id": "n-1"})
    finish = caller.run(flow)
    assert finish.outcome == "caller_hangup"
    assert recorded["notification_id"] == "n-1" and "REMINDER_HEARD" not in recorded


def test_reminder_heard_sets_channel_variable(book: MenuBook) -> None:
    """A reminder played to its end sets REMINDER_HEARD=1 before offering to repeat."""
    recorded: dict[str, str] = {}
    caller = Caller(groups=[""], actions={
        "load_reminder": lambda v: ActionResult("other"),
        "record_reminder": lambda v: (recorded.update(v), ActionResult("recorded"))[1],
    })
    flow = CallFlow(book, "notify", service_hours=ServiceHours.parse("08:30-17:30"),
                    agent_queue="q", variables={"notification_id": "n-2"})
    finish = caller.run(flow)
    assert finish.outcome == "completed"
    assert 'SET VARIABLE REMINDER_HEARD "1"' in caller.lines()
    assert recorded["REMINDER_HEARD"] == "1"
    reminder = [s for s in caller.steps if isinstance(s, Speak) and s.node == "generic"]
    assert reminder and all(s.line.endswith('""') for s in reminder)


def test_socket_closed_while_waiting(book: MenuBook) -> None:
    """on_hangup while a command is outstanding finishes the call as caller_hangup."""
    flow = flow_for(book)
    step = flow.start(NOON)
    assert isinstance(step, Control) and step.line == "ANSWER"
    step = flow.on_reply(OK, NOON)
    assert isinstance(step, Speak)
    finish = flow.on_hangup(NOON)
    assert isinstance(finish, Finish) and finish.outcome == "caller_hangup"
    assert flow.on_hangup(NOON) == finish


def test_dead_channel_reply_is_hangup(book: MenuBook) -> None:
    """511 to a command means the caller is gone."""
    flow = flow_for(book)
    flow.start(NOON)
    step = flow.on_reply(AgiReply(AgiStatus.DEAD_CHANNEL, text="Command Not Permitted"), NOON)
    assert isinstance(step, Finish) and step.outcome == "caller_hangup"


def test_refused_command_is_error(book: MenuBook) -> None:
    """510 or 520 to our own command is our bug: the call ends with outcome error."""
    flow = flow_for(book)
    flow.start(NOON)
    step = flow.on_reply(AgiReply(AgiStatus.INVALID_COMMAND, text="Invalid or unknown command"), NOON)
    assert isinstance(step, Finish) and step.outcome == "error"


def test_transfer_within_service_hours(book: MenuBook) -> None:
    """0 within the hours sets the queue variable for the dialplan and ends the script."""
    caller = Caller(groups=["0"])
    finish = caller.run(flow_for(book), now=NOON)
    assert finish.outcome == "transferred"
    assert caller.lines()[-1] == f'SET VARIABLE {TRANSFER_VARIABLE} "12123-agents"'


def test_transfer_outside_service_hours(book: MenuBook) -> None:
    """0 at night plays the hours instead and returns to the menu."""
    caller = Caller(groups=["0", "", "", ""])
    finish = caller.run(flow_for(book), now=NIGHT)
    assert "agent_closed" in finish.path and finish.outcome == "invalid_input"
    spoken = "".join(s.clip.text for s in caller.steps if isinstance(s, Speak) and s.node == "agent_closed")
    assert spoken == "人工服务时间为每天上午八点半至下午五点半，请在服务时间内来电。"
    assert not any(TRANSFER_VARIABLE in line for line in caller.lines())


def test_step_limit_ends_endless_repeat(book: MenuBook) -> None:
    """A caller who presses 9 forever is cut off at max_steps."""
    caller = Caller(groups=["9"] * 400)
    finish = caller.run(flow_for(book))
    assert finish.outcome == "step_limit"
    assert caller.lines()[-1] == "HANGUP"


def test_action_error_goes_to_on_error(book: MenuBook) -> None:
    """An action answering error leads to the menu's on_error node."""
    caller = Caller(groups=["1"], actions={"check_attempts": lambda v: ActionResult("error")})
    finish = caller.run(flow_for(book))
    assert finish.outcome == "error"
    assert finish.path[-1] == "system_error"


def test_service_hours() -> None:
    """Hours are China time; equal ends mean around the clock; a window may cross midnight."""
    hours = ServiceHours.parse("08:30-17:30")
    assert hours.open_at(NOON) and not hours.open_at(NIGHT)
    assert ServiceHours.parse("08:00-08:00").open_at(NIGHT)
    assert ServiceHours.parse("22:00-06:00").open_at(NIGHT)
    with pytest.raises(ValueError):
        ServiceHours.parse("8:30-17:30")


# --- Mandarin as callers expect it ------------------------------------------------------


def test_numbers_to_dial_are_read_with_yao(book: MenuBook) -> None:
    """Booking and phone numbers and 12123 are read digit by digit with 1 as 幺; small
    quantities stay numbers (十二分)."""
    voice = book.voice
    assert "".join(c.text for c in voice.value("20261130001", "digits")) == "二零二六幺幺三零零零幺"
    assert "".join(c.text for c in voice.text("12123，12分")) == "幺二幺二三十二分"


def test_dates_and_times_read_naturally() -> None:
    """A date near the call's day goes without its year (十二月九日); times are 上午八点半,
    下午两点; a slot 上午八点半至十点半."""
    today = date(2026, 12, 2)
    assert chinese_date(date(2026, 12, 9), today) == "十二月九日"
    assert chinese_date(date(2027, 1, 5), today) == "一月五日"
    assert chinese_date(date(2030, 11, 23), today) == "二零三零年十一月二十三日"
    assert spoken_time("08:30") == "上午8点半" and spoken_time("14:00") == "下午2点"
    assert spoken_time("08:30-10:30") == "上午8点半至10点半"
    assert spoken_time("11:30-13:05") == "上午11点半至下午1点05分"
    assert spoken_time("上午") == "上午"
    voice = Voice([])
    assert "".join(c.text for c in voice.value("2026-12-09", "date", today)) == "十二月九日"
    assert "".join(c.text for c in voice.value("14:00-16:30", "time")) == "下午两点至四点半"


def test_punctuation_is_a_pause_between_clips(book: MenuBook) -> None:
    """A comma or full stop that ends a part is followed by a short or long silence, so
    "…状态：已预约。确认取消…" does not run together; the pauses are files prompts build makes."""
    variables = {"booking_no": "20261130001", "subject": "科目二", "site": "集美灌口考场",
                 "exam_date": "2026-11-30", "session": "上午", "status": "已预约"}
    names = [c.name for c in book.prompt_clips("booking_readback", variables)]
    assert names[-1] == "pause-long"  # after 。
    assert names[names.index("booking_readback-1") + 1] != "pause-short"  # 预约号 runs into the number
    assert names.count("pause-short") >= 4  # the commas and the colon
    files = {c.name for c in book.all_clips()}
    assert {"pause-short", "pause-long"} <= files


def test_missing_prompt_is_not_a_hangup(book: MenuBook) -> None:
    """STREAM FILE of a missing file answers result=-1 like a hang-up; the next reply is
    normal, so the menu goes on, and the prompt is reported by name (once per play)."""
    reported: list[str] = []
    caller = Caller(groups=["1", "#"], missing=frozenset({"welcome", "main_menu"}),
                    actions={"check_attempts": lambda v: ActionResult("limited")})
    flow = CallFlow(book, "12123", service_hours=ServiceHours.parse("08:30-17:30"), agent_queue="q",
                    on_missing_prompt=reported.append)
    finish = caller.run(flow)
    assert finish.outcome != "caller_hangup"
    assert "status_gate" in finish.path and "too_many_attempts" in finish.path
    assert reported[:2] == ["12123/welcome", "12123/main_menu"] and reported == flow.missing_prompts
    assert reported == ["12123/" + name for name in caller.played() if name in caller.missing]


def test_hangup_after_a_suspect_prompt_reports_nothing(book: MenuBook) -> None:
    """-1 to STREAM FILE, then 511: the caller hung up; nothing is reported missing."""
    reported: list[str] = []
    caller = Caller(hang_up_on=lambda s: isinstance(s, Speak) and s.clip.name == "welcome")
    flow = CallFlow(book, "12123", service_hours=ServiceHours.parse("08:30-17:30"), agent_queue="q",
                    on_missing_prompt=reported.append)
    finish = caller.run(flow)
    assert finish.outcome == "caller_hangup" and finish.path[0] == "greeting"
    assert reported == []


def test_missing_reminder_text_is_not_recorded_heard(book: MenuBook) -> None:
    """A prompt that must be heard (the reminder) answered -1 is judged at once with CHANNEL
    STATUS: missing, the call goes on (offer to repeat, goodbye) but REMINDER_HEARD is not set."""
    recorded: dict[str, str] = {}
    reported: list[str] = []
    caller = Caller(groups=[""], missing=frozenset({"reminder_generic"}), actions={
        "load_reminder": lambda v: ActionResult("other"),
        "record_reminder": lambda v: (recorded.update(v), ActionResult("recorded"))[1],
    })
    flow = CallFlow(book, "notify", service_hours=ServiceHours.parse("08:30-17:30"), agent_queue="q",
                    variables={"notification_id": "n-3"}, on_missing_prompt=reported.append)
    finish = caller.run(flow)
    assert finish.outcome == "completed" and "bye" in finish.path
    assert reported == ["12123/reminder_generic"] and flow.unheard
    lines = caller.lines()
    assert lines[lines.index('STREAM FILE 12123/reminder_generic ""') + 1] == "CHANNEL STATUS"
    assert 'SET VARIABLE REMINDER_HEARD "1"' not in lines and "REMINDER_HEARD" not in recorded


def test_hangup_during_a_reminder_is_told_by_the_channel_status_probe(book: MenuBook) -> None:
    """-1 to the reminder, then 511 to CHANNEL STATUS: the caller hung up; nothing missing."""
    reported: list[str] = []
    caller = Caller(hang_up_on=lambda s: isinstance(s, Speak) and s.clip.name == "reminder_generic",
                    actions={"load_reminder": lambda v: ActionResult("other"),
                             "record_reminder": lambda v: ActionResult("recorded")})
    flow = CallFlow(book, "notify", service_hours=ServiceHours.parse("08:30-17:30"), agent_queue="q",
                    variables={"notification_id": "n-4"}, on_missing_prompt=reported.append)
    finish = caller.run(flow)
    assert finish.outcome == "caller_hangup" and reported == [] and not flow.unheard
