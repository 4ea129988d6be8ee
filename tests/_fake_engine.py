"""A fake engine API on a unix socket, for tests of the small engine client (no Docker needed)."""

from __future__ import annotations

import json
import socket
import threading


class FakeEngine:
    """A unix-socket HTTP/1.0 server: `routes` maps a path to (status, JSON body), anything else is a
    404 (as Podman answers /services); `raw`, when set, is sent verbatim instead (a cut answer, say);
    `seen` lists the request targets, query included."""

    def __init__(self, path: str) -> None:
        self.routes: dict[str, tuple[int, object]] = {}
        self.raw: bytes | None = None
        self.seen: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                request = b""
                while b"\r\n\r\n" not in request and (chunk := conn.recv(4096)):
                    request += chunk
                target = request.split(b" ")[1].decode() if b" " in request else "/"
                self.seen.append(target)
                if self.raw is not None:
                    conn.sendall(self.raw)
                    continue
                status, body = self.routes.get(target.split("?")[0], (404, {"message": "page not found"}))
                data = json.dumps(body).encode()
                conn.sendall(b"HTTP/1.0 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(data)) + data)

    def close(self) -> None:
        self.sock.close()
