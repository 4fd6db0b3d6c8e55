"""The name by which a running gateway process holds things in Redis.

``<host>-<pid>-<run>``: the host name and pid tell people which process it is; the run
id (random, new at each start) makes it unique, because host name and pid are not.  Two
containers with host networking on one host are both pid 1 under one host name, and two
VMs cloned from one image that start their services in the same order get the same pids.
Under one name, two live processes held one bind lease between them (two binds against a
carrier's ``max_binds`` of 1), owned the same partitions and overwrote each other's status
report (tests/fleet/test_process_names.py).

Used where a name stands for a *live* process: bind leases and call slots, partition
ownership, status reports, and the owner of a voice call unless ``push.consumer_name``
names the process.  Stream consumer names stay ``<host>-<pid>`` (or
``push.consumer_name``): two readers sharing one only re-read each other's pending
entries, which acceptance ignores (a notification id is accepted once).
"""

from __future__ import annotations

import os
import secrets
import socket

__all__ = ["RUN_ID", "live_name"]

# Six hex digits: one chance in 16 million that two processes of one host name and pid
# collide, and short enough to read in ZRANGE output and the console.
RUN_ID = secrets.token_hex(3)


def live_name(base: str = "") -> str:
    """``base`` (default ``<host>-<pid>``) and this run's id."""
    return f"{base or f'{socket.gethostname()}-{os.getpid()}'}-{RUN_ID}"
