"""How many submit_sm (plus as many receipts) the carrier simulator answers per second.

    .venv/bin/python bench/simulator_rate.py --seconds 10 --window 2000
    .venv/bin/python bench/simulator_rate.py --rate 7000     # CPU needed for the target rate

The simulator runs as `python -m gateway.smpp.simulator` in its own process with
``--no-record-texts`` (as in the gateway benchmarks); this process is a deliberately
simple load generator on raw sockets: it binds as transceiver, keeps ``--window``
submit_sm outstanding (parts of a 2-part Chinese notification, registered_delivery 1),
acknowledges every receipt, and reads only PDU headers.  The report gives responses
and receipts per second and the simulator's CPU use (from /proc), i.e. how much of
one core the simulator needs for that rate.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gateway.smpp.pdu import BindTransceiver, CommandId, SubmitSm, Unbind, encode  # noqa: E402
from gateway.smpp.text import plan_message  # noqa: E402

_HEADER = struct.Struct(">IIII")
_TEXT = (
    "【12123】尊敬的机动车驾驶人：您预约的科目一考试已安排在2026年11月30日上午9时，"
    "地点为市车管所考试中心。请携带身份证件提前三十分钟到达，逾期视为缺考。如需取消，请回复QX。"
)


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc/PID/stat (utime, stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _start_simulator(receipt_delay: float, window: int) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.smpp.simulator", "--listen", "127.0.0.1:0",
         "--no-record-texts", "--receipt-delay", str(receipt_delay), "--deliver-window", str(window),
         "--report-interval", "3600"],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"listening on [^:]+:(\d+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return process, int(match.group(1))


def run(
    seconds: float, window: int, receipt_delay: float, connect: int | None = None, rate: float = 0.0
) -> dict[str, float]:
    process: subprocess.Popen[str] | None = None
    if connect is None:
        process, port = _start_simulator(receipt_delay, window)
    else:
        port = connect
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(encode(BindTransceiver(1, system_id="bench", password="bench")))
        plan = plan_message(_TEXT, reference=1)
        templates = [
            encode(SubmitSm(0, source_addr="12123", dest_addr_ton=1, dest_addr_npi=1,
                            destination_addr="13800138000", esm_class=p.esm_class,
                            data_coding=p.data_coding, registered_delivery=1,
                            short_message=p.short_message))
            for p in plan.parts
        ]
        ack_header = struct.Struct(">IIII")
        deliver_sm, submit_sm_resp = CommandId.DELIVER_SM, CommandId.SUBMIT_SM_RESP
        sequence = 1
        sent = 0
        outstanding = 0
        responses = receipts = errors = 0
        buffer = b""
        cpu_start = _cpu_seconds(process.pid) if process else (0.0, 0.0)
        start = time.perf_counter()
        deadline = start + seconds
        sock.setblocking(False)
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            room = window - outstanding
            if rate:
                room = min(room, int(rate * (now - start)) - sent)
            if room > 0:
                batch = []
                for _ in range(room):
                    sequence += 1
                    t = templates[sequence % len(templates)]
                    batch.append(t[:12] + sequence.to_bytes(4, "big") + t[16:])
                data = b"".join(batch)
                outstanding += room
                sent += room
                sock.setblocking(True)
                sock.sendall(data)
                sock.setblocking(False)
            readable, _, _ = select.select([sock], [], [], 0.002 if rate else 0.05)
            if not readable:
                continue
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise SystemExit("simulator closed the connection")
            buffer += chunk
            pos, n = 0, len(buffer)
            acks = []
            while n - pos >= 16:
                length, cid, status, seq = _HEADER.unpack_from(buffer, pos)
                if n - pos < length:
                    break
                pos += length
                if cid == submit_sm_resp:
                    outstanding -= 1
                    responses += 1
                    errors += status != 0
                elif cid == deliver_sm:
                    receipts += 1
                    acks.append(ack_header.pack(17, 0x80000005, 0, seq) + b"\0")
            buffer = buffer[pos:]
            if acks:
                sock.setblocking(True)
                sock.sendall(b"".join(acks))
                sock.setblocking(False)
        elapsed = time.perf_counter() - start
        cpu_end = _cpu_seconds(process.pid) if process else (float("nan"), float("nan"))
        user, system = cpu_end[0] - cpu_start[0], cpu_end[1] - cpu_start[1]
        sock.setblocking(True)
        sock.sendall(encode(Unbind(sequence + 1)))
        sock.close()
        return {
            "seconds": elapsed,
            "submit_sm_resp_per_second": responses / elapsed,
            "receipts_per_second": receipts / elapsed,
            "error_responses": errors,
            "simulator_cpu_share_of_one_core": (user + system) / elapsed,
            "  of which user": user / elapsed,
            "  of which system (kernel)": system / elapsed,
        }
    finally:
        if process is not None:
            process.terminate()
            process.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=2000, help="outstanding submit_sm")
    parser.add_argument("--receipt-delay", type=float, default=0.2)
    parser.add_argument("--connect", type=int, default=None, metavar="PORT",
                        help="load a simulator already listening on 127.0.0.1:PORT (e.g. one under a profiler)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="submit_sm per second to offer (default: as fast as answered)")
    args = parser.parse_args()
    result = run(args.seconds, args.window, args.receipt_delay, args.connect, args.rate)
    for key, value in result.items():
        print(f"{key:34} {value:,.2f}")


if __name__ == "__main__":
    main()
