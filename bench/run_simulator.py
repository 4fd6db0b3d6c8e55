"""Run the carrier simulator for a benchmark, with its counters readable over HTTP.

    .venv/bin/python bench/run_simulator.py --listen 127.0.0.1:0 --account kannel:secret \
        --no-record-texts --receipt-delay 0.1 --stats-listen 127.0.0.1:0 --ports-file DIR/sim.json

Takes every `smsc-sim` flag (gateway.smpp.simulator.add_arguments) plus:

* ``--stats-listen HOST:PORT``: ``GET /`` there answers one JSON object, the
  simulator's ``report()`` (without the per-message table) plus ``pid``,
  ``cpu_seconds`` (user + system of this process) and ``monotonic`` (this host's
  ``time.monotonic()``).  A load generator polls it to count submits *at the SMSC*,
  which is what bench/kannel_rate.py reports.  Two more paths are read once, at the
  end of a run: ``GET /messages`` lists every distinct whole message as
  ``[destination, text, copies, submit PDUs]`` (with texts recorded: the tests'
  duplicate count), and ``GET /windows`` every kept 1 s window per system_id as
  ``[unix second, submits]`` (what the carrier metered against the account's TPS).
* ``--ports-file PATH``: once both ports listen, ``{"smpp_port", "stats_port", "pid"}``
  is written there (atomically), so a shell script can wait for it and then write
  the ESME's configuration with the SMPP port.

Runs until SIGTERM or SIGINT, then stops the simulator (unbinding nothing: a real
SMSC going away just closes).  Nothing per PDU is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gateway.smpp import simulator as smsc_sim  # noqa: E402


def _stats_resource(simulator: Any) -> Any:
    from twisted.web.resource import Resource

    class Stats(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            body: Any
            if request.path == b"/messages":
                recorder = simulator.recorder
                body = [[destination, text, copies, recorder.submit_pdus[(destination, text)]]
                        for (destination, text), copies in recorder.copies.items()]
            elif request.path == b"/windows":
                rates = simulator.rates
                body = {system_id: rates.windows(system_id) for system_id in rates.peak_submits}
            elif request.path == b"/":
                times = os.times()
                body = simulator.report(per_message=False)
                body.update(pid=os.getpid(), cpu_seconds=times.user + times.system, monotonic=time.monotonic())
            else:
                request.setResponseCode(404)
                body = {"error": "unknown path; GET /, /messages or /windows"}
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(body).encode()

    return Stats()


def _write_ports(path: str, values: dict[str, int]) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(values, f)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    smsc_sim.add_arguments(parser)
    parser.add_argument("--stats-listen", type=smsc_sim._listen_address, default=("127.0.0.1", 0),
                        metavar="HOST:PORT", help="where GET / answers the counters as JSON")
    parser.add_argument("--ports-file", default=None, metavar="PATH",
                        help="write the bound ports here as JSON once listening")
    args = parser.parse_args(argv)
    try:
        options = smsc_sim.options_from_args(args)
    except ValueError as e:
        parser.error(str(e))

    from twisted.internet import asyncioreactor

    asyncioreactor.install(asyncio.new_event_loop())
    from twisted.internet import reactor
    from twisted.web.server import Site

    simulator = smsc_sim.CarrierSimulator(options, reactor)

    def start() -> None:
        simulator.startService()
        site = Site(_stats_resource(simulator))
        site.noisy = False
        host, port = args.stats_listen
        stats_port = reactor.listenTCP(port, site, interface=host)  # type: ignore[attr-defined]
        ports = {
            "smpp_port": simulator.port_number,
            "stats_port": stats_port.getHost().port,
            "pid": os.getpid(),
        }
        print(f"run_simulator: smpp on {options.host}:{ports['smpp_port']}, "
              f"stats on {host}:{ports['stats_port']}", flush=True)
        if args.ports_file:
            _write_ports(args.ports_file, ports)

    def stop() -> Any:
        if simulator.running:
            d = simulator.stopService()
            d.addCallback(lambda _: print(smsc_sim.report_line(simulator.report()), flush=True))
            return d
        return None

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", stop)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
