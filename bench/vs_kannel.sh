#!/usr/bin/env bash
# Kannel (Debian's kannel 1.4.5) as the baseline of the throughput comparison.
#
#   bench/vs_kannel.sh                 # N=20000 messages per scenario
#   N=100000 bench/vs_kannel.sh        # the full run recorded in docs/kannel.md
#
# Starts the carrier simulator (bench/run_simulator.py), then bearerbox and smsbox with
# a configuration rendered from bench/kannel/kannel.conf.in into a temporary folder
# (free ports, max-pending-submits 1000, no throughput limit, internal DLR storage),
# and runs bench/kannel_rate.py for three scenarios:
#   ascii        single-part GSM text, no delivery reports
#   ascii-dlr    the same with dlr-mask=3 and a dlr-url per message
#   chinese-dlr  92 Chinese characters (coding=2, charset=UTF-8: two UCS2 parts) with dlr
# Prints one table per scenario, then a table of all three and one JSON line.
# Everything started here is stopped on exit (KEEP=1 keeps the folder with the logs).
#
# Environment:
#   N               messages per run (20000)
#   REPEAT          runs of each scenario; the summary shows the median run (1)
#   SAVE_RESULTS    copy the JSON lines of every run to this file
#   CONCURRENCY     sendsms requests pending (500: the most one smsbox serves)
#   WARMUP          messages sent before measuring (2000)
#   RECEIPT_DELAY   simulator: seconds from submit to receipt (0.1)
#   DELIVER_WINDOW  simulator: unacknowledged deliver_sm per session (100)
#   LOG_LEVEL       Kannel's log files (2 = warnings)
#   STORE           empty: no message store; "file" or "spool": Kannel's store on disk
#   HOLD=1          start everything, print the ports, wait for Ctrl-C
#   KEEP=1          keep the temporary folder (configuration and logs)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
N=${N:-20000}
CONCURRENCY=${CONCURRENCY:-500}
WARMUP=${WARMUP:-2000}
REPEAT=${REPEAT:-1}
RECEIPT_DELAY=${RECEIPT_DELAY:-0.1}
DELIVER_WINDOW=${DELIVER_WINDOW:-100}
export LOG_LEVEL=${LOG_LEVEL:-2}
STORE=${STORE:-}

if [[ ! -x /usr/sbin/bearerbox || ! -x /usr/sbin/smsbox ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "vs_kannel: Kannel is not installed; as root: apt-get install -y kannel" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q kannel >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q kannel >/dev/null; }
  # The package's init script is not used: this script runs its own boxes.
  (service kannel stop || true) >/dev/null 2>&1
fi

# Hundreds of client connections on each side of the sendsms port, plus dlr-url ones.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vs_kannel.XXXXXX")
export WORK_DIR=$WORK
PIDS=()
cleanup() {
  local status=$?
  # Reverse start order: smsbox, bearerbox, simulator.
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    kill -TERM "${PIDS[i]}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $status -ne 0 ]]; then
    echo "vs_kannel: failed ($status); last lines of the logs in $WORK:" >&2
    tail -n 5 "$WORK"/*.log "$WORK"/*.out 2>/dev/null >&2 || true
  fi
  if [[ ${KEEP:-0} == 1 || $status -ne 0 ]]; then
    echo "vs_kannel: logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() {  # wait_for SECONDS PYTHON-EXPRESSION: poll until it is true
  "$PYTHON" - "$1" "$2" <<'EOF'
import json, socket, sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[1])
def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
def stats(port):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2))
while time.monotonic() < deadline:
    try:
        if eval(sys.argv[2]):
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit(f"timed out waiting for: {sys.argv[2]}")
EOF
}

# -- the carrier simulator -------------------------------------------------------------
# SMPP 3.4 limits the password to 8 octets (9 with the NUL).
export SMSC_USERNAME=kannel SMSC_PASSWORD=kbench12 SMSC_ID=sim
"$PYTHON" bench/run_simulator.py --listen 127.0.0.1:0 --account "$SMSC_USERNAME:$SMSC_PASSWORD" \
  --no-record-texts --receipt-delay "$RECEIPT_DELAY" --deliver-window "$DELIVER_WINDOW" \
  --report-interval 3600 --stats-listen 127.0.0.1:0 --ports-file "$WORK/sim.json" >"$WORK/simulator.out" 2>&1 &
PIDS+=($!)
wait_for 20 "__import__('os').path.exists('$WORK/sim.json')"
read -r SMSC_PORT STATS_PORT < <("$PYTHON" -c "import json; p = json.load(open('$WORK/sim.json')); print(p['smpp_port'], p['stats_port'])")
export SMSC_PORT

# -- Kannel's configuration ------------------------------------------------------------
read -r ADMIN_PORT SMSBOX_PORT SENDSMS_PORT < <("$PYTHON" - <<'EOF'
import socket
sockets = [socket.socket() for _ in range(3)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
EOF
)
export ADMIN_PORT SMSBOX_PORT SENDSMS_PORT
export ADMIN_PASSWORD=admin-bench SENDSMS_USERNAME=bench SENDSMS_PASSWORD=bench-pw
export MAX_PENDING_SUBMITS=1000 MAX_PENDING_REQUESTS=${MAX_PENDING_REQUESTS:-512}
case "$STORE" in
  "") export STORE_LINES="# no message store: queued messages live in bearerbox's memory only" ;;
  file) export STORE_LINES="store-type = file
store-location = \"$WORK/kannel.store\"" ;;
  spool) mkdir -p "$WORK/spool"; export STORE_LINES="store-type = spool
store-location = \"$WORK/spool\"" ;;
  *) echo "vs_kannel: STORE must be empty, file or spool" >&2; exit 2 ;;
esac
"$PYTHON" -c 'import os, string, sys; sys.stdout.write(string.Template(open(sys.argv[1]).read()).substitute(os.environ))' \
  bench/kannel/kannel.conf.in >"$WORK/kannel.conf"

# -- bearerbox and smsbox (stderr: panics only; the log files get LOG_LEVEL) -------------
/usr/sbin/bearerbox -v 4 "$WORK/kannel.conf" >"$WORK/bearerbox.out" 2>&1 &
BEARERBOX_PID=$!
PIDS+=("$BEARERBOX_PID")
wait_for 20 "listening($SMSBOX_PORT) and stats($STATS_PORT)['bound_sessions'] >= 1"
/usr/sbin/smsbox -v 4 "$WORK/kannel.conf" >"$WORK/smsbox.out" 2>&1 &
SMSBOX_PID=$!
PIDS+=("$SMSBOX_PID")
wait_for 20 "listening($SENDSMS_PORT)"

echo "vs_kannel: Kannel $(dpkg-query -W -f='${Version}' kannel 2>/dev/null), $(nproc) cores, N=$N, concurrency=$CONCURRENCY, logs in $WORK"
rate() {
  "$PYTHON" bench/kannel_rate.py run --sendsms-port "$SENDSMS_PORT" --username "$SENDSMS_USERNAME" \
    --password "$SENDSMS_PASSWORD" --stats-port "$STATS_PORT" --bearerbox-pid "$BEARERBOX_PID" \
    --smsbox-pid "$SMSBOX_PID" --concurrency "$CONCURRENCY" "$@"
}
if [[ ${HOLD:-0} == 1 ]]; then
  # For profiling or trying things by hand: everything stays up until Ctrl-C.
  declare -p SENDSMS_PORT SENDSMS_USERNAME SENDSMS_PASSWORD STATS_PORT BEARERBOX_PID SMSBOX_PID ADMIN_PORT \
    ADMIN_PASSWORD | sed 's/^declare -x //; s/^declare -- //' | tee "$WORK/env"
  echo "vs_kannel: holding; source $WORK/env and run bench/kannel_rate.py run ..."
  sleep infinity &
  wait $!
fi
if [[ $WARMUP -gt 0 ]]; then
  rate --messages "$WARMUP" --text chinese --dlr --label warmup >/dev/null
fi
RESULTS=$WORK/results.jsonl
for (( run=1; run<=REPEAT; run++ )); do
  rate --messages "$N" --text ascii --label ascii --results "$RESULTS"
  rate --messages "$N" --text ascii --dlr --label ascii-dlr --results "$RESULTS"
  rate --messages "$N" --text chinese --dlr --label chinese-dlr --results "$RESULTS"
done
if [[ -n ${SAVE_RESULTS:-} ]]; then cp "$RESULTS" "$SAVE_RESULTS"; fi
echo
echo "vs_kannel: summary (median of $REPEAT run(s) per scenario)"
"$PYTHON" bench/kannel_rate.py summary "$RESULTS"
