"""The Redis key schema, one place (documented for core systems in docs/redis-schema.md).

Every key is under the configured prefix (default ``12123:``).  Keys that one Lua script
or MULTI must touch together carry the same hash tag ``{...}`` so they share a Redis
Cluster slot: an exam plan, its bookings, their histories and its cancel-unnotified set
are tagged ``{plan:<plan id>}``.

Partitions.  The notification pipeline is split into ``push.partitions`` partitions.  A
notification belongs to partition ``crc32(id as UTF-8) % partitions`` (`partition_of`):
stable, the same in every process and language (zlib.crc32, Java's CRC32, Go's
hash/crc32 IEEE).  A carrier message id's index entry and a receipt parked for it belong
to partition ``crc32("<carrier>:<canonical message id>") % partitions``
(`index_partition_of`): a receipt names only those.  With more than one partition every
key of partition k carries the hash tag ``{p<k>}`` (``12123:{p7}:lane:high``,
``12123:{p7}:notification:<id>``), so each ledger script touches one Cluster slot.  With
one partition (the default) the keys keep their untagged names of before partitions
(``12123:lane:high``, ``12123:notification:{<id>}``): a single Redis needs no migration.
The single ``notify`` intake stream stays accepted whatever the partitions.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

# gateway/ivr/reminders.py action_id_for: rem-<notification id>-<attempt>
_REMINDER_ACTION_ID = re.compile(r"^rem-(.+)-\d+$")
# Keys.mo_id with partitions: p<partition>-<stream entry id>
_PARTITIONED_MO_ID = re.compile(r"^p(\d+)-(\d+-\d+)$")


class PartitionedKeyError(LookupError):
    """A pipeline key asked for without its partition while there are several."""


@dataclass(frozen=True)
class PartitionKeys:
    """The pipeline keys of one partition (see the module docstring)."""

    prefix: str
    index: int
    tagged: bool

    @property
    def base(self) -> str:
        """What every key of this partition starts with: the prefix and, if tagged, the tag."""
        return f"{self.prefix}{{p{self.index}}}:" if self.tagged else self.prefix

    def notification(self, notification_id: str) -> str:
        if self.tagged:
            return f"{self.base}notification:{notification_id}"
        return f"{self.prefix}notification:{{{notification_id}}}"

    @property
    def notify_stream(self) -> str:
        """This partition's intake stream (untagged: the one shared ``notify`` stream)."""
        return f"{self.base}notify"

    @property
    def events_stream(self) -> str:
        return f"{self.base}events"

    def lane(self, priority: str) -> str:
        return f"{self.base}lane:{priority}"

    @property
    def scheduled(self) -> str:
        return f"{self.base}scheduled"

    @property
    def dead_letters(self) -> str:
        return f"{self.base}dead-letters"

    @property
    def inflight(self) -> str:
        return f"{self.base}inflight"

    @property
    def lane_sequence(self) -> str:
        return f"{self.base}lane-sequence"

    @property
    def voice_requests(self) -> str:
        return f"{self.base}voice-requests"

    @property
    def partner_receipts_pending(self) -> str:
        return f"{self.base}partner-receipts"

    @property
    def awaiting_receipt(self) -> str:
        return f"{self.base}awaiting-receipt"

    def message_id(self, carrier: str, message_id: str) -> str:
        return f"{self.base}msgid:{carrier}:{message_id}"

    def message_id_previous(self, carrier: str, message_id: str) -> str:
        return f"{self.base}msgid-prev:{carrier}:{message_id}"

    def early_receipt(self, carrier: str, message_id: str) -> str:
        return f"{self.base}early-receipt:{carrier}:{message_id}"

    def claim(self, token: str) -> str:
        return f"{self.base}claim:{token}"

    @property
    def early_receipts_parked(self) -> str:
        return f"{self.base}early-receipts-parked"

    @property
    def early_receipts(self) -> str:
        return f"{self.base}early-receipts"

    @property
    def deferred_receipts(self) -> str:
        """Receipts found in this partition's message-id index whose own partition could
        not take them (its master failing over, its slot migrating): applied later."""
        return f"{self.base}deferred-receipts"

    @property
    def replication_fence(self) -> str:
        """A counter written before a WAIT for replicas (gateway/store/replication.py)."""
        return f"{self.base}replication-fence"

    # voice reminders of this partition's notifications (gateway/ivr/reminders.py)
    def voice_reminder(self, notification_id: str) -> str:
        if self.tagged:
            return f"{self.base}voice-reminder:{notification_id}"
        return f"{self.prefix}voice-reminder:{{{notification_id}}}"

    def call(self, action_id: str) -> str:
        return f"{self.base}call:{action_id}"

    @property
    def voice_due(self) -> str:
        return f"{self.base}voice-due"

    @property
    def voice_calls_open(self) -> str:
        return f"{self.base}voice-calls-open"

    # MO state of the senders and entries of this partition (gateway/push/mo.py)
    def mo_rate(self, phone_digits: str) -> str:
        return f"{self.base}mo-rate:{phone_digits}"

    def mo_cancel_code(self, phone_digits: str) -> str:
        return f"{self.base}mo-cancel:{phone_digits}"

    def mo_seen(self, phone_digits: str, text_digest: str) -> str:
        return f"{self.base}mo-seen:{phone_digits}:{text_digest}"

    @property
    def mo_stream(self) -> str:
        return f"{self.base}mo"

    def mo_handled(self, entry_id: str) -> str:
        """Keyed by the entry id in this partition's MO stream (untagged: the MO id)."""
        return f"{self.base}mo-handled:{entry_id}"

    @property
    def owner(self) -> str:
        """The process that owns this partition (string, a consumer name, with a PX lease;
        gateway/push/ownership.py): it alone reads the partition's intake stream, claims
        from its lanes and runs its sweeps.  In the partition's slot, like the work it governs."""
        return f"{self.base}owner"

    @property
    def step_writer(self) -> str:
        """The ledger step writing this partition now (string, a token, with a PX lease;
        gateway/push/steps/driver.py): held from a step's reads to its EXEC, so that steps
        of several processes take turns.  In the partition's slot."""
        return f"{self.base}step-writer"


@dataclass(frozen=True)
class Keys:
    prefix: str = "12123:"
    partitions: int = 1
    _parts: tuple[PartitionKeys, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {self.partitions}")
        tagged = self.partitions > 1
        object.__setattr__(self, "_parts", tuple(PartitionKeys(self.prefix, k, tagged)
                                                 for k in range(self.partitions)))

    # --- partitions ------------------------------------------------------------------
    @property
    def partitioned(self) -> bool:
        """True with more than one partition: the pipeline keys are tagged ``{p<k>}``."""
        return self.partitions > 1

    def partition_of(self, notification_id: str) -> int:
        """The partition of a notification: ``crc32(id as UTF-8) % partitions``."""
        if self.partitions == 1:
            return 0
        return zlib.crc32(notification_id.encode()) % self.partitions

    def index_partition_of(self, carrier: str, message_id: str) -> int:
        """The partition of a carrier message id's index entry (canonical form):
        ``crc32("<carrier>:<message id>") % partitions``."""
        if self.partitions == 1:
            return 0
        return zlib.crc32(f"{carrier}:{message_id}".encode()) % self.partitions

    def number_partition_of(self, phone_digits: str) -> int:
        """The partition of a phone number's MO state (rate window, pending cancel code):
        ``crc32(digits) % partitions``, so all of one sender's keys share a slot."""
        if self.partitions == 1:
            return 0
        return zlib.crc32(phone_digits.encode()) % self.partitions

    def mo_id(self, partition: int, entry_id: str) -> str:
        """An MO's id: its entry id in the MO stream; partitioned, ``p<k>-<entry id>``
        (entry ids of two partitions' streams may be equal)."""
        return f"p{partition}-{entry_id}" if self.partitioned else entry_id

    def split_mo_id(self, mo_id: str) -> tuple[int, str]:
        """(partition, entry id) of an MO id (`mo_id`'s inverse)."""
        if not self.partitioned:
            return 0, mo_id
        match = _PARTITIONED_MO_ID.match(mo_id)
        if match is None:
            raise ValueError(f"'{mo_id}' is not an MO id of a partitioned MO stream (p<k>-<entry id>)")
        return int(match.group(1)), match.group(2)

    def call_partition_of(self, action_id: str) -> int:
        """The partition of a reminder call: its notification's (the ActionID is
        ``rem-<notification id>-<attempt>``, see gateway/ivr/reminders.py action_id_for);
        anything else, crc32 of the ActionID itself."""
        match = _REMINDER_ACTION_ID.match(action_id)
        return self.partition_of(match.group(1) if match else action_id)

    def partition(self, index: int) -> PartitionKeys:
        return self._parts[index]

    @property
    def all_partitions(self) -> tuple[PartitionKeys, ...]:
        return self._parts

    def _single(self, name: str) -> PartitionKeys:
        if self.partitions > 1:
            raise PartitionedKeyError(f"keys.{name}: one per partition; use keys.partition(k).{name}")
        return self._parts[0]

    # --- notification pipeline -------------------------------------------------------
    @property
    def notify_stream(self) -> str:
        """Intake stream the core systems XADD to (consumer group `gateway`)."""
        return f"{self.prefix}notify"

    @property
    def events_stream(self) -> str:
        """Every state change, MO and call outcome, for core systems to read."""
        # Shared by every partition: the notification events of a partitioned pipeline go
        # to each partition's own stream (partition(k).events_stream) instead.
        return f"{self.prefix}events"

    def notification(self, notification_id: str) -> str:
        """One notification's state (hash, tagged with its id; gateway/push/state.py)."""
        return self._parts[self.partition_of(notification_id)].notification(notification_id)

    def lane(self, priority: str) -> str:
        """Ready queue for one priority lane (high, normal, bulk): a sorted set scored by
        `lane_sequence`."""
        return self._single("lane").lane(priority)

    @property
    def scheduled(self) -> str:
        """Sorted set of notification ids by the Unix time they become due."""
        return self._single("scheduled").scheduled

    @property
    def dead_letters(self) -> str:
        """Sorted set of failed/rejected notification ids by time."""
        return self._single("dead_letters").dead_letters

    @property
    def inflight(self) -> str:
        """Sorted set of notification ids being submitted, by lease deadline (crash recovery)."""
        return self._single("inflight").inflight

    @property
    def lane_sequence(self) -> str:
        """Counter giving lane entries their order (first in, first out within a lane)."""
        return self._single("lane_sequence").lane_sequence

    @property
    def voice_requests(self) -> str:
        """Stream of reminders to be read out by phone (channel voice, or auto after SMS failed)."""
        return self._single("voice_requests").voice_requests

    @property
    def partner_receipts_pending(self) -> str:
        """Sorted set of partner message ids whose receipt is owed to the partner, by time."""
        return self._single("partner_receipts_pending").partner_receipts_pending

    @property
    def awaiting_receipt(self) -> str:
        """Sorted set of submitted notification ids that asked for a receipt, by the time
        they give up on it (push.receipt_timeout_seconds): then they become unconfirmed."""
        return self._single("awaiting_receipt").awaiting_receipt

    def message_id(self, carrier: str, message_id: str) -> str:
        """Carrier message id -> notification id and part number."""
        return self._parts[self.index_partition_of(carrier, message_id)].message_id(carrier, message_id)

    def message_id_previous(self, carrier: str, message_id: str) -> str:
        """The index entry a message id had before another notification's submit took it
        (an SMSC that reuses ids): that notification's receipt, refused by the later one
        for its number, is looked for here."""
        return self._parts[self.index_partition_of(carrier, message_id)].message_id_previous(carrier, message_id)

    def early_receipt(self, carrier: str, message_id: str) -> str:
        """A receipt that arrived before its submit_sm_resp was recorded."""
        return self._parts[self.index_partition_of(carrier, message_id)].early_receipt(carrier, message_id)

    def claim(self, token: str) -> str:
        """The ids one claim call took (a list, kept for twice the lease): a claim sent
        again with the same token, because its reply was lost, gets the same batch back
        instead of a second one."""
        return self._single("claim").claim(token)

    @property
    def early_receipts_parked(self) -> str:
        """Set (with the early receipts' TTL) whenever a receipt is parked: while it is
        absent, recording an accepted submit skips looking for parked receipts."""
        return self._single("early_receipts_parked").early_receipts_parked

    @property
    def early_receipts(self) -> str:
        """Sorted set of the receipts parked in a partition (``<carrier> <message id>``,
        scored by when they were parked): counts them against push.early_receipts_max."""
        return self._single("early_receipts").early_receipts

    def daily_count(self, phone_digits: str, day: str) -> str:
        """Bulk reminders accepted for a number on a local day (``YYYYMMDD``)."""
        if self.partitioned:
            # a set of the ids counted (gateway/push/lua/daily_cap.lua), outside the partitions
            return f"{self.prefix}freq-ids:{day}:{phone_digits}"
        return f"{self.prefix}freq:{day}:{phone_digits}"

    def mo_rate(self, phone_digits: str) -> str:
        """A sender's MO rate window (hash: start, count, ignore_until); partitioned:
        in the number's partition (`number_partition_of`)."""
        return self._parts[self.number_partition_of(phone_digits)].mo_rate(phone_digits)

    def mo_cancel_code(self, phone_digits: str) -> str:
        """A sender's pending two-step SMS cancellation (hash: code, booking_no, ...);
        partitioned: in the number's partition (`number_partition_of`)."""
        return self._parts[self.number_partition_of(phone_digits)].mo_cancel_code(phone_digits)

    def mo_seen(self, phone_digits: str, text_digest: str) -> str:
        """The MO a number's text was last taken from, for the redelivery window (string:
        the MO id, PX the window); partitioned: in the number's partition."""
        return self._parts[self.number_partition_of(phone_digits)].mo_seen(phone_digits, text_digest)

    @property
    def mo_stream(self) -> str:
        """Citizens' messages to 12123, recorded before deliver_sm_resp (group `mo`).
        One per partition when partitioned: a sender's MOs go to the stream of the
        sender's partition (`mo_stream_of`)."""
        return self._single("mo_stream").mo_stream

    def mo_stream_of(self, phone_digits: str) -> str:
        """The MO stream a sender's messages go to: its number's partition's, so one
        sender's MOs stay in order and next to its rate window and cancel code."""
        return self._parts[self.number_partition_of(phone_digits)].mo_stream

    def mo_handled(self, mo_id: str) -> str:
        """Marker that an MO stream entry was answered: a replay sends no second reply;
        partitioned: in the partition of the MO's stream (`mo_id`)."""
        partition, entry_id = self.split_mo_id(mo_id)
        return self._parts[partition].mo_handled(entry_id)

    @property
    def partition_members(self) -> str:
        """Gateway processes sharing the partitions (sorted set: consumer name -> expiry in
        ms of Redis TIME; gateway/push/ownership.py)."""
        return f"{self.prefix}members"

    @property
    def clock_step(self) -> str:
        """Marker that Redis's clock stepped forward (gateway/fleet/clock.py), set for the
        hold that follows; hash-tagged onto the members key's slot, so that time.lua reads
        both on one node (``{12123:members}:clock-step``)."""
        members = self.partition_members
        opening = members.find("{")
        if opening != -1 and members.find("}", opening + 2) != -1:
            return f"{members}:clock-step"  # a prefix with a hash tag of its own decides the slot
        return f"{{{members}}}:clock-step"

    # --- core data -------------------------------------------------------------------
    def booking(self, plan_id: str, booking_no: str) -> str:
        return f"{self.prefix}booking:{{plan:{plan_id}}}:{booking_no}"

    def booking_index(self, booking_no: str) -> str:
        """booking number -> plan id (so a booking key can be built from its number)."""
        return f"{self.prefix}booking-plan:{booking_no}"

    def booking_history(self, plan_id: str, booking_no: str) -> str:
        return f"{self.prefix}booking-history:{{plan:{plan_id}}}:{booking_no}"

    def exam_plan(self, plan_id: str) -> str:
        return f"{self.prefix}plan:{{plan:{plan_id}}}"

    @property
    def exam_plans(self) -> str:
        """Set of every exam plan id (the cancellation repair sweep walks it)."""
        return f"{self.prefix}plans"

    def cancellations_unnotified(self, plan_id: str) -> str:
        """Set of booking numbers cancelled by the gateway whose SMS is not yet queued."""
        return f"{self.prefix}cancel-unnotified:{{plan:{plan_id}}}"

    def person(self, id_number: str) -> str:
        return f"{self.prefix}person:{id_number}"

    def person_by_phone(self, phone_digits: str) -> str:
        return f"{self.prefix}person-by-phone:{phone_digits}"

    def bookings_of_person(self, id_number: str) -> str:
        return f"{self.prefix}person-bookings:{id_number}"

    def vehicle(self, plate: str) -> str:
        return f"{self.prefix}vehicle:{plate}"

    def vehicles_of_person(self, id_number: str) -> str:
        return f"{self.prefix}person-vehicles:{id_number}"

    # --- voice -----------------------------------------------------------------------
    def ivr_attempts(self, phone_digits: str) -> str:
        """Failed identity checks by a caller number in the voice menus this hour (counter)."""
        return f"{self.prefix}ivr-attempts:{phone_digits}"

    # Attempt limits that a stranger cannot turn against the owner (gateway/ivr/attempts.py).
    def ivr_attempts_pair(self, phone_digits: str, target: str) -> str:
        """Failed checks of one caller number on one target (a booking number, or ``id``
        for the ID-number check) this hour (counter)."""
        return f"{self.prefix}ivr-attempts:{phone_digits}:{target}"

    def ivr_attempts_booking(self, booking_no: str) -> str:
        """Failed checks on one booking number by any caller today (counter)."""
        return f"{self.prefix}ivr-attempts-booking:{booking_no}"

    @property
    def ivr_attempts_global(self) -> str:
        """Failed identity checks of every caller this minute (counter)."""
        return f"{self.prefix}ivr-attempts-global"

    def call(self, action_id: str) -> str:
        """One outbound reminder call, by its AMI ActionID (gateway/ivr/reminders.py);
        partitioned: in its notification's partition (`call_partition_of`)."""
        return self._parts[self.call_partition_of(action_id)].call(action_id)

    def voice_reminder(self, notification_id: str) -> str:
        """A voice request taken from the stream: number, text, attempts, state;
        partitioned: in the notification's partition."""
        return self._parts[self.partition_of(notification_id)].voice_reminder(notification_id)

    @property
    def voice_due(self) -> str:
        """Sorted set of notification ids waiting for a call, by the Unix time it may start
        (one per partition: partition(k).voice_due)."""
        return self._single("voice_due").voice_due

    @property
    def voice_calls_open(self) -> str:
        """Sorted set of ActionIDs of calls whose outcome is not yet reported, by the end of
        the lease of the process that follows the call (one per partition:
        partition(k).voice_calls_open)."""
        return self._single("voice_calls_open").voice_calls_open

    # --- operations (gateway/ops/: fleet status, runtime control, audit, accounts) -----
    def process_status(self, process_id: str) -> str:
        """One `gateway run` process's live state (JSON string with a TTL: a process
        that stops reporting drops out of the fleet views on its own)."""
        return f"{self.prefix}proc:{process_id}"

    @property
    def processes(self) -> str:
        """Sorted set of process ids by when they last reported (the views read the
        ones seen within the status TTL; no SCAN needed)."""
        return f"{self.prefix}procs"

    @property
    def control(self) -> str:
        """Hash of runtime controls every process applies: ``carrier:<name>`` (running,
        stopped, isolated), ``tps:<name>`` (submit_sm per second)."""
        return f"{self.prefix}control"

    def minute_counts(self, minute: int) -> str:
        """Hash of per-carrier counts in one minute (``<carrier>:submits`` ...), kept 2 h."""
        return f"{self.prefix}stats:{minute}"

    @property
    def audit(self) -> str:
        """Stream of operator actions (who, role, action, target, detail, from)."""
        return f"{self.prefix}audit"

    @property
    def users(self) -> str:
        """Hash of console accounts: user name -> JSON (role, scrypt salt and hash)."""
        return f"{self.prefix}users"

    def login_session(self, token_digest: str) -> str:
        """A console session (JSON: user, role, CSRF token), by the SHA-256 of its cookie."""
        return f"{self.prefix}session:{token_digest}"

    def login_failures(self, user: str) -> str:
        """Failed logins of an account in the lockout window (counter with a TTL)."""
        return f"{self.prefix}login-failures:{user}"

    def phone_index(self, day: int, bucket: str) -> str:
        """Sorted set of the notifications accepted on one day (days since the epoch, UTC)
        whose number digest starts with `bucket` (one hex digit: 16 keys a day, spread over
        a Cluster's slots), all scored 0, members ``<number digest>:<accepted ms, 13
        digits>:<id>`` so that one number's are a lexicographic range, newest last; no key
        name holds a number.  An empty `bucket`: the one key a day had before buckets."""
        return f"{self.prefix}phone-index:{day}:{bucket}" if bucket else f"{self.prefix}phone-index:{day}"

    @property
    def phone_index_days(self) -> str:
        """Sorted set of the days that have a phone index (member and score: the day)."""
        return f"{self.prefix}phone-index-days"

    def batch(self, batch_id: str) -> str:
        """Sorted set of the notification ids of one batch (by acceptance time)."""
        return f"{self.prefix}batch:{batch_id}"
