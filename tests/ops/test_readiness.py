"""/readyz tells the truth: a carrier that should carry traffic and is down beyond its
grace makes the gateway not ready (real `gateway run`, Redis, simulator)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as sync_redis

from gateway.store.embedded import RedisServerProcess, free_port
from tests.ops.fleet import carrier_view, running_fleet, wait_for

pytestmark = pytest.mark.timeout(180)


def test_readyz_not_ready_while_a_carrier_is_down_beyond_its_grace(redis_server: RedisServerProcess,
                                                                   tmp_path: Path) -> None:
    """A second carrier whose SMSC never answers makes /readyz 503 once the grace has
    passed (naming it); stopping that carrier on purpose makes the gateway ready again."""
    client = sync_redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    dead = {"name": "cucc", "host": "127.0.0.1", "port": free_port(), "system_id": "gw", "password": "pw",
            "prefixes": ["130"], "reconnect_initial_seconds": 0.5, "reconnect_max_seconds": 1}
    with running_fleet(tmp_path, redis_server.url, processes=1, extra_carriers=(dead,), started_path="/healthz",
                       http={"carrier_down_grace_seconds": 2}) as one:
        daemon = one.first
        body = daemon.wait_until("/readyz", status=503, timeout_seconds=30)
        assert body["checks"]["carrier:cucc"] is False and body["checks"]["carrier:cmcc"] is True
        wait_for(lambda: carrier_view(one, "cucc")["state"] == "down", "cucc shown down")
        # /metrics lists the carrier that never bound, as 0 (an alert on up == 0 sees it).
        _, metrics_text = daemon.get("/metrics")
        assert 'gateway12123_carrier_up{carrier="cucc"} 0.0' in metrics_text
        assert 'gateway12123_carrier_up{carrier="cmcc"} 1.0' in metrics_text
        assert "gateway12123_build_info{" in metrics_text and "_created" not in metrics_text
        assert one.call("POST", "/v1/carriers/cucc/stop")[0] == 200
        body = daemon.wait_until("/readyz", status=200, timeout_seconds=30)
        assert body["checks"]["carrier:cucc"] is True
