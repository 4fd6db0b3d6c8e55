"""Redis commands packed by hiredis in one call, without redis-py's Python pass per argument.

redis-py 8.2's hiredis packer looks at every argument twice in Python before hiredis packs
them (a scan for memoryviews, then its Encoder on each), although ``hiredis.pack_command``
takes str, int, float and bytes itself.  The ledger's scripts declare every key they touch
(KEYS, as a Cluster requires): a batch of 200 notifications is a command of several
hundred arguments, and that Python pass was 5.5 % of a gateway's CPU at full speed
(py-spy, bench/push_throughput.py --scenario chinese, 2026-12-04).  hiredis gives the same
bytes (tests/store/test_packing.py); anything it does not take (bool, None, bytearray) goes
to redis-py's packer, which packs it or raises its own DataError as before.
"""

from __future__ import annotations

from typing import Any

try:
    import hiredis
except ImportError:  # redis-py then packs in Python; nothing to speed up
    hiredis = None  # type: ignore[assignment]


class DirectPacker:
    """A connection's command packer: hiredis first, redis-py's packer for the rest."""

    __slots__ = ("_general",)

    def __init__(self, general: Any) -> None:
        self._general = general

    def pack(self, *args: Any) -> list[bytes]:
        command = args[0]
        # redis-py splits a command name with a space ('CLIENT SETINFO') into words.
        if type(command) is str and " " not in command:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass  # an argument hiredis does not take: redis-py's packer decides
        return self._general.pack(*args)


# One subclass per connection class, made once (a pool makes its connections from it).
_DIRECT_PACKING: dict[type, type] = {}


def direct_packing(connection_class: type) -> type:
    """`connection_class` with DirectPacker as its packer, where its own is hiredis's and
    its strings are UTF-8 (as hiredis encodes them); unchanged otherwise.

    Encoding errors 'replace' (gateway/store/service.py: replies decoded with replacement)
    packs every valid string to the same bytes; a lone surrogate, which redis-py's packer
    would write as '?', raises UnicodeEncodeError from hiredis instead: no text is changed
    on its way into Redis (the doors refuse such text first: gateway/push/intake.py)."""
    if hiredis is None:
        return connection_class
    made = _DIRECT_PACKING.get(connection_class)
    if made is not None:
        return made

    class DirectPackingConnection(connection_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            packer = getattr(self, "_command_packer", None)
            encoder = getattr(self, "encoder", None)
            if (packer is not None and type(packer).__name__ == "HiredisRespSerializer" and encoder is not None
                    and encoder.encoding.replace("-", "").lower() == "utf8" and encoder.encoding_errors in ("strict", "replace")):
                self._command_packer = DirectPacker(packer)

    DirectPackingConnection.__name__ = DirectPackingConnection.__qualname__ = f"DirectPacking{connection_class.__name__}"
    _DIRECT_PACKING[connection_class] = DirectPackingConnection
    return DirectPackingConnection
