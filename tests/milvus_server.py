"""A real Milvus standalone server for the tests, from the PyPI package ``milvus`` (its wheel holds
the server binary with an embedded etcd): started on free ports in a directory of its own,
stopped by its process id (its process group). If it cannot start, the caller gets an error with
the server's log. The embedded etcd's peer port (2380) cannot be configured in this package, so
one such server runs on a machine at a time."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Every port the standalone server opens (its defaults would collide with another instance).
PORT_OPTIONS = ("etcd-port", "root-coord-port", "proxy-port", "proxy-internal-port", "query-coord-port",
                "query-node-port", "index-coord-port", "index-node-port", "data-coord-port", "data-node-port")


def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class MilvusServer:
    """``start()`` launches the server (returns at once); ``wait()`` blocks until it answers;
    ``stop()`` ends it and its children (its own process group)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.ports = dict(zip(PORT_OPTIONS, _free_ports(len(PORT_OPTIONS))))
        self.uri = f"http://127.0.0.1:{self.ports['proxy-port']}"
        self.log = self.data_dir.parent / (self.data_dir.name + ".log")
        self.proc: subprocess.Popen | None = None
        self.ready = False

    def start(self) -> MilvusServer:
        exe = shutil.which("milvus-server", path=str(Path(sys.executable).parent)) or shutil.which("milvus-server")
        if exe is None:
            raise RuntimeError("milvus-server is not installed (pip install milvus==2.3.5; `make test` does)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [exe, "--data", str(self.data_dir)] + [a for k, v in self.ports.items() for a in (f"--{k}", str(v))]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
        return self

    def wait(self, timeout: float = 240.0) -> str:
        """The server's URI once it answers; RuntimeError with its log when it cannot start."""
        import logging

        from pymilvus import MilvusClient

        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)   # "failed to connect" until it listens
        deadline = time.monotonic() + timeout
        while not self.ready:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the Milvus server exited ({self.proc and self.proc.returncode}):\n{self.tail()}")
            try:
                client = MilvusClient(self.uri, timeout=3)
                client.list_collections()
                client.close()
                self.ready = True
            except Exception:  # noqa: BLE001 - not listening yet
                if "address already in use" in self.server_log() or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the Milvus server did not start (waited up to {timeout:.0f} s):\n"
                                       f"{self.tail()}") from None
                time.sleep(1.0)
        return self.uri

    def server_log(self) -> str:
        """The errors the server binary logged so far."""
        try:
            text = (self.data_dir / "logs" / "milvus-stdout.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(line[:400] for line in text.splitlines() if "[ERROR]" in line or "[FATAL]" in line)

    def tail(self, lines: int = 40) -> str:
        try:
            wrapper = "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            wrapper = "(no log)"
        errors = "\n".join(self.server_log().splitlines()[-lines:])
        return f"{wrapper}\n-- errors in {self.data_dir / 'logs'}:\n{errors or '(none)'}"

    def stop(self) -> None:
        """End the wrapper and the server binary (one process group): TERM, then KILL after 20 s."""
        if self.proc is None:
            return
        group = self.proc.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _group_alive(group):
                self.proc.poll()                     # reap the wrapper
                time.sleep(0.2)
            if not _group_alive(group):
                break
        self.proc.wait()
        self.proc = None


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
