"""Lua scripts live in ``.lua`` files beside the Python that runs them; this is the one loader.

Each script is one file in a ``lua/`` directory next to its module
(``gateway/push/lua/claim.lua`` for gateway/push/state.py), the way BullMQ keeps
``src/commands/*.lua``.  The file opens with a comment that names its KEYS and ARGV and
says what it guarantees.  Every key a script touches arrives in KEYS: Redis Cluster routes
a script by its KEYS, and during a slot migration only declared keys make the server
answer ASK/TRYAGAIN instead of running the script on half the data.

Shared helpers are Lua files of their own, pulled in by lines at the top of a script::

    -- include: call_chunked.lua
    -- include: take_due.lua

The loader puts each helper (and the helpers it includes, first) in front of the script,
each once, in order of first mention.  A helper is looked up in the script's own ``lua/``
directory, then in gateway/store/lua/.  Error messages from Redis therefore count lines
from the start of the helpers.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

__all__ = ["LuaFileError", "lua_source", "register_lua"]

_STORE_LUA = Path(__file__).parent / "lua"
_INCLUDE = re.compile(r"^--\s*include:\s*(\S+\.lua)\s*$")


class LuaFileError(RuntimeError):
    """A script or helper file is missing, or helpers include each other in a circle."""


def _lua_dir(anchor: str) -> Path:
    return Path(anchor).resolve().parent / "lua"


def _find(name: str, directory: Path) -> Path:
    for candidate in (directory / name, _STORE_LUA / name):
        if candidate.is_file():
            return candidate
    raise LuaFileError(f"Lua file {name} not found in {directory} or {_STORE_LUA}")


def _includes(text: str) -> list[str]:
    """The helper names a file asks for (only in its leading comment block)."""
    names = []
    for line in text.splitlines():
        if not line.startswith("--"):
            if line.strip():
                break
            continue
        match = _INCLUDE.match(line)
        if match:
            names.append(match.group(1))
    return names


@functools.cache
def _source(path: Path) -> str:
    pieces: list[str] = []
    done: set[Path] = set()

    def add(file: Path, chain: tuple[Path, ...]) -> None:
        if file in chain:
            raise LuaFileError("Lua helpers include each other: " + " -> ".join(p.name for p in (*chain, file)))
        if file in done:
            return
        text = file.read_text(encoding="utf-8")
        for name in _includes(text):
            add(_find(name, file.parent), (*chain, file))
        done.add(file)
        pieces.append(text if text.endswith("\n") else text + "\n")

    add(path, ())
    return "".join(pieces)


def lua_source(anchor: str, name: str) -> str:
    """The text of script `name` with its helpers in front.

    Args:
        anchor: ``__file__`` of the module that runs the script; the file is
            ``lua/<name>`` beside it.
        name: the file name, e.g. ``"claim.lua"``.

    Raises:
        LuaFileError: the file or a helper is missing, or helpers include in a circle.
    """
    return _source(_find(name, _lua_dir(anchor)))


def register_lua(redis: Any, anchor: str, name: str) -> Any:
    """``redis.register_script`` of `lua_source(anchor, name)`: EVALSHA, with SCRIPT LOAD
    and a retry when the server does not know the script (after a restart or failover)."""
    return redis.register_script(lua_source(anchor, name))
