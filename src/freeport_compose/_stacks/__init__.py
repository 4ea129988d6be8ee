"""The stacks half: Compose stacks started on leased ports, and their lifecycle.

Read in this order: template (one file and its placeholders), templateset (every -f file together),
compose (the driver), engine (what the engine says), check (Compose publishes exactly the leased
ports), records (stack records and project locks), state (the one object handed down), leases (a
stack's leases), outputs (rendered files), signals, lifecycle (render, up, down, ports, gc), overview (`ls`),
supervise (`run`). It uses the leasing half only through its public face: FreePorts and LeaseStore.
"""
