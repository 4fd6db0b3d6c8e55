"""Tests of gateway/domain against the session's real redis-server (async test bodies and
clients: `tests.aio`)."""
