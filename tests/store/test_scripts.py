"""The Lua loader: helpers in front once and in order, clear errors, every script compiles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

import gateway
from gateway.store.scripts import LuaFileError, lua_source

GATEWAY = Path(gateway.__file__).parent
SCRIPTS = sorted(p for p in GATEWAY.rglob("lua/*.lua"))


def _module(tmp_path: Path, files: dict[str, str]) -> str:
    (tmp_path / "lua").mkdir()
    for name, text in files.items():
        (tmp_path / "lua" / name).write_text(text, encoding="utf-8")
    return str(tmp_path / "module.py")


def test_helpers_come_first_each_once_in_order(tmp_path: Path) -> None:
    """A helper included twice (directly and through another helper) appears once, before
    what includes it."""
    anchor = _module(tmp_path, {
        "a.lua": "-- include: b.lua\nlocal A = 1\n",
        "b.lua": "local B = 2\n",
        "main.lua": "-- the script\n-- include: a.lua\n-- include: b.lua\nreturn A + B\n",
    })
    assert lua_source(anchor, "main.lua") == (
        "local B = 2\n"
        "-- include: b.lua\nlocal A = 1\n"
        "-- the script\n-- include: a.lua\n-- include: b.lua\nreturn A + B\n")


def test_helpers_are_found_in_the_store_directory(tmp_path: Path) -> None:
    """A helper not beside the script comes from gateway/store/lua/ (call_chunked.lua)."""
    anchor = _module(tmp_path, {"main.lua": "-- include: call_chunked.lua\nreturn 1\n"})
    assert "local function call_chunked(" in lua_source(anchor, "main.lua")


def test_include_after_the_leading_comment_is_ignored(tmp_path: Path) -> None:
    """Only the opening comment block includes; a later comment line is just a comment."""
    anchor = _module(tmp_path, {"main.lua": "return 1\n-- include: nowhere.lua\n"})
    assert lua_source(anchor, "main.lua") == "return 1\n-- include: nowhere.lua\n"


def test_missing_file_and_circles_are_named(tmp_path: Path) -> None:
    """A missing helper and helpers including each other raise LuaFileError naming them."""
    anchor = _module(tmp_path, {
        "main.lua": "-- include: gone.lua\n",
        "x.lua": "-- include: y.lua\n",
        "y.lua": "-- include: x.lua\n",
    })
    with pytest.raises(LuaFileError, match="gone.lua"):
        lua_source(anchor, "main.lua")
    with pytest.raises(LuaFileError, match="x.lua -> y.lua -> x.lua"):
        lua_source(anchor, "x.lua")


def test_every_script_declares_its_interface() -> None:
    """Each script file opens with a comment; those that are scripts (not helpers) name
    their KEYS or ARGV there."""
    assert len(SCRIPTS) >= 20
    helpers = {name for path in SCRIPTS
               for name in re.findall(r"^-- include: (\S+)$", path.read_text(encoding="utf-8"), re.M)}
    for path in SCRIPTS:
        text = path.read_text(encoding="utf-8")
        assert text.startswith("--"), f"{path} does not open with a comment"
        if path.name in helpers:
            continue  # a helper: its comment says what its functions do
        header = "\n".join(re.findall(r"^--.*$", text.split("\nlocal ")[0], re.M))
        assert "KEYS" in header or "ARGV" in header, f"{path}: the header names no KEYS or ARGV"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(GATEWAY)))
def test_every_script_compiles_on_redis(redis_url: str, path: Path) -> None:
    """SCRIPT LOAD accepts each script with its helpers (a syntax error fails here, not in
    production at the first call)."""
    client = redis.Redis.from_url(redis_url)
    try:
        source = lua_source(str(path.parent.parent / "module.py"), path.name)
        assert re.fullmatch(r"[0-9a-f]{40}", client.script_load(source))
    finally:
        client.close()
