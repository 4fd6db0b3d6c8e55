"""Prometheus metrics, one registry for the process (served at GET /metrics).

Label values are carrier names, PDU command names, status names and states: never numbers
of citizens.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# No "*_created" series: one per counter and histogram, they double the series for a
# value Prometheus does not need (it detects counter resets itself).
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

binds_up = Gauge("gateway12123_smpp_sessions_bound", "SMPP sessions currently bound", ["carrier", "bind_type"], registry=REGISTRY)
pdus = Counter("gateway12123_smpp_pdus_total", "SMPP PDUs by direction and command", ["direction", "command"], registry=REGISTRY)
submit_responses = Counter("gateway12123_smpp_submit_responses_total", "submit_sm_resp by carrier and command_status", ["carrier", "status"], registry=REGISTRY)
submits_fenced = Counter("gateway12123_submits_fenced_total", "Submits not sent because their claim's lease had run out in this process (another may have taken them), by carrier", ["carrier"], registry=REGISTRY)
receipts = Counter("gateway12123_receipts_total", "Delivery receipts by carrier and state", ["carrier", "state"], registry=REGISTRY)
# Receipts that found no recorded submit, by carrier (gateway/push/lua/outcomes.lua):
# which carrier's ids stopped matching, or sends another account's receipts.
receipts_early = Counter("gateway12123_push_receipts_early_total",
                         "Receipts that arrived before their submit response was recorded (parked), by carrier",
                         ["carrier"], registry=REGISTRY)
receipts_early_applied = Counter("gateway12123_push_receipts_early_applied_total",
                                 "Parked receipts applied when the submit response was recorded, by carrier",
                                 ["carrier"], registry=REGISTRY)
receipts_unparked = Counter("gateway12123_push_receipts_unparked_total",
                            "Parked receipts dropped, the oldest first, to keep at most push.early_receipts_max "
                            "parked (a receipt that beats its own submit_sm_resp is applied within seconds), by carrier",
                            ["carrier"], registry=REGISTRY)
notifications = Counter("gateway12123_notifications_total", "Notification state transitions", ["state"], registry=REGISTRY)
queue_depth = Gauge("gateway12123_queue_depth", "Notifications waiting, by lane", ["lane"], registry=REGISTRY)
mo_messages = Counter("gateway12123_mo_messages_total", "Citizens' messages to 12123 by keyword", ["keyword"], registry=REGISTRY)
agi_calls = Counter("gateway12123_agi_calls_total", "FastAGI calls by outcome", ["outcome"], registry=REGISTRY)
agi_missing_prompts = Counter("gateway12123_agi_missing_prompts_total",
                              "STREAM FILE of a sound file Asterisk does not have (the menu went on)",
                              registry=REGISTRY)
ami_originates = Counter("gateway12123_ami_originates_total", "Outbound reminder calls by outcome", ["outcome"], registry=REGISTRY)
ami_calls_taken_over = Counter(
    "gateway12123_ami_calls_taken_over_total",
    "Open reminder calls whose lease passed between processes: taken (this process now follows a call of a "
    "process that died or stopped) or lost (another took over ours after our lease ran out)",
    ["direction"], registry=REGISTRY)
submit_latency = Histogram(
    "gateway12123_submit_latency_seconds", "submit_sm to submit_sm_resp", ["carrier"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY,
)
intake_to_submit_latency = Histogram(
    "gateway12123_intake_to_submit_seconds", "accepted to first submit_sm on the wire",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300), registry=REGISTRY,
)
agi_step_latency = Histogram(
    "gateway12123_agi_step_seconds", "caller input to the next AGI command",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1), registry=REGISTRY,
)
redis_up = Gauge("gateway12123_redis_up", "1 when Redis answers", registry=REGISTRY)
redis_writable = Gauge("gateway12123_redis_writable", "1 when Redis takes writes (a SET probe each second)",
                       registry=REGISTRY)
# Hostile and careless peers (issue 12): connections refused or dropped by a limit, and
# voice identity checks held back by an attempt limit.
connections_refused = Counter(
    "gateway12123_connections_refused_total", "connections refused or dropped by a limit, by server and reason",
    ["server", "reason"], registry=REGISTRY,
)
ivr_identity_limited = Counter(
    "gateway12123_ivr_identity_limited_total", "voice identity checks held by an attempt limit, by limit",
    ["limit"], registry=REGISTRY,
)
ivr_enumeration_suspected = Counter(
    "gateway12123_ivr_enumeration_suspected_total",
    "failed voice identity checks counted while the global failure rate looked like enumeration",
    registry=REGISTRY,
)
# Fleet-wide carrier limits (docs/fleet.md): send slots of an account's TPS reserved in
# Redis, spent or dropped unspent (late), and the reservation calls that got them.
account_slots = Counter(
    "gateway12123_account_slots_total", "send slots of a carrier account reserved in Redis, by outcome (spent, dropped)",
    ["account", "outcome"], registry=REGISTRY,
)
account_reservations = Counter(
    "gateway12123_account_reservations_total",
    "reservation calls for an account's send slots, by result (granted, none_free, failed; fenced: also counted when the TAT had been written by another server)",
    ["account", "result"], registry=REGISTRY,
)

# --- operations (gateway/ops/fleet.py sets these every report interval) ---------------------
# A carrier is listed from the start, 0 until it binds: an alert on "up == 0" fires for a
# carrier that never bound, which a missing series would hide.
carrier_up = Gauge("gateway12123_carrier_up", "1 while the carrier has a bound session that can submit, else 0",
                   ["carrier"], registry=REGISTRY)
carrier_window_in_use = Gauge("gateway12123_carrier_window_in_use", "submit_sm sent and not yet answered, this process",
                              ["carrier"], registry=REGISTRY)
carrier_tps_limit = Gauge("gateway12123_carrier_tps_limit", "submit_sm per second this process allows the carrier",
                          ["carrier"], registry=REGISTRY)
dead_letters = Gauge("gateway12123_dead_letters", "failed or rejected notifications kept for retry (fleet-wide, from Redis)",
                     registry=REGISTRY)
awaiting_receipt = Gauge("gateway12123_awaiting_receipt", "submitted notifications waiting for their receipt (fleet-wide)",
                         registry=REGISTRY)
receipts_parked = Gauge("gateway12123_receipts_parked", "receipts waiting for their submit to be recorded (they beat its "
                        "submit_sm_resp, or belong to no message of ours), against push.early_receipts_max (fleet-wide)",
                        registry=REGISTRY)
oldest_queued_age = Gauge("gateway12123_oldest_queued_age_seconds", "age of the oldest notification waiting in a lane "
                          "(fleet-wide; 0 when the lane is empty)", ["lane"], registry=REGISTRY)
quiet_hours_held = Gauge("gateway12123_quiet_hours_held", "notifications held until quiet hours end (fleet-wide)",
                         registry=REGISTRY)
build_info = Gauge("gateway12123_build_info", "always 1; the labels say which build runs", ["version", "python"],
                   registry=REGISTRY)


def _record_build() -> None:
    import platform
    from importlib import metadata

    try:
        version = metadata.version("gateway12123")
    except metadata.PackageNotFoundError:
        version = "unknown"
    build_info.labels(version, platform.python_version()).set(1)


_record_build()
