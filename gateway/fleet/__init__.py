"""Fleet-wide carrier limits shared by every gateway process through Redis (docs/fleet.md).

``tps.py``: a carrier account's TPS (GCRA slots reserved in batches, gcra.lua);
``leases.py``: bind leases of an account and call slots of a voice trunk (lease.lua);
``account.py``: what a carrier link gets from its section of the config.
"""
