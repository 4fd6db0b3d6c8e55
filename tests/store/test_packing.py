"""Commands packed by hiredis directly (gateway/store/packing.py): the same bytes as
redis-py's packer, its errors for what hiredis does not take, and a real redis-server
reading them."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from gateway.store.packing import DirectPacker, direct_packing, hiredis
from gateway.store.service import make_client
from tests.aio import on_asyncio

pytestmark = pytest.mark.skipif(hiredis is None, reason="hiredis is not installed: redis-py packs in Python")

SAMPLES = [
    ("SET", "12123:notification:{p3}:n-1", "【12123】尊敬的机动车驾驶人"),
    ("EVALSHA", "0" * 40, 3, "k1", "k2", "k3", '["1796417879.968",{"to":"138****5678"}]'),
    ("ZADD", "lane", 1.5, "a", 0.1, "b", 1e20, "c", float("inf"), "d", -7, "e", 10**20, "f"),
    ("SET", "binary", b"\x00\xff\r\n"),
    ("SET", "", ""),
]


@pytest.mark.parametrize("args", SAMPLES, ids=lambda a: a[0])
def test_direct_packing_gives_the_bytes_redis_py_gives(args: tuple) -> None:
    connection = Connection()
    general = connection._command_packer
    assert b"".join(DirectPacker(general).pack(*args)) == b"".join(general.pack(*args))


def test_a_connection_of_the_gateway_packs_directly_and_keeps_redis_py_errors() -> None:
    connection = direct_packing(Connection)()
    assert isinstance(connection._command_packer, DirectPacker)
    for bad in (True, None, [1]):
        with pytest.raises(DataError):
            connection.pack_command("SET", "k", bad)
    # bytearray: hiredis refuses it, redis-py packs it.
    assert b"".join(connection.pack_command("SET", "k", bytearray(b"ab"))).endswith(b"$2\r\nab\r\n")
    # A command name of two words is split, as redis-py does.
    assert b"".join(connection.pack_command("CLIENT SETNAME", "gw")).startswith(b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME")


def test_a_connection_with_another_encoding_keeps_redis_py_packer() -> None:
    connection = direct_packing(Connection)(encoding="latin-1")
    assert not isinstance(connection._command_packer, DirectPacker)
    assert b"".join(connection.pack_command("SET", "k", "é")).endswith(b"$1\r\n\xe9\r\n")


@on_asyncio
async def test_the_gateway_client_round_trips_through_a_real_redis_server(redis_url: str) -> None:
    client = make_client(redis_url)
    try:
        assert isinstance(client.connection_pool.make_connection()._command_packer, DirectPacker)
        text = "【12123】您预约的科目一考试已安排在2026年11月30日"
        keys = [f"{{pack}}:k{i}" for i in range(500)]
        # A script call with hundreds of keys and mixed argument types, as the ledger's are.
        count = await client.eval("for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[1] .. ARGV[2] .. i) end "
                                  "return #KEYS", len(keys), *keys, text, 7)
        assert count == 500
        assert await client.get(keys[499]) == text + "7500"
        await client.zadd("{pack}:z", {"a": 1.5, "b": 0.1})
        assert await client.zrange("{pack}:z", 0, -1, withscores=True) == [("b", 0.1), ("a", 1.5)]
        with pytest.raises(DataError):
            await client.set("{pack}:bad", None)  # type: ignore[arg-type]
        # Replies are decoded with replacement (a core system's GBK reads); what goes in is
        # never changed: a lone surrogate raises instead of reaching Redis as '?'.
        await client.set("{pack}:gbk", "考场".encode("gbk"))
        assert await client.get("{pack}:gbk") == "\ufffd" * 4
        with pytest.raises(UnicodeEncodeError):
            await client.set("{pack}:half", "12\ud83d")
        assert await client.exists("{pack}:half") == 0
    finally:
        await client.aclose()
