"""Voice menus: the graph in ivr.yaml, its validation, and a sans-IO interpreter.

Theory of operation
-------------------
A menu is a graph of named nodes (config/ivr.yaml, documented in docs/ivr.md):

* ``play``: speak prompts, go to ``next``;
* ``collect``: speak a prompt and read keys (``min_digits``..``max_digits``, ``#`` ends a
  longer entry, ``timeout_seconds`` of silence ends it too); go where ``branches`` says for
  that input, or store it (``store_as``) and go to ``next``; an empty or invalid entry plays
  ``invalid`` / ``no_input`` and asks again, ``retries`` times in all, then goes to
  ``on_invalid`` / ``on_timeout``;
* ``action``: run a named domain action (gateway/ivr/actions.py) with the call's
  variables; go where ``outcomes`` says for its outcome (``next`` for the rest; the
  menu's ``on_error`` for ``error``);
* ``transfer``: within the service hours hand the call to the agent queue, else go to
  ``closed``;
* ``hangup``: speak the prompts and hang up, ending the call with ``outcome``.

Any node may ``set`` channel variables (SET VARIABLE) when it is entered.

Prompts are declared once, id -> Mandarin text, and are played as sound files made by
``gateway prompts build``.  A prompt text may hold placeholders for the call's variables,
``{site}``, ``{booking_no:digits}``, ``{points:number}``, ``{date:date}``, ``{plate:chars}``:
the literal parts become sound files of their own and the values are spoken from a fixed
inventory of clips (numerals and the other characters of `CHARACTER_CLIPS`, Latin
letters, and the vocabulary words: sites, statuses, sessions).  Stock Asterisk has no
Mandarin digit or date sounds, so we build numbers ("三十", "二零二六年十二月七日") from our
own clips rather than with SAY NUMBER / SAY DATE.  One exception: ``{x:speech}`` plays a
free text (a reminder's wording) that an action has synthesised for the call.

Loading checks everything that can be checked without a call (unknown node, unreachable
node, missing prompt, bad placeholder, unknown action or outcome, digits a keypad cannot
send, branch keys the collect can never produce) and raises one ConfigError listing every
problem as ``file: path: problem``.

The interpreter, `CallFlow`, is sans-IO: it yields `Step` s (an AGI command line to send,
a domain action to run, or the end of the call) and is fed the AGI replies and action
results, with the time as a number.  The FastAGI server and ``gateway ivr-sim`` both drive
it.  Asterisk needs one command at a time, which is what a generator gives.

Keys are never lost: every prompt the caller may interrupt is played with STREAM FILE
and all twelve escape digits; the key that stopped it becomes the first key of the next
entry (the rest of that entry is then read with GET DATA or WAIT FOR DIGIT), and later
interruptible prompts are skipped while keys are pending.  Prompts that must be heard
(goodbyes, the reminder text) take no escape digits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, read_yaml
from gateway.ivr import agi
from gateway.ivr.agi import ALL_DIGITS, AgiReply, AgiStatus

__all__ = [
    "CHARACTER_CLIPS",
    "ActionNode",
    "ActionResult",
    "ActionSpec",
    "CallFlow",
    "Clip",
    "CollectNode",
    "Control",
    "Finish",
    "HangupNode",
    "Menu",
    "MenuBook",
    "PlayNode",
    "ReadDigits",
    "RunAction",
    "ServiceHours",
    "Speak",
    "Step",
    "TransferNode",
    "TRANSFER_VARIABLE",
    "check_menus_file",
    "chinese_date",
    "chinese_number",
    "counted",
    "dial_digits",
    "spoken_clock",
    "spoken_time",
    "speech_clip",
    "load_menus",
    "parse_menus",
]

# The channel variable the dialplan reads to queue the call after the AGI ends
# (dialplans/extensions.conf): Queue(${IVR_TRANSFER_QUEUE}).
TRANSFER_VARIABLE = "IVR_TRANSFER_QUEUE"

_NUMERALS = "零一二三四五六七八九"
# Numbers one dials or quotes (phone and booking numbers, 12123) are read digit by digit,
# 1 as 幺 (yāo), as Chinese callers say them: 12123 is 幺二幺二三.
_DIAL_DIGITS = "零幺二三四五六七八九"
_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼港澳台"
# Single characters with a clip of their own: numerals (and 幺) and the units of numbers,
# dates and times (上午八点半), the province abbreviations that open a plate, and Latin
# letters (plates, C1).
CHARACTER_CLIPS = (
    _NUMERALS
    + "幺十百千万两年月日号点分至第场上下中晚午半"
    + _PROVINCES
    + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# Silences played at punctuation, so that sentences and clauses do not run together
# ("…状态：已预约。确认取消…"): made by sox, not spoken.  Durations from Mandarin IVR
# practice: about a quarter second at a comma, half a second at a full stop.
PAUSE_SHORT = "pause-short"
PAUSE_LONG = "pause-long"
PAUSE_SECONDS = {PAUSE_SHORT: 0.25, PAUSE_LONG: 0.5}
_SHORT_STOPS = "，,、；;：:"
_LONG_STOPS = "。！？.!?"
# A digit run this long is a number to dial or quote, not a quantity.
DIAL_NUMBER_MIN_DIGITS = 5
_CHARACTER_SET = frozenset(CHARACTER_CLIPS)
_FORMATS = ("text", "digits", "number", "date", "time", "chars", "speech")
_ID = re.compile(r"[a-z][a-z0-9_]{0,47}")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_KEYS = re.compile(r"[0-9*#]+")


# ---------------------------------------------------------------------------------------
# Speech
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """One sound file and what it says.  `name` is relative to the sound prefix."""

    name: str
    text: str


def chinese_number(n: int) -> str:
    """A whole number as it is read in Mandarin: 0 零, 10 十, 12 十二, 30 三十, 101 一百零一,
    2026 两千零二十六, 100000 十万.  Negative numbers get 负."""
    if n < 0:
        return "负" + chinese_number(-n)
    if n == 0:
        return "零"
    if n >= 100_000_000:
        return chinese_number(n // 100_000_000) + "亿" + _after_unit(n % 100_000_000, 10_000_000)
    if n >= 10_000:
        return _below_10000(n // 10_000, leading=True) + "万" + _after_unit(n % 10_000, 1000)
    return _below_10000(n, leading=True)


def _after_unit(rest: int, top: int) -> str:
    if rest == 0:
        return ""
    # 10050 -> 一万零五十: a zero when the next place down is empty.
    return ("零" if rest < top else "") + _below_10000(rest, leading=False)


def _below_10000(n: int, *, leading: bool) -> str:
    parts: list[str] = []
    zero = False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit = (n // value) % 10
        if digit == 0:
            zero = bool(parts)
            continue
        if zero:
            parts.append("零")
            zero = False
        if unit == "十" and digit == 1 and not parts and leading:
            parts.append("十")  # 十二, not 一十二, at the head of a number
        elif digit == 2 and unit in ("千",) and not parts:
            parts.append("两" + unit)
        else:
            parts.append(_NUMERALS[digit] + unit)
    return "".join(parts)


def speech_clip(text: str) -> Clip:
    """The clip of a free text synthesised during the call (``{x:speech}``): its file is
    ``tts-<hash of the text>``, made by the action that provides the text."""
    return Clip(f"tts-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}", text)


def counted(n: int) -> str:
    """A number before a measure word: 2 is 两 (两辆, 两点, 两分), the rest as chinese_number."""
    return "两" if n == 2 else chinese_number(n)


def chinese_date(day: date, today: date | None = None) -> str:
    """十二月七日 when the date is near `today` (within half a year: the year goes
    without saying), else 二零二六年十二月七日 (the year digit by digit)."""
    month_day = f"{chinese_number(day.month)}月{chinese_number(day.day)}日"
    if today is not None and abs((day - today).days) <= 183:
        return month_day
    return "".join(_NUMERALS[int(d)] for d in f"{day.year:04d}") + "年" + month_day


def dial_digits(text: str) -> str:
    """Digits as one reads a number to dial: 12123 -> 幺二幺二三 (other characters dropped)."""
    return "".join(_DIAL_DIGITS[int(d)] for d in text if d.isascii() and d.isdigit())


def half_day(hour: int) -> str:
    """凌晨 / 上午 / 中午 / 下午 / 晚上 for an hour of the day, as times are announced."""
    if hour < 6:
        return "凌晨"
    if hour < 12:
        return "上午"
    if hour < 13:
        return "中午"
    if hour < 18:
        return "下午"
    return "晚上"


def spoken_clock(hour: int, minute: int, *, with_half_day: bool = True) -> str:
    """8:30 -> 上午8点半, 14:00 -> 下午2点, 17:05 -> 下午5点05分: the text a caller hears
    (the text voice reads the digits: 上午八点半, 下午两点)."""
    h12 = hour if hour <= 12 else hour - 12
    if minute == 0:
        clock = f"{h12}点"
    elif minute == 30:
        clock = f"{h12}点半"
    else:
        clock = f"{h12}点{minute:02d}分" if minute < 10 else f"{h12}点{minute}分"
    return (half_day(hour) if with_half_day else "") + clock


def spoken_time(text: str) -> str:
    """A session or time as a caller hears it: 上午 stays 上午; 08:30 -> 上午8点半;
    08:30-10:30 -> 上午8点半至10点半; 11:30-13:00 -> 上午11点半至中午12点... anything
    else unchanged."""
    clocks = re.findall(r"(\d{1,2})[:：](\d{2})", text)
    rest = re.sub(r"\d{1,2}[:：]\d{2}", "", text).strip()
    if len(clocks) == 1 and not rest:
        return spoken_clock(int(clocks[0][0]), int(clocks[0][1]))
    if len(clocks) == 2 and rest in ("-", "~", "～", "至", "—", "–"):
        (h1, m1), (h2, m2) = ((int(h), int(m)) for h, m in clocks)
        same = half_day(h1) == half_day(h2)
        return f"{spoken_clock(h1, m1)}至{spoken_clock(h2, m2, with_half_day=not same)}"
    return text


class Voice:
    """Turns text and values into clips from the fixed inventory."""

    def __init__(self, vocabulary: Iterable[str]) -> None:
        # Longest first, so "集美灌口考场" wins over a shorter word inside it.
        self.vocabulary = tuple(sorted(set(vocabulary), key=lambda w: (-len(w), w)))
        self._words = frozenset(self.vocabulary)

    @staticmethod
    def word_clip(word: str) -> Clip:
        digest = hashlib.sha1(word.encode("utf-8")).hexdigest()[:12]
        return Clip(f"word-{digest}", word)

    @staticmethod
    def pause_clip(punctuation: str) -> Clip | None:
        """The silence after a punctuation mark (None for other characters)."""
        if punctuation in _LONG_STOPS:
            return Clip(PAUSE_LONG, "")
        if punctuation in _SHORT_STOPS:
            return Clip(PAUSE_SHORT, "")
        return None

    @staticmethod
    def character_clip(character: str) -> Clip | None:
        if character.isascii() and character.isdigit():
            character = _NUMERALS[int(character)]
        character = character.upper() if character.isascii() else character
        if character not in _CHARACTER_SET:
            return None
        return Clip(f"char-{ord(character):04x}", character)

    def text(self, text: str) -> list[Clip]:
        """Words of the vocabulary whole, runs of digits as numbers, the rest by character
        (characters without a clip are left out: punctuation, and words to add)."""
        clips: list[Clip] = []
        i = 0
        while i < len(text):
            word = next((w for w in self.vocabulary if text.startswith(w, i)), None)
            if word is not None:
                clips.append(self.word_clip(word))
                i += len(word)
                continue
            run = re.match(r"[0-9]+", text[i:])
            if run is not None:
                digits = run.group()
                # A year is read digit by digit (二零二六年), a number to dial or quote with
                # 幺 (幺二幺二三), other numbers as quantities.
                year = len(digits) == 4 and text.startswith("年", i + 4)
                if len(digits) >= DIAL_NUMBER_MIN_DIGITS:
                    clips.extend(self.chars(dial_digits(digits)))
                else:
                    clips.extend(self.chars(digits if year else counted(int(digits))))
                i += len(digits)
                continue
            clip = self.character_clip(text[i]) or self.pause_clip(text[i])
            if clip is not None:
                clips.append(clip)
            i += 1
        return clips

    def chars(self, text: str) -> list[Clip]:
        """Character by character (plates, digit strings); vocabulary is not consulted."""
        return [c for c in (self.character_clip(ch) for ch in text) if c is not None]

    def value(self, value: str, form: str, today: date | None = None) -> list[Clip]:
        """A variable's value in the placeholder's format (`today`: the call's date, so
        that a date this year is said without its year)."""
        if form == "digits":
            return self.chars(dial_digits(value))
        if form == "number":
            try:
                return self.chars(counted(int(value)))
            except ValueError:
                return self.text(value)
        if form == "date":
            try:
                return self.chars(chinese_date(date.fromisoformat(value), today))
            except ValueError:
                return self.text(value)
        if form == "chars":
            return self.chars(value)
        if form == "speech":
            return [speech_clip(value)] if value.strip() else []
        if form == "time":
            return self.text(spoken_time(value))
        return self.text(value)


@dataclass(frozen=True)
class Placeholder:
    variable: str
    form: str


_SILENT = re.compile(r"[\s，。、；：！？,.;:!?（）()“”\"'…—\-]*")


@dataclass(frozen=True)
class Prompt:
    """A prompt: its literal parts are sound files, its placeholders values of the call.

    `parts` holds, in order, a `Clip` per voiced literal part (``<id>``, or ``<id>-1``,
    ``<id>-2``... when placeholders cut the text), a plain str for a literal that is only
    punctuation (no sound file; shown by ivr-sim), and a `Placeholder` per value.
    """

    id: str
    text: str
    parts: tuple[Clip | str | Placeholder, ...]

    def literal_clips(self) -> list[Clip]:
        """The sound files of this prompt's literal parts."""
        return [p for p in self.parts if isinstance(p, Clip)]


def parse_prompt(prompt_id: str, text: str) -> Prompt:
    """Split a prompt text at its placeholders; raises ValueError with the reason."""
    pieces: list[str | Placeholder] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > position:
            pieces.append(text[position : match.start()])
        name, _, form = match[1].partition(":")
        form = form or "text"
        if not _VARIABLE.fullmatch(name):
            raise ValueError(f"placeholder {{{match[1]}}} does not name a variable")
        if form not in _FORMATS:
            raise ValueError(f"placeholder {{{match[1]}}}: format '{form}' is not one of {', '.join(_FORMATS)}")
        pieces.append(Placeholder(name, form))
        position = match.end()
    if position < len(text):
        pieces.append(text[position:])
    for piece in pieces:
        if isinstance(piece, str) and ("{" in piece or "}" in piece):
            raise ValueError("unbalanced { or }")
    voiced = [p for p in pieces if isinstance(p, str) and not _SILENT.fullmatch(p)]
    if not voiced and not any(isinstance(p, Placeholder) for p in pieces):
        raise ValueError("nothing to say")
    parts: list[Clip | str | Placeholder] = []
    n = 0
    for piece in pieces:
        if isinstance(piece, Placeholder) or _SILENT.fullmatch(piece):
            parts.append(piece)
        else:
            n += 1
            parts.append(Clip(prompt_id if len(voiced) == 1 and len(pieces) == 1 else f"{prompt_id}-{n}", piece))
    return Prompt(prompt_id, text, tuple(parts))


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionSpec:
    """What the menu may know of a domain action: its outcomes and the words it may speak
    (status labels...) that need clips of their own."""

    outcomes: frozenset[str]
    words: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PlayNode:
    id: str
    prompts: tuple[str, ...]
    next: str
    interruptible: bool = True
    set: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CollectNode:
    id: str
    prompts: tuple[str, ...]
    min_digits: int
    max_digits: int
    timeout_seconds: float
    retries: int
    invalid: tuple[str, ...]
    no_input: tuple[str, ...]
    branches: Mapping[str, str]
    default: str | None
    store_as: str | None
    next: str | None
    on_invalid: str
    on_timeout: str
    terminator: str = "#"
    set: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ActionNode:
    id: str
    action: str
    outcomes: Mapping[str, str]
    next: str | None
    set: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TransferNode:
    id: str
    prompts: tuple[str, ...]
    closed: str
    queue: str | None
    set: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HangupNode:
    id: str
    prompts: tuple[str, ...]
    outcome: str
    set: tuple[tuple[str, str], ...] = ()


Node = PlayNode | CollectNode | ActionNode | TransferNode | HangupNode


@dataclass(frozen=True)
class Menu:
    name: str
    start: str
    on_error: str
    nodes: Mapping[str, Node]
    max_steps: int = 200
    final_action: str | None = None


@dataclass(frozen=True)
class MenuBook:
    """Everything loaded from one ivr.yaml."""

    source: str
    language: str
    sound_prefix: str
    tts_voice: str
    prompts: Mapping[str, Prompt]
    menus: Mapping[str, Menu]
    voice: Voice = field(compare=False)

    def clip_file(self, clip: Clip) -> str:
        """The name STREAM FILE takes: ``12123/welcome``."""
        return f"{self.sound_prefix}/{clip.name}" if self.sound_prefix else clip.name

    def prompt_clips(self, prompt_id: str, variables: Mapping[str, str], today: date | None = None) -> list[Clip]:
        """The clips of a prompt with the call's variables filled in.  Punctuation between
        parts has no sound file of its own: it is appended to the text of the clip before
        it (so that ivr-sim prints the sentence as written) and played as a pause, as is
        the punctuation that ends a literal part, so clauses do not run together."""
        clips: list[Clip] = []
        for part in self.prompts[prompt_id].parts:
            if isinstance(part, Clip):
                clips.append(part)
                pause = Voice.pause_clip(part.text.rstrip()[-1:])
            elif isinstance(part, Placeholder):
                clips.extend(self.voice.value(variables.get(part.variable, ""), part.form, today))
                continue
            else:
                if clips:
                    clips[-1] = Clip(clips[-1].name, clips[-1].text + part)
                marks = [Voice.pause_clip(ch) for ch in part]
                pause = next((m for m in marks if m is not None and m.name == PAUSE_LONG), None) or next(
                    (m for m in marks if m is not None), None)
            if pause is not None and (not clips or clips[-1].name not in PAUSE_SECONDS):
                clips.append(pause)
        return clips

    def all_clips(self) -> list[Clip]:
        """Every sound file the menus can play (what `gateway prompts build` makes)."""
        seen: dict[str, Clip] = {}
        for prompt in self.prompts.values():
            for clip in prompt.literal_clips():
                seen.setdefault(clip.name, clip)
        for word in self.voice.vocabulary:
            clip = Voice.word_clip(word)
            seen.setdefault(clip.name, clip)
        for character in CHARACTER_CLIPS:
            char_clip = Voice.character_clip(character)
            assert char_clip is not None
            seen.setdefault(char_clip.name, char_clip)
        for pause in PAUSE_SECONDS:
            seen.setdefault(pause, Clip(pause, ""))
        return list(seen.values())


# ---------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------

_TOP_KEYS = {"language", "sound_prefix", "tts_voice", "prompts", "vocabulary", "menus"}
_MENU_KEYS = {"start", "on_error", "max_steps", "final_action", "nodes"}
_COMMON_KEYS = {"kind", "set"}
_NODE_KEYS = {
    "play": {"prompts", "next", "interruptible"},
    "collect": {"prompt", "prompts", "min_digits", "max_digits", "terminator", "timeout_seconds", "retries",
                "invalid", "no_input", "branches", "default", "store_as", "next", "on_invalid", "on_timeout"},
    "action": {"action", "outcomes", "next"},
    "transfer": {"prompts", "closed", "queue"},
    "hangup": {"prompts", "outcome"},
}


def _text(value: Any) -> str | None:
    """A YAML scalar as the text it was written as (YAML 1.1 reads 1 and 01 as numbers)."""
    if isinstance(value, str):
        return value
    source = getattr(value, "source", None)
    if isinstance(source, str):
        return source
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


class _Checker:
    def __init__(self, file: str, actions: Mapping[str, ActionSpec]) -> None:
        self.file = file
        self.actions = actions
        self.problems: list[str] = []
        self.prompt_ids: set[str] = set()

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{self.file}: {path}: {message}")

    def known_keys(self, data: Mapping[Any, Any], allowed: set[str], path: str) -> None:
        for key in data:
            if str(key) not in allowed:
                self.problem(f"{path}.{key}", "unknown key")

    def integer(self, data: Mapping[str, Any], key: str, path: str, default: int, low: int, high: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or getattr(value, "is_bool", False) or not isinstance(value, int):
            self.problem(f"{path}.{key}", f"expected a whole number, got {value!r}")
            return default
        if not low <= value <= high:
            self.problem(f"{path}.{key}", f"{value} is out of range [{low}, {high}]")
            return default
        return int(value)

    def number(self, data: Mapping[str, Any], key: str, path: str, default: float, low: float, high: float) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or getattr(value, "is_bool", False) or not isinstance(value, (int, float)):
            self.problem(f"{path}.{key}", f"expected a number, got {value!r}")
            return default
        if not low <= value <= high:
            self.problem(f"{path}.{key}", f"{value} is out of range [{low:g}, {high:g}] seconds")
            return default
        return float(value)

    def prompt_list(self, value: Any, path: str, *, required: bool) -> tuple[str, ...]:
        if value is None:
            if required:
                self.problem(path, "required: a prompt id or a list of them")
            return ()
        items = value if isinstance(value, list) else [value]
        ids: list[str] = []
        for i, item in enumerate(items):
            where = f"{path}[{i}]" if isinstance(value, list) else path
            text = _text(item)
            if text is None:
                self.problem(where, f"expected a prompt id, got {item!r}")
            elif text not in self.prompt_ids:
                self.problem(where, f"missing prompt '{text}' (declare it under prompts:)")
            else:
                ids.append(text)
        if required and not items:
            self.problem(path, "required: at least one prompt")
        return tuple(ids)

    def reference(self, value: Any, path: str, *, required: bool = True) -> str | None:
        if value is None:
            if required:
                self.problem(path, "required: a node id")
            return None
        text = _text(value)
        if text is None:
            self.problem(path, f"expected a node id, got {value!r}")
        return text

    def channel_variables(self, value: Any, path: str) -> tuple[tuple[str, str], ...]:
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.problem(path, "expected a mapping of channel variable -> value")
            return ()
        pairs: list[tuple[str, str]] = []
        for name, item in value.items():
            text = _text(item)
            if not _VARIABLE.fullmatch(str(name)):
                self.problem(f"{path}.{name}", "a channel variable name is letters, digits and _")
            elif text is None:
                self.problem(f"{path}.{name}", f"expected a value, got {item!r}")
            else:
                pairs.append((str(name), text))
        return tuple(pairs)


def parse_menus(data: Any, *, source: str, actions: Mapping[str, ActionSpec]) -> MenuBook:
    """Build and check a MenuBook from parsed YAML; raises ConfigError with every problem.

    `actions`: the catalogue of domain actions (gateway.ivr.actions.CATALOGUE).
    """
    check = _Checker(source, actions)
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (top level): expected a mapping with prompts: and menus:"])
    check.known_keys(data, _TOP_KEYS, "(top level)")
    language = _text(data.get("language", "zh")) or "zh"
    sound_prefix = _text(data.get("sound_prefix", "12123")) or ""
    if sound_prefix and not re.fullmatch(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*", sound_prefix):
        check.problem("sound_prefix", "a folder name of letters, digits, - and _")
    tts_voice = _text(data.get("tts_voice", "cmn")) or "cmn"

    prompts: dict[str, Prompt] = {}
    raw_prompts = data.get("prompts")
    if not isinstance(raw_prompts, dict) or not raw_prompts:
        check.problem("prompts", "required: a mapping of prompt id -> Mandarin text")
        raw_prompts = {}
    for key, value in raw_prompts.items():
        prompt_id = str(key)
        path = f"prompts.{prompt_id}"
        if not _ID.fullmatch(prompt_id):
            check.problem(path, "a prompt id is lower-case letters, digits and _ (it names a sound file)")
            continue
        text = value if isinstance(value, str) else None
        if not text or not text.strip():
            check.problem(path, "missing prompt text")
            continue
        try:
            prompts[prompt_id] = parse_prompt(prompt_id, text.strip())
        except ValueError as e:
            check.problem(path, str(e))
    check.prompt_ids = set(prompts)

    vocabulary: set[str] = set()
    raw_vocabulary = data.get("vocabulary", [])
    if not isinstance(raw_vocabulary, list):
        check.problem("vocabulary", "expected a list of words")
        raw_vocabulary = []
    for i, word in enumerate(raw_vocabulary):
        if not isinstance(word, str) or not word.strip():
            check.problem(f"vocabulary[{i}]", "expected a word")
        else:
            vocabulary.add(word.strip())
    for spec in actions.values():
        vocabulary |= spec.words

    menus: dict[str, Menu] = {}
    raw_menus = data.get("menus")
    if not isinstance(raw_menus, dict) or not raw_menus:
        check.problem("menus", "required: a mapping of script name -> menu")
        raw_menus = {}
    for key, value in raw_menus.items():
        name = _text(key) or str(key)
        menu = _parse_menu(check, name, value, f"menus.{name}")
        if menu is not None:
            menus[name] = menu
    if check.problems:
        raise ConfigError(check.problems)
    return MenuBook(source, language, sound_prefix, tts_voice, prompts, menus, Voice(vocabulary))


def _parse_menu(check: _Checker, name: str, data: Any, path: str) -> Menu | None:
    if not isinstance(data, dict):
        check.problem(path, "expected a mapping with start: and nodes:")
        return None
    check.known_keys(data, _MENU_KEYS, path)
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        check.problem(f"{path}.nodes", "required: a mapping of node id -> node")
        return None
    nodes: dict[str, Node] = {}
    for key, value in raw_nodes.items():
        node_id = _text(key) or str(key)
        if not _ID.fullmatch(node_id):
            check.problem(f"{path}.nodes.{node_id}", "a node id is lower-case letters, digits and _")
            continue
        node = _parse_node(check, node_id, value, f"{path}.nodes.{node_id}")
        if node is not None:
            nodes[node_id] = node
    start = check.reference(data.get("start"), f"{path}.start")
    on_error = check.reference(data.get("on_error"), f"{path}.on_error")
    max_steps = check.integer(data, "max_steps", path, 200, 10, 10_000)
    final_action = _text(data.get("final_action")) if data.get("final_action") is not None else None
    if final_action is not None and final_action not in check.actions:
        check.problem(f"{path}.final_action", f"unknown action '{final_action}'")
    if len(nodes) != len(raw_nodes):
        return None  # node problems already reported; references would only repeat them
    for label, target in (("start", start), ("on_error", on_error)):
        if target is not None and target not in nodes:
            check.problem(f"{path}.{label}", f"unknown node '{target}'")
    for node in nodes.values():
        for where, target in _references(node):
            if target not in nodes:
                check.problem(f"{path}.nodes.{node.id}.{where}", f"unknown node '{target}'")
    if start in nodes:
        reachable = _reachable(nodes, [start] + ([on_error] if on_error in nodes else []))  # type: ignore[list-item]
        for node_id in nodes:
            if node_id not in reachable:
                check.problem(f"{path}.nodes.{node_id}", f"unreachable node (nothing leads here from '{start}')")
    if start is None or on_error is None:
        return None
    return Menu(name, start, on_error, nodes, max_steps, final_action)


def _references(node: Node) -> list[tuple[str, str]]:
    refs: list[tuple[str, str]] = []
    match node:
        case PlayNode():
            refs.append(("next", node.next))
        case CollectNode():
            refs += [(f"branches.{k}", v) for k, v in node.branches.items()]
            refs += [(label, v) for label, v in (("default", node.default), ("next", node.next)) if v]
            refs += [("on_invalid", node.on_invalid), ("on_timeout", node.on_timeout)]
        case ActionNode():
            refs += [(f"outcomes.{k}", v) for k, v in node.outcomes.items()]
            if node.next:
                refs.append(("next", node.next))
        case TransferNode():
            refs.append(("closed", node.closed))
    return refs


def _reachable(nodes: Mapping[str, Node], roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        node_id = todo.pop()
        if node_id in seen or node_id not in nodes:
            continue
        seen.add(node_id)
        todo.extend(target for _, target in _references(nodes[node_id]))
    return seen


def _parse_node(check: _Checker, node_id: str, data: Any, path: str) -> Node | None:
    if not isinstance(data, dict):
        check.problem(path, "expected a mapping with kind:")
        return None
    kind = _text(data.get("kind"))
    if kind not in _NODE_KEYS:
        check.problem(f"{path}.kind", f"'{kind}' is not one of {', '.join(_NODE_KEYS)}")
        return None
    check.known_keys(data, _NODE_KEYS[kind] | _COMMON_KEYS, path)
    before = len(check.problems)
    variables = check.channel_variables(data.get("set"), f"{path}.set")
    node: Node | None = None
    if kind == "play":
        interruptible = data.get("interruptible", True)
        if not isinstance(interruptible, (bool, int)):
            check.problem(f"{path}.interruptible", "expected true or false")
        node = PlayNode(
            node_id,
            check.prompt_list(data.get("prompts"), f"{path}.prompts", required=True),
            check.reference(data.get("next"), f"{path}.next") or "",
            bool(interruptible),
            variables,
        )
    elif kind == "collect":
        node = _parse_collect(check, node_id, data, path, variables)
    elif kind == "action":
        node = _parse_action(check, node_id, data, path, variables)
    elif kind == "transfer":
        queue = _text(data.get("queue")) if data.get("queue") is not None else None
        if queue is not None and not re.fullmatch(r"[A-Za-z0-9_\-]+", queue):
            check.problem(f"{path}.queue", "a queue name is letters, digits, - and _")
        node = TransferNode(
            node_id,
            check.prompt_list(data.get("prompts"), f"{path}.prompts", required=False),
            check.reference(data.get("closed"), f"{path}.closed") or "",
            queue,
            variables,
        )
    elif kind == "hangup":
        outcome = _text(data.get("outcome", "completed")) or ""
        if not re.fullmatch(r"[a-z][a-z_]{0,31}", outcome):
            check.problem(f"{path}.outcome", "an outcome is lower-case letters and _ (a metrics label)")
        node = HangupNode(
            node_id,
            check.prompt_list(data.get("prompts"), f"{path}.prompts", required=False),
            outcome,
            variables,
        )
    return node if len(check.problems) == before else None


def _parse_collect(check: _Checker, node_id: str, data: Mapping[str, Any], path: str,
                   variables: tuple[tuple[str, str], ...]) -> CollectNode | None:
    if "prompt" in data and "prompts" in data:
        check.problem(path, "give prompt or prompts, not both")
    prompts = check.prompt_list(data.get("prompt", data.get("prompts")), f"{path}.prompt", required=True)
    max_digits = check.integer(data, "max_digits", path, 1, 1, 64)
    min_digits = check.integer(data, "min_digits", path, 1, 1, 64)
    if min_digits > max_digits:
        check.problem(f"{path}.min_digits", f"{min_digits} is more than max_digits {max_digits}")
    terminator = _text(data.get("terminator", "#"))
    if terminator != "#":
        # GET DATA ends an entry on # only (app.c ast_app_getdata_full passes "#").
        check.problem(f"{path}.terminator", "only '#' can end an entry (GET DATA's terminator)")
    timeout = check.number(data, "timeout_seconds", path, 6.0, 0.5, 120.0)
    retries = check.integer(data, "retries", path, 3, 1, 10)
    invalid = check.prompt_list(data.get("invalid"), f"{path}.invalid", required=True)
    no_input = check.prompt_list(data.get("no_input"), f"{path}.no_input", required=False) or invalid
    branches: dict[str, str] = {}
    raw_branches = data.get("branches") or {}
    if not isinstance(raw_branches, dict):
        check.problem(f"{path}.branches", "expected a mapping of keys -> node id")
        raw_branches = {}
    for key, target in raw_branches.items():
        keys = _text(key)
        where = f"{path}.branches.{key}"
        if keys is None or not _KEYS.fullmatch(keys):
            check.problem(where, f"bad digits {key!r}: a keypad sends 0-9, * and #")
            continue
        entry = keys[:-1] if max_digits > 1 and keys.endswith("#") else keys
        if not min_digits <= len(entry) <= max_digits:
            check.problem(where, f"'{keys}' can never be entered: this collect takes {min_digits} to {max_digits} keys")
        if max_digits > 1 and "#" in entry:
            check.problem(where, f"'{keys}': # ends the entry and cannot be part of it")
        resolved = check.reference(target, where)
        if resolved:
            branches[entry] = resolved
    store_as = _text(data.get("store_as")) if data.get("store_as") is not None else None
    if store_as is not None and not _VARIABLE.fullmatch(store_as):
        check.problem(f"{path}.store_as", "a variable name is letters, digits and _")
    next_node = check.reference(data.get("next"), f"{path}.next", required=False)
    default = check.reference(data.get("default"), f"{path}.default", required=False)
    if not branches and store_as is None:
        check.problem(path, "a collect needs branches: or store_as:")
    if store_as is not None and next_node is None:
        check.problem(f"{path}.next", "required with store_as: where to go with the entry")
    if next_node is not None and store_as is None:
        check.problem(f"{path}.next", "next: goes with store_as: (branches route by the entry)")
    if store_as is not None and next_node is not None and default is not None:
        check.problem(f"{path}.default", "with store_as and next, every entry already goes to next")
    on_invalid = check.reference(data.get("on_invalid"), f"{path}.on_invalid")
    on_timeout = check.reference(data.get("on_timeout", data.get("on_invalid")), f"{path}.on_timeout")
    return CollectNode(
        node_id, prompts, min_digits, max_digits, timeout, retries, invalid, no_input,
        branches, default, store_as, next_node, on_invalid or "", on_timeout or "", "#", variables,
    )


def _parse_action(check: _Checker, node_id: str, data: Mapping[str, Any], path: str,
                  variables: tuple[tuple[str, str], ...]) -> ActionNode | None:
    name = _text(data.get("action"))
    spec = check.actions.get(name or "")
    if spec is None:
        known = ", ".join(sorted(check.actions)) or "none"
        check.problem(f"{path}.action", f"unknown action '{name}' (known: {known})")
        return None
    outcomes: dict[str, str] = {}
    raw = data.get("outcomes") or {}
    if not isinstance(raw, dict):
        check.problem(f"{path}.outcomes", "expected a mapping of outcome -> node id")
        raw = {}
    for key, target in raw.items():
        outcome = str(key)
        if outcome not in spec.outcomes and outcome != "error":
            check.problem(f"{path}.outcomes.{outcome}", f"'{name}' has no outcome '{outcome}' (it has: {', '.join(sorted(spec.outcomes))})")
            continue
        resolved = check.reference(target, f"{path}.outcomes.{outcome}")
        if resolved:
            outcomes[outcome] = resolved
    next_node = check.reference(data.get("next"), f"{path}.next", required=False)
    unmapped = sorted(spec.outcomes - set(outcomes))
    if unmapped and next_node is None:
        check.problem(f"{path}.outcomes", f"outcome{'s' if len(unmapped) > 1 else ''} {', '.join(unmapped)} lead nowhere: map them or give next:")
    return ActionNode(node_id, name or "", outcomes, next_node, variables)


def load_menus(path: str | Path, *, actions: Mapping[str, ActionSpec] | None = None) -> MenuBook:
    """Read and check an ivr.yaml; raises ConfigError listing every problem.

    `actions` defaults to gateway.ivr.actions.CATALOGUE.
    """
    if actions is None:
        from gateway.ivr.actions import CATALOGUE

        actions = CATALOGUE
    return parse_menus(read_yaml(Path(path)), source=str(path), actions=actions)


def check_menus_file(config: Any) -> list[str]:
    """check-config's hook: the problems of the config's menus file (sounds not included:
    see gateway.ivr.prompts.missing_prompts)."""
    path = config.resolve(config.ivr.menus_file)
    try:
        book = load_menus(path)
    except ConfigError as e:
        return list(e.problems)
    return [f"{path}: menus: the FastAGI server needs a menu named '{name}'"
            for name in ("12123", "notify") if name not in book.menus]


# ---------------------------------------------------------------------------------------
# The interpreter
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceHours:
    """Agent hours each day, minutes since midnight in China time."""

    opens_minute: int
    closes_minute: int

    @classmethod
    def parse(cls, text: str) -> ServiceHours:
        """'08:30-17:30' -> ServiceHours(510, 1050); ValueError when malformed."""
        match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)", text.strip())
        if match is None:
            raise ValueError("service hours are HH:MM-HH:MM")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        return cls(h1 * 60 + m1, h2 * 60 + m2)

    def open_at(self, unix_seconds: float) -> bool:
        from gateway.domain import from_unix

        local = from_unix(unix_seconds)
        minute = local.hour * 60 + local.minute
        if self.opens_minute == self.closes_minute:
            return True  # 08:00-08:00: around the clock
        if self.opens_minute < self.closes_minute:
            return self.opens_minute <= minute < self.closes_minute
        return minute >= self.opens_minute or minute < self.closes_minute  # across midnight

    @staticmethod
    def spoken(minute_of_day: int) -> str:
        """'上午8点半', '下午5点半' (read by the text voice as 上午八点半)."""
        hour, minute = divmod(minute_of_day, 60)
        return spoken_clock(hour, minute)


@dataclass(frozen=True)
class ActionResult:
    """What a domain action answers: an outcome of its spec and variables to speak."""

    outcome: str
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Speak:
    """STREAM FILE one clip; the caller may interrupt when `interruptible`."""

    line: str
    clip: Clip
    interruptible: bool
    node: str


@dataclass(frozen=True)
class ReadDigits:
    """GET DATA "" (several keys) or WAIT FOR DIGIT (one key)."""

    line: str
    max_digits: int
    timeout_ms: int
    node: str


@dataclass(frozen=True)
class Control:
    """ANSWER, SET VARIABLE, HANGUP: no caller involvement."""

    line: str
    node: str


@dataclass(frozen=True)
class RunAction:
    name: str
    variables: Mapping[str, str]
    node: str


@dataclass(frozen=True)
class Finish:
    """The call is over for the script: `outcome` (metrics label) and the nodes visited."""

    outcome: str
    path: tuple[str, ...]


Step = Speak | ReadDigits | Control | RunAction | Finish
AgiStep = Speak | ReadDigits | Control


class _CallerGone(Exception):
    def __init__(self, outcome: str = "caller_hangup") -> None:
        super().__init__(outcome)
        self.outcome = outcome


class CallFlow:
    """One call through one menu.  Drive it like this::

        step = flow.start(now)
        while not isinstance(step, Finish):
            if isinstance(step, RunAction):
                step = flow.on_action_result(await run(step), now)
            else:
                step = flow.on_reply(await send(step.line), now)   # an AgiReply

    and call ``flow.on_hangup(now)`` instead of sending when the caller is known to be gone
    (HANGUP line, closed socket).  Replies that mean the channel is gone (``result=-1``,
    511, 510/520 to our own commands) end the call as ``caller_hangup`` or ``error``.

    A missing sound file is not a hang-up, though Asterisk answers STREAM FILE for both
    with ``200 result=-1`` (res_agi.c handle_streamfile: ``result=-1 endpos=0`` when
    ast_openstream fails).  So -1 to a STREAM FILE is only a suspicion: the menu goes on,
    and the next reply decides.  On a channel that is gone Asterisk answers every command
    that needs one with 511 (and writes HANGUP); a normal reply means the file was
    missing: `missing_prompts` gets its name and `on_missing_prompt` is called with it.
    A prompt that must be heard (no escape digits: a reminder text) is judged at once with
    CHANNEL STATUS; when it was missing, the call still goes on, but the nodes' ``set:``
    markers (REMINDER_HEARD=1) are no longer set: what had to be heard was not.
    """

    def __init__(self, book: MenuBook, menu_name: str, *, service_hours: ServiceHours,
                 agent_queue: str, variables: Mapping[str, str] | None = None,
                 max_path: int = 64, on_missing_prompt: Callable[[str], object] | None = None) -> None:
        self.book = book
        self.menu = book.menus[menu_name]
        self.service_hours = service_hours
        self.agent_queue = agent_queue
        self.variables: dict[str, str] = {
            "service_hours_from": ServiceHours.spoken(service_hours.opens_minute),
            "service_hours_until": ServiceHours.spoken(service_hours.closes_minute),
        }
        self.variables.update(variables or {})
        self.path: list[str] = []
        self.outcome = "completed"
        self.now = 0.0
        self._max_path = max_path
        self._typed = ""
        self._steps = 0
        self._gen: Generator[Step, Any, None] = self._main()
        self._current: Step | None = None
        self.missing_prompts: list[str] = []
        self._on_missing_prompt = on_missing_prompt
        self._suspect: str | None = None  # the file of a STREAM FILE answered -1, not yet judged
        self.unheard = False  # a prompt that had to be heard was missing

    # -- driving ----------------------------------------------------------------------

    def start(self, now: float) -> Step:
        self.now = now
        return self._advance(None)

    def on_reply(self, reply: AgiReply, now: float) -> Step:
        if not isinstance(self._current, (Speak, ReadDigits, Control)):
            raise RuntimeError("no AGI command is outstanding")
        self.now = now
        return self._advance(reply)

    def on_action_result(self, result: ActionResult, now: float) -> Step:
        if not isinstance(self._current, RunAction):
            raise RuntimeError("no action is outstanding")
        self.now = now
        return self._advance(result)

    def on_hangup(self, now: float, outcome: str = "caller_hangup") -> Step:
        """The caller is gone while a command was due: finish (running the final action).
        `outcome`: how to record the end (``protocol_error`` when Asterisk misbehaved)."""
        self.now = now
        if isinstance(self._current, Finish):
            return self._current
        if isinstance(self._current, RunAction):
            raise RuntimeError("feed the outstanding action's result first")
        self._current = self._gen.throw(_CallerGone(outcome))
        return self._current

    @property
    def finished(self) -> bool:
        return isinstance(self._current, Finish)

    def _advance(self, value: Any) -> Step:
        self._current = self._gen.send(value)
        return self._current

    # -- the walk ---------------------------------------------------------------------

    def _main(self) -> Generator[Step, Any, None]:
        try:
            reply = yield Control(agi.answer(), self.menu.start)
            self._check(reply)
            yield from self._walk()
        except _CallerGone as gone:
            self.outcome = gone.outcome
        except _CommandRefused:
            self.outcome = "error"
        if self.menu.final_action:
            yield RunAction(self.menu.final_action, dict(self.variables), "(final)")
        while True:
            yield Finish(self.outcome, tuple(self.path))

    def _walk(self) -> Generator[Step, Any, None]:
        node_id: str | None = self.menu.start
        while node_id is not None:
            self._steps += 1
            if self._steps > self.menu.max_steps:
                self.outcome = "step_limit"
                yield from self._command(Control(agi.hangup(), node_id))
                return
            node = self.menu.nodes[node_id]
            if len(self.path) < self._max_path:
                self.path.append(node_id)
            for name, value in node.set:
                if self.unheard:
                    break  # markers such as REMINDER_HEARD=1 would claim what was not heard
                self.variables[name] = value
                yield from self._command(Control(agi.set_variable(name, value), node_id))
            match node:
                case PlayNode():
                    yield from self._play(node.prompts, node.id, interruptible=node.interruptible)
                    node_id = node.next
                case CollectNode():
                    node_id = yield from self._collect(node)
                case ActionNode():
                    node_id = yield from self._action(node)
                case TransferNode():
                    node_id = yield from self._transfer(node)
                case HangupNode():
                    self._typed = ""
                    yield from self._play(node.prompts, node.id, interruptible=False)
                    self.outcome = node.outcome
                    yield from self._command(Control(agi.hangup(), node.id))
                    node_id = None

    def _command(self, step: AgiStep) -> Generator[Step, Any, AgiReply]:
        reply = yield step
        suspect, self._suspect = self._suspect, None
        if isinstance(step, Speak) and reply.code is AgiStatus.SUCCESS and reply.result == "-1":
            # A missing file or a caller gone: the next reply tells (see the class docstring).
            if suspect is not None:
                self._missing(suspect)  # a second -1, not a 511: the channel is still there
            if not step.interruptible:
                # Must be heard: judge now, with a command that needs a live channel.
                probe = yield Control(agi.channel_status(), step.node)
                self._check(probe)
                self.unheard = True
                self._missing(self.book.clip_file(step.clip))
                return reply  # type: ignore[no-any-return]
            self._suspect = self.book.clip_file(step.clip)
            return reply  # type: ignore[no-any-return]
        self._check(reply)
        if suspect is not None:
            self._missing(suspect)
        return reply  # type: ignore[no-any-return]

    def _missing(self, name: str) -> None:
        self.missing_prompts.append(name)
        if self._on_missing_prompt is not None:
            self._on_missing_prompt(name)

    @staticmethod
    def _check(reply: AgiReply) -> None:
        if reply.code is AgiStatus.DEAD_CHANNEL or (reply.code is AgiStatus.SUCCESS and reply.result == "-1"):
            raise _CallerGone()
        if reply.code is not AgiStatus.SUCCESS:
            raise _CommandRefused(reply.code.name)

    def _play(self, prompt_ids: Iterable[str], node_id: str, *, interruptible: bool) -> Generator[Step, Any, None]:
        """Speak prompts; with `interruptible`, a key stops them and is kept (and with keys
        already pending they are skipped: the caller has moved on)."""
        if interruptible and self._typed:
            return
        escape = ALL_DIGITS if interruptible else ""
        from gateway.domain import from_unix

        today = from_unix(self.now).date() if self.now else None
        for prompt_id in prompt_ids:
            for clip in self.book.prompt_clips(prompt_id, self.variables, today):
                line = agi.stream_file(self.book.clip_file(clip), escape)
                reply = yield from self._command(Speak(line, clip, interruptible, node_id))
                key = reply.digit
                if interruptible and key is not None and key in ALL_DIGITS:
                    self._typed += key
                    return

    def _collect(self, node: CollectNode) -> Generator[Step, Any, str]:
        failures = 0
        while True:
            entry, timed_out = yield from self._read_entry(node)
            if entry and len(entry) >= node.min_digits:
                # A branch for this entry, else the stored entry's next, else default.
                target = node.branches.get(entry)
                if target is None and node.store_as is not None:
                    target = node.next
                if target is None:
                    target = node.default
                if target is not None:
                    if node.store_as is not None:
                        self.variables[node.store_as] = entry
                    return target
            failures += 1
            empty = not entry
            if failures >= node.retries:
                return node.on_timeout if empty and timed_out else node.on_invalid
            yield from self._play(node.no_input if empty else node.invalid, node.id, interruptible=True)

    def _read_entry(self, node: CollectNode) -> Generator[Step, Any, tuple[str, bool]]:
        """One entry: keys typed ahead or during the prompt, then the rest from Asterisk.
        Returns (entry without the terminator, whether silence ended it)."""
        yield from self._play(node.prompts, node.id, interruptible=True)
        typed, self._typed = self._typed, ""
        timeout_ms = int(node.timeout_seconds * 1000)
        if node.max_digits == 1:
            if typed:
                return typed[0], False
            reply = yield from self._command(ReadDigits(agi.wait_for_digit(timeout_ms), 1, timeout_ms, node.id))
            key = reply.digit
            return (key, False) if key else ("", True)
        if "#" in typed:
            return typed[: typed.index("#")], False
        if len(typed) >= node.max_digits:
            return typed[: node.max_digits], False
        wanted = node.max_digits - len(typed)
        reply = yield from self._command(
            ReadDigits(agi.get_data("", timeout_ms, wanted), wanted, timeout_ms, node.id)
        )
        keys = re.sub(r"[^0-9*#]", "", reply.result or "")
        entry = typed + keys.split("#", 1)[0]
        return entry, reply.timeout

    def _action(self, node: ActionNode) -> Generator[Step, Any, str]:
        result = yield RunAction(node.action, dict(self.variables), node.id)
        assert isinstance(result, ActionResult)
        self.variables.update(result.variables)
        target = node.outcomes.get(result.outcome)
        if target is not None:
            return target
        if result.outcome == "error" or node.next is None:
            return self.menu.on_error
        return node.next

    def _transfer(self, node: TransferNode) -> Generator[Step, Any, str | None]:
        if not self.service_hours.open_at(self.now):
            return node.closed
        yield from self._play(node.prompts, node.id, interruptible=False)
        queue = node.queue or self.agent_queue
        yield from self._command(Control(agi.set_variable(TRANSFER_VARIABLE, queue), node.id))
        self.outcome = "transferred"
        return None


class _CommandRefused(Exception):
    """Asterisk answered one of our commands with 510/520/503: a bug on our side."""
