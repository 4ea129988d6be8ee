"""A second Docker engine for the tests: a real dockerd in a network namespace the tests make.

Its published ports bind inside that namespace, invisible to a bind probe here: exactly a remote
engine. It answers on a unix socket (fast, "on this machine" to freeport-compose) and on TLS TCP at
the namespace's end of a veth pair, reached through a docker context in a private DOCKER_CONFIG (an
engine elsewhere: no bind probe, and its ports are reached on its address). It is a single-node
Swarm manager. Everything is torn down at the end, also on failure: Swarm left, daemon stopped,
namespace (and its veth) deleted, its directory removed.

Network traffic goes only to that namespace and the containers in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _docker import IMAGE

CONTEXT = "fpc-remote"
_MADE = itertools.count()


def _sh(*argv: str, timeout: float = 60.0, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=True, **kw)  # type: ignore[call-overload, no-any-return]


def missing() -> str:
    """Why a second engine cannot be made here ("" when it can)."""
    if os.geteuid() != 0:
        return "a second engine needs root (network namespaces, dockerd)"
    for tool in ("ip", "nsenter", "dockerd", "openssl", "docker"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return ""


@dataclasses.dataclass
class SecondEngine:
    """A dockerd in its own network namespace; `env` targets it by unix socket, `context_env` by TLS TCP."""

    root: Path
    netns: str
    address: str  # its namespace's address on the veth pair
    pid: int = 0

    @property
    def sock(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def tcp(self) -> str:
        return f"tcp://{self.address}:2376"

    @property
    def env(self) -> dict[str, str]:
        """Targets it by its unix socket ($DOCKER_HOST)."""
        return {"DOCKER_HOST": self.sock}

    @property
    def config(self) -> str:
        """A DOCKER_CONFIG holding the `fpc-remote` context (TLS TCP)."""
        return str(self.root / "config")

    def docker(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_CONFIG")}
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check,
                              env={**env, **self.env}, stdin=subprocess.DEVNULL)

    def inside(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A command in its network namespace (to reach what it publishes on its own loopback)."""
        return subprocess.run(["nsenter", f"--net=/var/run/netns/{self.netns}", *argv], capture_output=True,
                              text=True, timeout=timeout)

    def published(self) -> set[int]:
        """The ports it has published (containers and Swarm services), as its own CLI lists them."""
        out = set()
        for line in self.docker("ps", "--format", "{{.Ports}}").stdout.splitlines():
            for part in line.split(","):
                if "->" in part:
                    out.add(int(part.split("->")[0].rsplit(":", 1)[1].split("-")[0]))
        services = self.docker("service", "ls", "--format", "{{.Ports}}", check=False).stdout
        for line in services.splitlines():
            for part in line.split(","):
                if "->" in part:
                    out.add(int(part.split("->")[0].rsplit(":", 1)[1]))
        return out

    def clean(self) -> None:
        """Remove every service, stack, container and non-default network a test left."""
        ids = self.docker("service", "ls", "-q", check=False).stdout.split()
        if ids:
            self.docker("service", "rm", *ids, check=False)
        ids = self.docker("ps", "-aq").stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        deadline = time.monotonic() + 30
        while self.docker("ps", "-aq").stdout.split() and time.monotonic() < deadline:
            time.sleep(0.2)  # Swarm tasks' containers go after their service
        self.docker("network", "prune", "-f", check=False)


def _certs(d: Path, address: str) -> None:
    """A CA, a server certificate for `address` and a client certificate, as dockerd --tlsverify wants."""
    d.mkdir()
    ossl = ("openssl",)
    _sh(*ossl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fpc-test-ca",
        "-keyout", str(d / "ca-key.pem"), "-out", str(d / "ca.pem"))
    for name, ext in (("server", f"subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        _sh(*ossl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=fpc-{name}",
            "-keyout", str(d / f"{name}-key.pem"), "-out", str(d / f"{name}.csr"))
        _sh(*ossl, "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
            str(d / "ca-key.pem"), "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"),
            "-out", str(d / f"{name}.pem"))


@contextlib.contextmanager
def second_engine() -> Iterator[SecondEngine]:
    """Start the second engine (a Swarm manager, the test image loaded), yield it, tear it all down."""
    k = next(_MADE)  # a second one in the same process gets names (and a subnet) of its own
    n = (os.getpid() + 7 * k) % 200 + 20
    netns, host_if, ns_if = f"fpc-{os.getpid()}-{k}", f"fpch{n}", f"fpcn{n}"
    # Short: dockerd's exec root holds unix sockets, whose paths may not exceed 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="fpce-", dir="/tmp"))
    engine = SecondEngine(root, netns, f"10.231.{n}.2")
    daemon: subprocess.Popen[bytes] | None = None
    try:
        _sh("ip", "netns", "add", netns)
        _sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _sh("ip", "link", "set", ns_if, "netns", netns)
        _sh("ip", "addr", "add", f"10.231.{n}.1/30", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        _sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{engine.address}/30", "dev", ns_if)
        _sh("ip", "netns", "exec", netns, "ip", "link", "set", ns_if, "up")
        certs = root / "certs"
        _certs(certs, engine.address)
        log = open(root / "dockerd.log", "wb")  # noqa: SIM115 (the daemon writes it while it lives)
        # nsenter --net, not `ip netns exec`: that one remounts /sys and hides the cgroup mounts dockerd needs.
        daemon = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{netns}", "dockerd", "--data-root", str(root / "data"),
             "--exec-root", str(root / "x"), "--pidfile", str(root / "pid"), "-H", engine.sock, "-H", engine.tcp,
             "--tlsverify", "--tlscacert", str(certs / "ca.pem"), "--tlscert", str(certs / "server.pem"),
             "--tlskey", str(certs / "server-key.pem")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        engine.pid = daemon.pid
        deadline = time.monotonic() + 60
        while engine.docker("version", check=False).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second dockerd did not start: {(root / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(0.2)
        saved = subprocess.Popen(["docker", "save", IMAGE], stdout=subprocess.PIPE,
                                 env={k: v for k, v in os.environ.items() if k != "DOCKER_HOST"})
        subprocess.run(["docker", "load"], stdin=saved.stdout, capture_output=True, check=True, timeout=120,
                       env={**os.environ, **engine.env})
        saved.wait(timeout=60)
        engine.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        env = {**os.environ, "DOCKER_CONFIG": engine.config}
        env.pop("DOCKER_HOST", None)
        _sh("docker", "context", "create", CONTEXT, "--docker",
            f"host={engine.tcp},ca={certs / 'ca.pem'},cert={certs / 'client.pem'},key={certs / 'client-key.pem'}",
            env=env)
        yield engine
    finally:
        if daemon is not None:
            with contextlib.suppress(Exception):
                engine.clean()
                engine.docker("swarm", "leave", "--force", check=False)
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)  # its end of the veth goes with it
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(str(root))]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
