"""The leasing half: ports that no other thread, process or stack gets at the same time.

Read in this order: ranges (which ports), probe (is one in use outside the leases), statedir (where
leases live, safely), process (who holds one; fork hygiene), records (what a lock file says),
slots / owners / adoption (hints, the per-owner index, leases kept across a deleted state dir),
locks (one lock file per port: claim and release), store (the public view), allocator (FreePorts).
Nothing here knows about Compose.
"""
