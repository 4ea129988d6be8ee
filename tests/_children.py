"""Helpers shared by the allocator tests: Python child processes, and the leases held right now.

Imported as `from _children import ...`: tests/ has no __init__.py, so pytest (rootdir conftest,
"prepend" import mode) puts tests/ itself on sys.path before it imports conftest.py and the tests.
The `spawn` fixture that starts Child processes lives in conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from freeport_compose import LeaseRecord, store

PY = sys.executable
Json = dict[str, Any]


class Child:
    """A Python child process running `code`; stdout lines are queued by a thread (so every wait can time out),
    stderr is kept by another."""

    def __init__(self, code: str, *args: object) -> None:
        self.proc = subprocess.Popen(
            [PY, "-c", code, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        """What the child wrote to stderr so far (all of it once it has exited)."""
        if self.proc.poll() is not None:
            self._readers[1].join(5)
        return "".join(self.err)

    def line(self, timeout: float = 60.0) -> str:
        try:
            got = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"child {self.pid} said nothing within {timeout} s; stderr: {''.join(self.err)}")
        if got is None:
            code = self.proc.wait(10)
            pytest.fail(f"child {self.pid} exited ({code}) early; stderr: {self.stderr()}")
        return got

    def json(self, timeout: float = 60.0) -> Json:
        answer = json.loads(self.line(timeout))
        assert isinstance(answer, dict)
        return answer

    def has_output(self) -> bool:
        return not self.lines.empty()

    def send(self, text: str = "go") -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            code = self.proc.wait(10)
            pytest.fail(f"child {self.pid} exited ({code}) early; stderr: {self.stderr()}")

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def finish(self, timeout: float = 30.0) -> int:
        """Close stdin (the child's cue to end) and return its exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for t in self._readers:
            t.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


Spawn = Callable[..., Child]


def held_records() -> list[LeaseRecord]:
    st = store()
    return [r for r in st.records() if st.is_held(r)]


def assert_nothing_held() -> None:
    assert held_records() == []
