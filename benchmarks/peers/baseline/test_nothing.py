"""The floor of the other suites: eight tests and no service, so the time is pytest's and xdist's own."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("n", range(8))
def test_nothing(n: int) -> None:
    assert n + 1 > n
