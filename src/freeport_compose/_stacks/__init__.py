"""The stacks half: Compose stacks started on leased ports, and their lifecycle.

Read in this order: names (placeholder names), template (one file and its placeholders), templateset
(every -f file together), discovery (which files a command means), target (which engine), compose
(the driver), engine (what the engine says), check and published (what Compose must publish; zero-edit), records (stack
records and project locks), reclaim (stacks that are gone give their ports back), state (the one
object handed down), leases (a stack's leases), outputs and plan (what a render or up writes),
signals, lookup (which stack, its ports), dockerstack (the `docker stack` driver, a Swarm stack's
take-down), lifecycle (render, up, down, gc), swarm (`deploy`, `rm`), overview (`ls`), supervise
(`run`, pass-through verbs), stack (`Stack`), sharing (one stack for several processes).
It leases through the leasing half's public face (FreePorts, LeaseStore) and uses below it only the
state dir's safe I/O, process identity and the flock primitive.
"""
