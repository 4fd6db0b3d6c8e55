"""A peer that floods the SMPP listener with enquire_link and never reads the replies:
the gateway's memory while it floods and after it is gone.

    .venv/bin/python bench/smpp_flood.py                 # 60 s on one bound session, 20 unbound connections
    .venv/bin/python bench/smpp_flood.py --quick         # 10 s, 5 connections

Set-up: ``python -m gateway run`` in its own process (embedded Redis, no carriers, push
off, one partner account), and this process as the peer, with raw sockets:

* **bound**: one connection binds as transceiver, then writes enquire_link PDUs (16
  octets each, 4,096 per write) as fast as the socket takes them for ``--seconds`` and
  reads nothing.  Each enquire_link asks for a 16-octet enquire_link_resp, so a gateway
  that keeps answering into a socket nobody reads buffers 16 octets per request.
* **unbound**: ``--connections`` connections do the same without binding (SMPP 5.0
  allows enquire_link before the bind, and the listener accepts it) for ``--seconds``/3.

The gateway's RSS (``/proc/<pid>/status`` VmRSS) is sampled before, every half second
during, and 3 s after the peer closes.  ``closed_by_gateway`` says whether the gateway
dropped the connection (the flood then ends early: a write fails with EPIPE/ECONNRESET).

Output: a table, then one JSON line (benchmark, date, machine, scenarios[]: scenario,
seconds, connections, sent_mb, peak_growth_mb, growth_per_connection_mb,
after_close_growth_mb, closed_by_gateway).
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

from _common import (  # noqa: E402
    machine,
    print_json_line,
    print_table,
    rss_bytes,
    run_gateway,
    terminate,
    today,
    wait_http_ok,
)

from gateway.store.embedded import free_port  # noqa: E402

SYSTEM_ID, PASSWORD = "flood", "secret1"
ENQUIRE_LINKS_PER_WRITE = 4096
MB = 1024 * 1024


def enquire_links(first_sequence: int, count: int) -> bytes:
    return b"".join(struct.pack(">IIII", 16, 0x15, 0, first_sequence + i) for i in range(count))


def bind_transceiver(sock: socket.socket) -> None:
    body = SYSTEM_ID.encode() + b"\0" + PASSWORD.encode() + b"\0" + b"\0" + bytes([0x34, 0, 0]) + b"\0"
    sock.sendall(struct.pack(">IIII", 16 + len(body), 0x09, 0, 1) + body)
    header = b""
    while len(header) < 16:
        chunk = sock.recv(16 - len(header))
        if not chunk:
            raise RuntimeError("connection closed before bind_transceiver_resp")
        header += chunk
    length, command_id, status, _ = struct.unpack(">IIII", header)
    remaining = length - 16
    while remaining:
        remaining -= len(sock.recv(remaining))
    if command_id != 0x80000009 or status != 0:
        raise RuntimeError(f"bind refused: command 0x{command_id:08x} status 0x{status:08x}")


class Flooder:
    """One connection that writes enquire_link and never reads."""

    def __init__(self, port: int, *, bind: bool) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if bind:
            bind_transceiver(self.sock)
        # A small receive buffer so that the gateway's writes back up soon, as for a peer
        # that reads nothing at all.
        self.sock.setblocking(False)
        self.sequence = 2
        self.sent = 0
        self.closed_by_gateway = False

    def pump(self) -> None:
        """Write as much as the socket takes now."""
        if self.closed_by_gateway:
            return
        data = enquire_links(self.sequence, ENQUIRE_LINKS_PER_WRITE)
        try:
            while True:
                n = self.sock.send(data)
                self.sent += n
                self.sequence += ENQUIRE_LINKS_PER_WRITE
                if n < len(data):
                    return
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            self.closed_by_gateway = True

    def close(self) -> None:
        self.sock.close()


def flood(pid: int, port: int, *, connections: int, bind: bool, seconds: float) -> dict[str, Any]:
    baseline = rss_bytes(pid)
    flooders = [Flooder(port, bind=bind) for _ in range(connections)]
    peak = baseline
    deadline = time.monotonic() + seconds
    next_sample = 0.0
    while time.monotonic() < deadline and not all(f.closed_by_gateway for f in flooders):
        for f in flooders:
            f.pump()
        now = time.monotonic()
        if now >= next_sample:
            peak = max(peak, rss_bytes(pid))
            next_sample = now + 0.5
        time.sleep(0.005)
    peak = max(peak, rss_bytes(pid))
    closed = sum(f.closed_by_gateway for f in flooders)
    sent = sum(f.sent for f in flooders)
    for f in flooders:
        f.close()
    time.sleep(3.0)
    after = rss_bytes(pid)
    return {
        "scenario": "bound" if bind else "unbound",
        "seconds": seconds,
        "connections": connections,
        "sent_mb": round(sent / MB, 1),
        "peak_growth_mb": round((peak - baseline) / MB, 1),
        "growth_per_connection_mb": round((peak - baseline) / MB / connections, 2),
        "after_close_growth_mb": round((after - baseline) / MB, 1),
        "closed_by_gateway": f"{closed}/{connections}",
    }


def run_scenario(*, connections: int, bind: bool, seconds: float) -> dict[str, Any]:
    """Start a gateway, flood it, stop it."""
    with tempfile.TemporaryDirectory(prefix="smpp-flood-") as tmp:
        directory = Path(tmp)
        smpp_port, http_port = free_port(), free_port()
        config = {
            "redis": {"url": "embedded", "data_dir": str(directory / "redis")},
            "http": {"listen": f"127.0.0.1:{http_port}", "token": "bench"},
            "carriers": [],
            "push": {"templates_file": str(REPO / "config" / "templates.yaml")},
            "ivr": {"fastagi": {"enabled": False}, "menus_file": str(REPO / "config" / "ivr.yaml")},
            "smpp_server": {
                "listen": f"127.0.0.1:{smpp_port}",
                "accounts": [{"system_id": SYSTEM_ID, "password": PASSWORD}],
            },
            "state_dir": str(directory / "var"),
        }
        config_path = directory / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        log_path = directory / "gateway.log"
        gateway = run_gateway(config_path, log_path)
        try:
            wait_http_ok(gateway, f"http://127.0.0.1:{http_port}/healthz", log_path)
            time.sleep(1.0)
            return flood(gateway.pid, smpp_port, connections=connections, bind=bind, seconds=seconds)
        finally:
            terminate(gateway)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="flood time of the bound session")
    parser.add_argument("--connections", type=int, default=20, help="unbound connections")
    parser.add_argument("--quick", action="store_true", help="10 s and 5 connections")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.connections = 10.0, 5
    results = [
        # Each scenario in a fresh gateway: memory freed by one would be reused by the next.
        run_scenario(connections=1, bind=True, seconds=args.seconds),
        run_scenario(connections=args.connections, bind=False, seconds=max(5.0, args.seconds / 3)),
    ]
    headers = list(results[0])
    print_table(headers, [[r[h] for h in headers] for r in results])
    print_json_line({"benchmark": "smpp_flood", "date": today(), "machine": machine(), "scenarios": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
