"""``gateway prompts build``: the menus' sound files, recorded or spoken by espeak-ng, made by sox.

Every clip of the menus (`MenuBook.all_clips`: the literal parts of the prompts, the
vocabulary words, the character clips values are built from, the pauses) becomes
``<sounds_dir>/<sound_prefix>/<clip>.wav``: 8 kHz, mono, 16-bit signed PCM, the ``.wav``
format Asterisk plays without transcoding on an 8 kHz call.  ``manifest.json`` beside them
remembers what each file was made from, so a second run only remakes the clips whose
source changed (``--force`` remakes all).

**Recorded prompts.**  espeak-ng's Mandarin is robotic; a recorded human voice replaces
it file by file: put ``<clip>.wav`` (any rate or format sox reads) in the ``recorded``
folder beside the generated files (``<sounds_dir>/<sound_prefix>/recorded/``), and the
build converts it to the call format instead of synthesising that clip.  The report says
which clips are recorded and which generated; removing a recording makes the clip
generated again on the next build.  `gateway check-config` warns about clips with no
sound file at all.

**Mandarin as callers expect it.**  Runs of five or more digits are numbers to dial, read
with 1 as 幺 (12123 is 幺二幺二三); the menus' values are built the same way
(gateway/ivr/menus.py).  Commas and full stops get short silences: inside a clip through
SSML ``<break>`` (espeak-ng ``-m``), between clips as the ``pause-short`` / ``pause-long``
files (silence made by sox) that `MenuBook.prompt_clips` puts after punctuation.

Asterisk finds them as ``STREAM FILE 12123/<clip>`` once its sounds folder links to ours
(dialplans/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.ivr.menus import PAUSE_SECONDS, Clip, MenuBook, dial_digits, speech_clip

__all__ = ["BuildReport", "PromptToolMissing", "SpeechSynthesizer", "add_arguments", "build_command", "build_prompts",
           "missing_prompts", "recorded_file", "tts_ssml", "tts_text", "unknown_recordings"]

INSTALL_HINT = "apt-get install espeak-ng sox"
RECORDED_FOLDER = "recorded"
# Silence inside a generated clip at punctuation (SSML <break>), as between clips.
_BREAKS = (("，,、；;：:", 250), ("。！？.!?", 500))


class PromptToolMissing(RuntimeError):
    """espeak-ng or sox is not installed."""


@dataclass(frozen=True)
class BuildReport:
    made: tuple[str, ...]
    kept: tuple[str, ...]
    folder: Path
    recorded: tuple[str, ...] = ()  # clips taken from recordings (made now or kept)

    @property
    def generated(self) -> tuple[str, ...]:
        return tuple(name for name in (*self.made, *self.kept) if name not in set(self.recorded))


def tts_text(text: str) -> str:
    """The text as espeak-ng should read it: numbers of five digits or more are numbers to
    dial, not quantities (12123 is 幺二幺二三, not 一万两千一百二十三)."""
    return re.sub(r"[0-9]{5,}", lambda m: dial_digits(m.group()), text)


def tts_ssml(text: str) -> str:
    """`tts_text` as SSML for ``espeak-ng -m``, with a <break> after each comma (250 ms)
    and full stop (500 ms), so clauses inside one clip do not run together."""
    out = []
    for ch in tts_text(text):
        out.append(ch.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
        for marks, ms in _BREAKS:
            if ch in marks:
                out.append(f'<break time="{ms}ms"/>')
    return "<speak>" + "".join(out) + "</speak>"


def clip_folder(book: MenuBook, sounds_dir: Path) -> Path:
    return sounds_dir / book.sound_prefix if book.sound_prefix else sounds_dir


def recorded_file(book: MenuBook, sounds_dir: Path, clip: Clip) -> Path | None:
    """The human recording that replaces a generated clip, if there is one."""
    path = clip_folder(book, sounds_dir) / RECORDED_FOLDER / f"{clip.name}.wav"
    return path if path.is_file() else None


def unknown_recordings(book: MenuBook, sounds_dir: str | Path) -> list[str]:
    """Files in the recorded folder that replace no clip (a misspelt name is otherwise
    silently ignored and the robot voice stays)."""
    folder = clip_folder(book, Path(sounds_dir)) / RECORDED_FOLDER
    if not folder.is_dir():
        return []
    names = {clip.name for clip in book.all_clips()}
    return sorted(p.name for p in folder.glob("*.wav") if p.stem not in names)


def missing_prompts(book: MenuBook, sounds_dir: str | Path) -> list[str]:
    """Clip names of the menus without a sound file (for check-config and the demo)."""
    folder = clip_folder(book, Path(sounds_dir))
    return [clip.name for clip in book.all_clips() if not (folder / f"{clip.name}.wav").is_file()]


def _fingerprint(clip: Clip, voice: str, recording: Path | None = None) -> str:
    if recording is not None:
        return "recorded:" + hashlib.sha1(recording.read_bytes()).hexdigest()
    if clip.name in PAUSE_SECONDS:
        return f"pause:{PAUSE_SECONDS[clip.name]}"
    return hashlib.sha1(f"{voice}\n{tts_ssml(clip.text)}".encode()).hexdigest()


def _tools(espeak: str, sox: str) -> tuple[str, str]:
    found = shutil.which(espeak), shutil.which(sox)
    if found[0] is None or found[1] is None:
        missing = " and ".join(name for name, path in ((espeak, found[0]), (sox, found[1])) if path is None)
        raise PromptToolMissing(f"{missing} not found: install them with `{INSTALL_HINT}`")
    return found[0], found[1]


_CALL_FORMAT = ["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"]


def _make(clip: Clip, target: Path, voice: str, espeak: str, sox: str, recording: Path | None = None) -> None:
    """A recording converted by sox, a pause as sox's silence, or espeak-ng's speech; then
    8 kHz mono 16-bit (speech peaking at -1 dB)."""
    with tempfile.NamedTemporaryFile(suffix=".wav", dir=target.parent, delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        if recording is not None:
            subprocess.run([sox, "-V1", str(recording), *_CALL_FORMAT, str(partial)],
                           check=True, capture_output=True, timeout=60)
        elif clip.name in PAUSE_SECONDS:
            subprocess.run([sox, "-V1", "-D", "-n", *_CALL_FORMAT, str(partial), "trim", "0", str(PAUSE_SECONDS[clip.name])],
                           check=True, capture_output=True, timeout=60)
        else:
            spoken = subprocess.run([espeak, "-v", voice, "-s", "150", "-m", "--stdout", tts_ssml(clip.text)],
                                    check=True, capture_output=True, timeout=60)
            subprocess.run([sox, "-V1", "-t", "wav", "-", *_CALL_FORMAT, str(partial), "gain", "-n", "-1"],
                           input=spoken.stdout, check=True, capture_output=True, timeout=60)
        partial.replace(target)  # never a half-written file under the real name
    finally:
        partial.unlink(missing_ok=True)


def build_prompts(book: MenuBook, sounds_dir: str | Path, *, force: bool = False, espeak: str = "espeak-ng",
                  sox: str = "sox", workers: int = 4) -> BuildReport:
    """Make every missing or changed clip; raises PromptToolMissing, or
    subprocess.CalledProcessError when a tool fails."""
    espeak_path, sox_path = _tools(espeak, sox)
    folder = clip_folder(book, Path(sounds_dir))
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    try:
        manifest: dict[str, str] = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    voice = book.tts_voice
    todo: list[tuple[Clip, Path | None, str]] = []
    kept: list[str] = []
    recorded: list[str] = []
    for clip in book.all_clips():
        recording = recorded_file(book, Path(sounds_dir), clip)
        if recording is not None:
            recorded.append(clip.name)
        fingerprint = _fingerprint(clip, voice, recording)
        if not force and manifest.get(clip.name) == fingerprint and (folder / f"{clip.name}.wav").is_file():
            kept.append(clip.name)
        else:
            todo.append((clip, recording, fingerprint))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(lambda job: _make(job[0], folder / f"{job[0].name}.wav", voice, espeak_path, sox_path, job[1]),
                      todo))
    for clip, _, fingerprint in todo:
        manifest[clip.name] = fingerprint
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True), encoding="utf-8")
    return BuildReport(tuple(c.name for c, _, _ in todo), tuple(kept), folder, tuple(recorded))


class SpeechSynthesizer:
    """Makes the sound file of a free text during a call (``{x:speech}`` placeholders).

    The file is ``<sounds_dir>/<sound_prefix>/tts-<hash>.wav`` (see menus.speech_clip), so
    Asterisk must see the gateway's sounds folder: the same host, as the dialplans expect.
    espeak-ng and sox run as asyncio subprocesses, so the reactor keeps serving other
    calls.  `forget` removes a file once the call is over: reminder texts are personal.
    """

    def __init__(self, sounds_dir: str | Path, menus: Any, *, espeak: str = "espeak-ng", sox: str = "sox",
                 timeout_seconds: float = 20.0) -> None:
        # `menus`: a MenuBook, or a callable giving the current one (prefix and voice).
        self._sounds_dir = Path(sounds_dir)
        self._menus = menus
        self._espeak = shutil.which(espeak)
        self._sox = shutil.which(sox)
        self._timeout = timeout_seconds

    @property
    def available(self) -> bool:
        return self._espeak is not None and self._sox is not None

    def _book(self) -> MenuBook:
        return self._menus() if callable(self._menus) else self._menus  # type: ignore[no-any-return]

    def path_for(self, text: str) -> Path:
        book = self._book()
        return clip_folder(book, self._sounds_dir) / f"{speech_clip(text).name}.wav"

    async def __call__(self, text: str) -> bool:
        """Make the file for `text` unless it exists; False when the tools are missing or fail."""
        import asyncio

        if not self.available or not text.strip():
            return False
        target = self.path_for(text)
        if target.is_file():
            return True
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{id(text)}")
        running: list[Any] = []
        try:
            espeak = await asyncio.create_subprocess_exec(
                self._espeak or "espeak-ng", "-v", self._book().tts_voice, "-s", "150", "-m", "--stdout",
                tts_ssml(text),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            running.append(espeak)
            spoken, _ = await asyncio.wait_for(espeak.communicate(), self._timeout)
            sox = await asyncio.create_subprocess_exec(
                self._sox or "sox", "-V1", "-t", "wav", "-", "-r", "8000", "-c", "1", "-b", "16",
                "-e", "signed-integer", "-t", "wav", str(partial), "gain", "-n", "-1",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            running.append(sox)
            await asyncio.wait_for(sox.communicate(spoken), self._timeout)
            if espeak.returncode != 0 or sox.returncode != 0:
                return False
            partial.replace(target)
            return True
        except (TimeoutError, OSError):
            return False
        finally:
            for process in running:
                if process.returncode is None:  # timed out: do not leave it behind
                    process.kill()
            partial.unlink(missing_ok=True)

    def forget(self, text: str) -> None:
        """Delete the file made for `text` (after the call)."""
        if text.strip():
            self.path_for(text).unlink(missing_ok=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gateway prompts build`` (the lead adds -c/--config)."""
    parser.add_argument("--force", action="store_true", help="remake every file, even unchanged ones")
    parser.add_argument("--sounds-dir", default=None, help="write here instead of ivr.sounds_dir")
    parser.add_argument("--workers", type=int, default=4, help="espeak-ng/sox runs in parallel")


def build_command(config: Any, book: MenuBook, args: argparse.Namespace) -> int:
    """Build the prompts of `book` (the menus of `config`, loaded and checked by the command
    layer): 0 done, 1 tools missing or failing."""
    # Relative to the working directory, like redis.data_dir: `make demo` runs from the
    # repository root and keeps every runtime file under var/.
    sounds_dir = Path(getattr(args, "sounds_dir", None) or config.ivr.sounds_dir).resolve()
    try:
        report = build_prompts(book, sounds_dir, force=getattr(args, "force", False),
                               workers=getattr(args, "workers", 4))
    except PromptToolMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        detail = (error.stderr or b"").decode("utf-8", "replace").strip()
        print(f"error: {Path(str(error.cmd[0])).name} failed: {detail or error}", file=sys.stderr)
        return 1
    except OSError as error:  # a file in the way, a folder we may not write, a full disk
        print(f"error: cannot write the prompts under {sounds_dir}: {error.strerror}"
              + (f" ({error.filename})" if error.filename else ""), file=sys.stderr)
        return 1
    print(f"{len(report.made)} prompt files made, {len(report.kept)} unchanged, in {report.folder}")
    print(f"{len(report.recorded)} recorded (from {report.folder / RECORDED_FOLDER}), "
          f"{len(report.generated)} generated by espeak-ng/sox")
    if report.recorded:
        print("recorded: " + ", ".join(sorted(report.recorded)))
    return 0
