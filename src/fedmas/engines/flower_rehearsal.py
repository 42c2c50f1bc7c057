"""A rehearsal of a whole Flower deployment on this machine: a SuperLink and SuperNodes as real processes.

``python -m fedmas.engines.flower_rehearsal CONFIG --out RUN_DIR [--nodes 2] [--tls] [--auth]`` starts
``flower-superlink`` and ``nodes`` ``flower-supernode`` processes on 127.0.0.1 (optionally with TLS from a
self-signed CA, and SuperNode authentication: each node's key registered with ``flwr supernode register``
before it starts), submits the run with ``flwr run`` (:func:`fedmas.engines.flower_deploy.submit`), waits,
and stops every process it started, and every process those started. Tests and the overhead benchmark use
:class:`Loopback`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedmas.config import ConfigError, load_config
from fedmas.engines.flower_deploy import _bin, flower_env, submit, write_connection


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Loopback:
    """SuperLink + SuperNodes on 127.0.0.1, each a real process, stopped by PID."""

    root: Path
    nodes: int = 2
    tls: bool = False
    auth: bool = False  # SuperNode authentication (needs TLS): only registered node keys may join
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Loopback:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS: use Loopback(..., tls=True, auth=True)")
        env = flower_env(self.root / "flwr-home")
        certs = make_certificates(self.root / "certs") if self.tls else None
        self.start_superlink()
        for i in range(self.nodes):
            if self.auth:
                self.register_node(self.node_key(i))
            self.start_node(i, env, certs)
        return self

    def start_superlink(self) -> None:
        """Start the SuperLink (again, after :meth:`kill`: same port and database, so the nodes reconnect
        and the registered keys still hold)."""
        link = [_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
                "--database", str(self.root / "superlink.db"), "--disable-runtime-dependency-installation"]
        if self.tls:
            certs = make_certificates(self.root / "certs")
            link += ["--ssl-ca-certfile", certs["ca"], "--ssl-certfile", certs["cert"], "--ssl-keyfile", certs["key"]]
        else:
            link += ["--insecure"]
        if self.auth:
            link += ["--enable-supernode-auth"]
        self._spawn("superlink", link, flower_env(self.root / "flwr-home"))
        self._wait_port(self.port)

    def node_key(self, i: int) -> Path:
        """Node ``i``'s private key (made on first use); its public key is beside it as ``.pub``."""
        return make_node_key(self.root / "keys" / f"node{i}")

    def register_node(self, key: Path) -> None:
        """``flwr supernode register KEY.pub``: the SuperLink will accept the node holding ``key``."""
        home = self.root / "cli-register"
        env = flower_env(home)
        write_connection(home, self.address, make_certificates(self.root / "certs")["ca"] if self.tls else None)
        proc = subprocess.run([_bin("flwr"), "supernode", "register", f"{key}.pub", "fedmas"], env=env,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"flwr supernode register failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")

    def start_node(self, i: int, env: dict[str, str] | None = None, certs: dict[str, str] | None = None,
                   key: Path | None = None, name: str | None = None) -> None:
        """Start SuperNode ``i`` (process ``name``, default ``node<i>``); with ``auth`` it signs in with
        ``key`` (default: its own registered key)."""
        env = env or flower_env(self.root / "flwr-home")
        node = [_bin("flower-supernode"), "--superlink", self.address, "--port", str(free_port()),
                "--node-config", f"partition-id={i} num-partitions={self.nodes}"]
        if self.tls:
            certs = certs or make_certificates(self.root / "certs")
            node += ["--root-certificates", certs["ca"]]
        else:
            node += ["--insecure"]
        if self.auth:
            node += ["--auth-supernode-private-key", str(key or self.node_key(i))]
        self._spawn(name or f"node{i}", node, env)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        log = open(self.root / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def _wait_port(self, port: int, timeout: float = 60) -> None:
        end = time.time() + timeout
        while time.time() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"superlink exited; see {self.root / 'superlink.log'}")
            time.sleep(0.2)
        raise TimeoutError(f"SuperLink did not listen on {port}")

    def descendants(self, name: str) -> list[int]:
        """The PIDs of every process that process ``name`` started, and theirs (Flower starts its SuperExec in a
        session of its own, which a signal to the process group does not reach)."""
        return descendants(self.procs[name].pid)

    def kill(self, name: str, tree: bool = True) -> None:
        """SIGKILL process ``name``'s group; with ``tree``, every process it started too, as when the machine
        running it goes down (``tree=False``: the process alone, its SuperExec and apps left running)."""
        p = self.procs[name]
        if p.poll() is not None:  # gone already (its PID may belong to another process by now)
            return
        below: list[int] = []
        if tree:  # freeze the tree first, so that nothing in it starts a process the kill would miss
            _signal_group(p.pid, signal.SIGSTOP)
            while new := [pid for pid in self.descendants(name) if pid not in below]:
                below += new
                signal_each(new, signal.SIGSTOP)
        _signal_group(p.pid, signal.SIGKILL)
        signal_each(below, signal.SIGKILL)
        p.wait(10)
        end = time.monotonic() + 10  # a SIGKILL takes effect when the kernel next runs the process
        while (left := [pid for pid in below if running(pid)]) and time.monotonic() < end:
            time.sleep(0.05)
        if left:
            raise RuntimeError(f"processes {left} started by {name} survived SIGKILL for 10 s")

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def __enter__(self) -> Loopback:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def signal_each(pids: list[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids`` that still exists."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _stat(path: Path) -> list[str] | None:
    """The fields of a ``/proc/<pid>/stat`` after "pid (command)": state, ppid, ...; None once the process is gone."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    """Whether process ``pid`` runs: False once it has ended, even before its parent reaps it (a zombie)."""
    fields = _stat(Path(f"/proc/{pid}/stat"))
    return fields is not None and fields[0] != "Z"


def descendants(pid: int) -> list[int]:
    """The PIDs of ``pid``'s children, theirs, and so on, read from ``/proc`` (empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(stat)
        if fields is not None:  # else ended meanwhile
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def make_certificates(folder: Path) -> dict[str, str]:
    """A self-signed CA and a server certificate for 127.0.0.1/localhost (needs the openssl command)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, key, cert = folder / "ca.crt", folder / "server.key", folder / "server.pem"
    if not cert.exists():
        if shutil.which("openssl") is None:
            raise RuntimeError("TLS needs the openssl command to make test certificates")
        ext = folder / "san.cnf"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=folder)  # noqa: E731
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fedmas-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
        run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.cnf", "-out", "server.pem")
    return {"ca": str(ca), "key": str(key), "cert": str(cert)}


def make_node_key(stem: Path) -> Path:
    """A SuperNode key pair on the NIST P-384 curve, in the OpenSSH formats Flower reads:
    ``stem`` (private) and ``stem.pub`` (public, what ``flwr supernode register`` takes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not stem.exists():
        stem.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        stem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
        stem.chmod(0o600)
        Path(f"{stem}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                       serialization.PublicFormat.OpenSSH))
    return stem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fedmas on a loopback Flower deployment (demo)")
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--auth", action="store_true", help="SuperNode authentication (implies --tls): each node's "
                                                        "key is registered before it starts")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config, a.set)
    except ConfigError as e:
        print(f"fedmas: error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out).resolve()
    tls = a.tls or a.auth
    if cfg.flower.node_threads is None:  # every node trains on this machine's cores: share them, do not oversubscribe
        cfg.flower.node_threads = max(1, (os.cpu_count() or 1) // a.nodes)
        print(f"[fedmas] {a.nodes} SuperNodes share {os.cpu_count()} cores: flower.node_threads = "
              f"{cfg.flower.node_threads} (set it to override)", file=sys.stderr)
    with Loopback(out.parent / f".{out.name}-flower", nodes=a.nodes, tls=tls, auth=a.auth) as lb:
        cfg.flower.superlink = lb.address
        cfg.flower.nodes = a.nodes
        if tls:
            cfg.flower.root_certificates = make_certificates(lb.root / "certs")["ca"]
        return submit(cfg, out, home=lb.root / "cli-home")


if __name__ == "__main__":
    sys.exit(main())
