"""Loaded by bench_peers.py (`-p peer_bench_marker`) in its kill trials only, never in the timed runs.

When $PEER_BENCH_MARKERS names a directory, the first test each pytest process runs (its fixtures
set up: its stack is up) writes a file named after its xdist worker there, then sleeps for
$PEER_BENCH_HOLD seconds, so that the bench's SIGKILL of the run lands mid-run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

_marked = False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    global _marked
    directory = os.environ.get("PEER_BENCH_MARKERS")
    if not directory or _marked:
        return
    _marked = True
    Path(directory, os.environ.get("PYTEST_XDIST_WORKER", "main")).touch()
    time.sleep(float(os.environ.get("PEER_BENCH_HOLD", "120")))
