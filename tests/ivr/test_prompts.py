"""`gateway prompts build`: espeak-ng and sox make 8 kHz mono 16-bit WAV files, once."""

from __future__ import annotations

import argparse
import shutil
import wave
from pathlib import Path

import pytest

from gateway.ivr.actions import CATALOGUE
from gateway.ivr.menus import MenuBook, parse_menus
from gateway.ivr.prompts import (
    PromptToolMissing,
    build_command,
    build_prompts,
    missing_prompts,
    tts_text,
)

TOOLS = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None
needs_tools = pytest.mark.skipif(not TOOLS, reason="needs espeak-ng and sox (apt-get install espeak-ng sox)")


def small_book(welcome: str = "您好，这里是交管12123。") -> MenuBook:
    data = {
        "prompts": {"welcome": welcome, "bye": "再见，{points:number}分。"},
        "menus": {"12123": {"start": "hello", "on_error": "end", "nodes": {
            "hello": {"kind": "play", "prompts": ["welcome"], "next": "end"},
            "end": {"kind": "hangup", "prompts": ["bye"]},
        }}},
    }
    return parse_menus(data, source="small.yaml", actions=CATALOGUE)


def test_tts_reads_long_numbers_as_digits() -> None:
    """Numbers of five digits or more are read digit by digit; short ones stay numbers."""
    assert tts_text("交管12123，15日") == "交管一二一二三，15日"


@needs_tools
def test_build_makes_asterisk_wav_once(tmp_path: Path) -> None:
    """Every clip becomes an 8 kHz mono 16-bit WAV; a second run remakes only changed text."""
    book = small_book()
    assert "welcome" in missing_prompts(book, tmp_path)
    report = build_prompts(book, tmp_path)
    assert missing_prompts(book, tmp_path) == []
    assert set(report.made) == {c.name for c in book.all_clips()}
    with wave.open(str(tmp_path / "12123" / "welcome.wav")) as sound:
        assert (sound.getframerate(), sound.getnchannels(), sound.getsampwidth()) == (8000, 1, 2)
        assert sound.getnframes() > 4000  # more than half a second of speech
    again = build_prompts(book, tmp_path)
    assert again.made == ()
    changed = build_prompts(small_book("您好，欢迎致电交管12123。"), tmp_path)
    assert changed.made == ("welcome",)


def test_missing_tools_say_how_to_install(tmp_path: Path) -> None:
    """Without espeak-ng or sox the error names the apt-get command."""
    with pytest.raises(PromptToolMissing, match="apt-get install espeak-ng sox"):
        build_prompts(small_book(), tmp_path, espeak="no-such-espeak-ng")
    assert not (tmp_path / "12123").exists()


def test_command_reports_missing_tools(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`gateway prompts build` exits 1 with the install hint when the tools are absent."""
    from gateway.config import load_config

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: no espeak-ng, no sox
    config = load_config(Path(__file__).resolve().parents[2] / "config" / "gateway.yaml")
    args = argparse.Namespace(force=False, sounds_dir=str(tmp_path / "sounds"), workers=1)
    assert build_command(config, args) == 1
    assert "apt-get install espeak-ng sox" in capsys.readouterr().err
