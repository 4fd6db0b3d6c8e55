"""The Kannel half of the throughput comparison: sendsms HTTP in, SMPP out to the simulator.

    .venv/bin/python bench/kannel_rate.py run --sendsms-port 13013 --username bench --password pw \
        --stats-port 8899 --bearerbox-pid 123 --smsbox-pid 124 --messages 20000 --text chinese --dlr
    .venv/bin/python bench/kannel_rate.py summary results.jsonl

bench/vs_kannel.sh starts everything and calls this; run it by hand only against a
Kannel and a bench/run_simulator.py that are already up.

What ``run`` does
-----------------
* Feeds ``--messages`` sendsms requests (GET /cgi-bin/sendsms) to Kannel's smsbox over
  ``--concurrency`` HTTP/1.1 keep-alive connections (default and maximum 500, see
  KANNEL_MAX_HTTP_CONNECTIONS), one request outstanding on each, so that many
  requests are pending at any time (smsbox answers a sendsms once bearerbox has
  queued the message, not when the SMSC has taken it).  The connections are opened
  and used once before the clock starts.  Every message
  goes to its own number (``138`` + 8 digits), from 12123.
* ``--text ascii``: one GSM 7-bit part (Kannel's coding=0).  ``--text chinese``:
  ``coding=2&charset=UTF-8``, which Kannel sends as UCS2 (data_coding 8) in two
  parts with a UDH (sendsms-user ``concatenation = true``).
* ``--dlr``: ``dlr-mask=3`` (delivered or not delivered: final states only) and a
  ``dlr-url`` per message pointing at a small HTTP receiver in this process, which
  counts receipts by message and state.  Kannel asks for a receipt on the first part
  of a multi-part message only, so one receipt per message is the full count.
* Counts *at the simulator*: it polls ``GET /`` of run_simulator.py's stats port every
  ``--poll-seconds`` and takes the difference of its ``messages`` counter (whole
  messages, parts joined) since the start.

Figures: ``messages_per_second`` is messages / seconds from the first request to the
poll that saw the last message at the simulator (poll resolution included);
``receipts_per_second`` is receipts / seconds from the first request to the last
receipt at the receiver; ``wall_seconds`` runs until both are complete.  CPU seconds
of bearerbox and smsbox (all threads, user + system, from /proc/PID/stat) are the
differences over the run; the simulator's and this process's CPU are printed too,
since all of them share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

# The comparison's texts.  The Chinese one is 92 characters: two UCS2 parts of at
# most 67 characters (140 octets less a 6-octet UDH), as a real 12123 reminder.
ASCII_TEXT = (
    "12123: your driving test is booked for 2026-11-30 09:00 at the city vehicle "
    "office. Bring your ID. Reply QX to cancel."
)
CHINESE_TEXT = (
    "【12123】尊敬的机动车驾驶人：您预约的科目一考试已安排在2026年11月30日上午9时，"
    "地点为市车管所考试中心。请携带身份证件提前三十分钟到达，逾期视为缺考。如需取消，请回复QX。"
)
SOURCE_ADDR = "12123"
# Kannel 1.4.5's HTTP server serves at most 500 connections at once; the 501st is not
# answered until an idle one times out (about a minute later).  It does not answer
# pipelined requests either, so 500 is the most sendsms requests one smsbox can have
# pending (measured; see docs/kannel.md).
KANNEL_MAX_HTTP_CONNECTIONS = 500


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a process in MiB, or NaN when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Counts:
    """What the run saw; updated from the event loop only."""

    requests_sent: int = 0
    http_accepted: int = 0  # 202 with "0: Accepted for delivery" (or "3: Queued ...")
    http_errors: int = 0  # any other status; the text is kept in http_error_sample
    http_error_sample: str = ""
    connections_lost: int = 0
    receipts: int = 0  # distinct messages with a receipt
    duplicate_receipts: int = 0
    receipts_by_type: dict[str, int] = field(default_factory=dict)
    first_request_at: float = 0.0
    last_response_at: float = 0.0
    last_receipt_at: float = 0.0


# ---------------------------------------------------------------------------------------
# HTTP: sendsms client connections and the dlr-url receiver
# ---------------------------------------------------------------------------------------


class RequestSource:
    """Builds sendsms GET requests; the varying parts are the number and the dlr-url's n."""

    def __init__(
        self, *, path: str, username: str, password: str, text: str, coding: int | None,
        dlr_port: int | None, messages: int,
    ) -> None:
        query = {"username": username, "password": password, "from": SOURCE_ADDR, "text": text}
        if coding is not None:
            query.update(coding=str(coding), charset="UTF-8")
        self._prefix = f"GET {path}?{urllib.parse.urlencode(query)}&to=138".encode()
        self._dlr: tuple[bytes, bytes] | None = None
        if dlr_port is not None:
            # The dlr-url is itself URL-encoded inside the query; %d becomes the state.
            before = urllib.parse.quote(f"http://127.0.0.1:{dlr_port}/dlr?n=", safe="")
            after = urllib.parse.quote("&t=%d", safe="")
            self._dlr = (f"&dlr-mask=3&dlr-url={before}".encode(), after.encode())
        self._suffix = b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        self.messages = messages
        self.next_index = 0

    def take(self) -> bytes | None:
        index = self.next_index
        if index >= self.messages:
            return None
        self.next_index = index + 1
        number = b"%08d" % index
        if self._dlr is None:
            return self._prefix + number + self._suffix
        return self._prefix + number + self._dlr[0] + number + self._dlr[1] + self._suffix


def _content_length(head: bytes) -> int:
    at = head.lower().find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at + 2)
    return int(head[at + 17 : end if end >= 0 else len(head)])


class SendsmsConnection(asyncio.Protocol):
    """One keep-alive connection to smsbox with one request outstanding at a time."""

    # A sendsms without credentials: smsbox answers 403 and sends nothing.
    _PRIMING_REQUEST = b"GET /cgi-bin/sendsms HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    def __init__(self, run: KannelRun) -> None:
        self._run = run
        self._buffer = bytearray()
        self._outstanding = False
        self._primed: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def prime(self) -> asyncio.Future[None]:
        """One throw-away request, answered once smsbox has really accepted the connection."""
        self._primed = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(self._PRIMING_REQUEST)
        return self._primed

    def start(self) -> None:
        """Send the first request; each response sends the next."""
        self._send_next()

    def _send_next(self) -> None:
        request = self._run.source.take()
        if request is None:
            assert self.transport is not None
            self.transport.close()
            return
        self._outstanding = True
        self._run.counts.requests_sent += 1
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end])
            total = end + 4 + _content_length(head)
            if len(buffer) < total:
                return
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            if self._primed is not None and not self._primed.done():
                self._primed.set_result(None)
                continue
            self._outstanding = False
            self._run.sendsms_answered(int(head[9:12]), body)
            self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._primed is not None and not self._primed.done():
            self._primed.set_exception(ConnectionError("closed before the priming request was answered"))
        self._run.sendsms_connection_lost(self, self._outstanding)


class DlrReceiver(asyncio.Protocol):
    """The dlr-url endpoint: ``GET /dlr?n=INDEX&t=TYPE`` answered 200 with no body."""

    _OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, run: KannelRun) -> None:
        self._run = run
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        answered = 0
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buffer[:end])
            total = end + 4 + _content_length(head)
            if len(buffer) < total:
                break
            del buffer[:total]
            target = head[: head.find(b"\r\n")].split(b" ")[1]
            query = urllib.parse.parse_qs(target.partition(b"?")[2].decode("ascii", "replace"))
            self._run.receipt(int(query.get("n", ["-1"])[0]), query.get("t", ["?"])[0])
            answered += 1
        if answered:
            assert self.transport is not None
            self.transport.write(self._OK * answered)


# ---------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------


async def fetch_stats(port: int) -> dict[str, Any]:
    """The simulator's counters from run_simulator.py's stats port."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return json.loads(data.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


class KannelRun:
    """One scenario: connections, the dlr-url receiver, the simulator poll, the figures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counts = Counts()
        self.source: RequestSource
        self._seen = bytearray(args.messages)
        self._loop = asyncio.get_running_loop()
        self._connections_open = 0
        self.http_done = asyncio.Event()  # every connection has sent its last request

    # -- callbacks from the protocols -------------------------------------------------

    def sendsms_answered(self, status: int, body: bytes) -> None:
        counts = self.counts
        counts.last_response_at = self._loop.time()
        if status == 202:
            counts.http_accepted += 1
        else:
            counts.http_errors += 1
            if not counts.http_error_sample:
                counts.http_error_sample = f"{status} {body[:80].decode('utf-8', 'replace')}"

    def sendsms_connection_lost(self, connection: SendsmsConnection, outstanding: bool) -> None:
        self._connections_open -= 1
        if outstanding:
            # Its request may or may not have been queued: counted, never re-sent.
            self.counts.connections_lost += 1
        if self.source.next_index < self.source.messages:
            self._loop.create_task(self._connect(start=True))
        elif self._connections_open == 0:
            self.http_done.set()

    def receipt(self, index: int, state: str) -> None:
        counts = self.counts
        counts.receipts_by_type[state] = counts.receipts_by_type.get(state, 0) + 1
        if not 0 <= index < len(self._seen):
            return
        if self._seen[index]:
            counts.duplicate_receipts += 1
            return
        self._seen[index] = 1
        counts.receipts += 1
        counts.last_receipt_at = self._loop.time()

    # -- the run -----------------------------------------------------------------------

    async def _connect(self, start: bool) -> SendsmsConnection | None:
        self._connections_open += 1
        try:
            _, connection = await self._loop.create_connection(
                lambda: SendsmsConnection(self), "127.0.0.1", self.args.sendsms_port
            )
        except OSError as e:
            self._connections_open -= 1
            self.counts.http_errors += 1
            self.counts.http_error_sample = self.counts.http_error_sample or f"connect: {e}"
            if self._connections_open == 0:
                self.http_done.set()
            return None
        if start:
            connection.start()
        return connection

    async def run(self) -> dict[str, Any]:
        args = self.args
        dlr_server = None
        dlr_port = None
        if args.dlr:
            dlr_server = await self._loop.create_server(lambda: DlrReceiver(self), "127.0.0.1", 0, backlog=4096)
            dlr_port = dlr_server.sockets[0].getsockname()[1]
        chinese = args.text == "chinese"
        self.source = RequestSource(
            path="/cgi-bin/sendsms", username=args.username, password=args.password,
            text=CHINESE_TEXT if chinese else ASCII_TEXT, coding=2 if chinese else None,
            dlr_port=dlr_port, messages=args.messages,
        )
        load_at_start = os.getloadavg()[0]  # other work on the machine skews the rates
        before = await fetch_stats(args.stats_port)
        kannel_pids = {"bearerbox": args.bearerbox_pid, "smsbox": args.smsbox_pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in kannel_pids.items()}
        own_before = os.times()

        # Connect first, then start the clock: smsbox's listen backlog is short, and a
        # connection it has not accepted yet waits for a retransmission (a second or
        # more), which is no part of Kannel's rate.  So connect in small batches and
        # have each answer one request before the run begins.
        connections: list[SendsmsConnection | None] = []
        wanted = min(args.concurrency, args.messages)
        while len(connections) < wanted:
            size = min(10, wanted - len(connections))
            batch = await asyncio.gather(*(self._connect(start=False) for _ in range(size)))
            await asyncio.wait_for(asyncio.gather(*(c.prime() for c in batch if c is not None)), 30)
            connections.extend(batch)
        start = self._loop.time()
        self.counts.first_request_at = start
        for connection in connections:
            if connection is not None:
                connection.start()

        deadline = start + args.timeout
        messages_done_at: float | None = None
        after = before
        while self._loop.time() < deadline:
            await asyncio.sleep(args.poll_seconds)
            after = await fetch_stats(args.stats_port)
            delivered = after["messages"] - before["messages"]
            target = args.messages if not self.http_done.is_set() else self.counts.http_accepted
            if messages_done_at is None and delivered >= target:
                messages_done_at = self._loop.time()
            receipts_complete = not args.dlr or self.counts.receipts >= (
                self.counts.http_accepted if self.http_done.is_set() else args.messages
            )
            if messages_done_at is not None and receipts_complete and self.http_done.is_set():
                break
        end = self._loop.time()
        own_after = os.times()
        cpu_after = {name: cpu_seconds(pid) for name, pid in kannel_pids.items()}
        if dlr_server is not None:
            dlr_server.close()

        counts = self.counts
        messages = after["messages"] - before["messages"]
        submit_sm = after["submit_sm"] - before["submit_sm"]
        complete = messages_done_at is not None and (not args.dlr or counts.receipts >= counts.http_accepted)
        messages_seconds = (messages_done_at or end) - start
        receipts_seconds = (counts.last_receipt_at - start) if counts.receipts else 0.0
        kannel_cpu = {name: cpu_after[name] - cpu_before[name] for name in kannel_pids}
        result: dict[str, Any] = {
            "bench": "kannel",
            "scenario": args.label or f"{args.text}{'-dlr' if args.dlr else ''}",
            "kannel_version": kannel_version(),
            "date": datetime.date.today().isoformat(),
            "cores": os.cpu_count(),
            "messages_requested": args.messages,
            "concurrency": args.concurrency,
            "text": args.text,
            "dlr": args.dlr,
            "complete": complete,
            "http_accepted": counts.http_accepted,
            "http_errors": counts.http_errors,
            "connections_lost": counts.connections_lost,
            "messages_at_simulator": messages,
            "submit_sm_at_simulator": submit_sm,
            "messages_per_second": messages / messages_seconds if messages_seconds > 0 else 0.0,
            "submit_sm_per_second": submit_sm / messages_seconds if messages_seconds > 0 else 0.0,
            "http_accepted_per_second": (
                counts.http_accepted / (counts.last_response_at - start) if counts.last_response_at > start else 0.0
            ),
            "receipts": counts.receipts,
            "duplicate_receipts": counts.duplicate_receipts,
            "receipts_by_type": counts.receipts_by_type,
            "receipts_per_second": counts.receipts / receipts_seconds if receipts_seconds > 0 else 0.0,
            "wall_seconds": end - start,
            "bearerbox_cpu_seconds": kannel_cpu["bearerbox"],
            "smsbox_cpu_seconds": kannel_cpu["smsbox"],
            "kannel_cpu_seconds": kannel_cpu["bearerbox"] + kannel_cpu["smsbox"],
            "kannel_cpu_ms_per_message": (
                1000 * (kannel_cpu["bearerbox"] + kannel_cpu["smsbox"]) / messages if messages else 0.0
            ),
            "bearerbox_peak_rss_mib": peak_rss_mib(args.bearerbox_pid),
            "smsbox_peak_rss_mib": peak_rss_mib(args.smsbox_pid),
            "simulator_cpu_seconds": after["cpu_seconds"] - before["cpu_seconds"],
            "load_generator_cpu_seconds": (own_after.user + own_after.system) - (own_before.user + own_before.system),
        }
        result["load_average_1m_at_end"] = os.getloadavg()[0]
        result["load_average_1m_at_start"] = load_at_start
        if counts.http_error_sample:
            result["http_error_sample"] = counts.http_error_sample
        return result


def kannel_version() -> str:
    """The installed kannel package version (Debian), or "" if dpkg cannot tell."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "kannel"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------

_ROWS = (
    ("scenario", "scenario", "{}"),
    ("messages at simulator", "messages_at_simulator", "{:,}"),
    ("submit_sm at simulator", "submit_sm_at_simulator", "{:,}"),
    ("messages/s (at simulator)", "messages_per_second", "{:,.0f}"),
    ("submit_sm/s", "submit_sm_per_second", "{:,.0f}"),
    ("sendsms accepted/s (HTTP)", "http_accepted_per_second", "{:,.0f}"),
    ("receipts (dlr-url calls)", "receipts", "{:,}"),
    ("receipts/s", "receipts_per_second", "{:,.0f}"),
    ("wall seconds", "wall_seconds", "{:.2f}"),
    ("bearerbox CPU s", "bearerbox_cpu_seconds", "{:.2f}"),
    ("smsbox CPU s", "smsbox_cpu_seconds", "{:.2f}"),
    ("Kannel CPU ms/message", "kannel_cpu_ms_per_message", "{:.3f}"),
    ("bearerbox peak RSS MiB", "bearerbox_peak_rss_mib", "{:.0f}"),
    ("simulator CPU s", "simulator_cpu_seconds", "{:.2f}"),
    ("load generator CPU s", "load_generator_cpu_seconds", "{:.2f}"),
    ("load average (1 min) at start", "load_average_1m_at_start", "{:.2f}"),
    ("HTTP errors / lost", "http_errors", "{:,}"),
    ("complete", "complete", "{}"),
)


def median_runs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario (in first-seen order), the run with the median messages/s, with
    ``runs`` and ``messages_per_second_range`` (min, max) over all its runs added."""
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_scenario.setdefault(r["scenario"], []).append(r)
    medians = []
    for runs in by_scenario.values():
        ranked = sorted(runs, key=lambda r: r["messages_per_second"])
        chosen = dict(ranked[(len(ranked) - 1) // 2])
        chosen["runs"] = len(runs)
        chosen["messages_per_second_range"] = [ranked[0]["messages_per_second"], ranked[-1]["messages_per_second"]]
        medians.append(chosen)
    return medians


def table(results: list[dict[str, Any]]) -> str:
    """Results side by side, one column per scenario."""
    width = max(len(label) for label, _, _ in _ROWS)
    lines = []
    for label, key, fmt in _ROWS:
        cells = []
        for r in results:
            value = r.get(key, "")
            if key == "http_errors":
                cells.append(f"{r['http_errors']:,} / {r['connections_lost']:,}")
            elif key == "messages_per_second" and r.get("runs", 1) > 1:
                low, high = r["messages_per_second_range"]
                cells.append(f"{value:,.0f} ({low:,.0f}-{high:,.0f})")
            else:
                cells.append(fmt.format(value) if value != "" else "")
        lines.append(f"{label:<{width}}  " + "  ".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one scenario against a running Kannel and simulator")
    run.add_argument("--sendsms-port", type=int, required=True, help="smsbox sendsms-port")
    run.add_argument("--username", default="bench", help="sendsms-user username")
    run.add_argument("--password", default="bench", help="sendsms-user password")
    run.add_argument("--stats-port", type=int, required=True, help="bench/run_simulator.py --stats-listen port")
    run.add_argument("--bearerbox-pid", type=int, required=True)
    run.add_argument("--smsbox-pid", type=int, required=True)
    run.add_argument("--messages", type=int, default=20_000)
    run.add_argument("--concurrency", type=int, default=KANNEL_MAX_HTTP_CONNECTIONS,
                     help="sendsms requests kept pending, one per connection (Kannel serves at most 500)")
    run.add_argument("--text", choices=("ascii", "chinese"), default="ascii")
    run.add_argument("--dlr", action="store_true", help="dlr-mask=3 with a dlr-url to this process")
    run.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS")
    run.add_argument("--poll-seconds", type=float, default=0.02, help="simulator counter poll interval")
    run.add_argument("--label", default="", help="scenario name in the output")
    run.add_argument("--results", default=None, metavar="PATH", help="append the JSON line here too")
    summary = sub.add_parser(
        "summary", help="table (median run per scenario) and one JSON line from a results file"
    )
    summary.add_argument("results", metavar="PATH")
    args = parser.parse_args(argv)

    if args.command == "summary":
        with open(args.results) as f:
            results = [json.loads(line) for line in f if line.strip()]
        medians = median_runs(results)
        print(table(medians))
        print(json.dumps({
            "bench": "kannel", "machine": platform.node(), "cores": os.cpu_count(),
            "median": medians, "runs": results,
        }))
        return 0 if all(r["complete"] for r in results) else 1

    async def go() -> dict[str, Any]:
        return await KannelRun(args).run()

    result = asyncio.run(go())
    print(table([result]))
    line = json.dumps(result)
    print(line, flush=True)
    if args.results:
        with open(args.results, "a") as f:
            f.write(line + "\n")
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
