"""Tests of gateway/ivr (async test bodies: `tests.aio.on_asyncio`)."""
