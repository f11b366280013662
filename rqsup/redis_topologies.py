"""Start and stop a private Redis Cluster or Sentinel setup from ``redis-server``.

The test suite and ``benchmarks/bench_cluster.py`` use them: real servers on
free loopback ports in a temp dir, never the machine's shared Redis. Both are
tuned to fail over in a second or two (short node and down-after timeouts),
which a production deployment would not want.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from rqsup.redis_server import RedisServer, RedisServerError, free_port

#: Cluster node timeout: a primary is failed after this long unreachable.
NODE_TIMEOUT_MS = 1000
#: Sentinel: a primary unanswered this long is down (short for tests, long
#: enough that a loaded 2-core machine does not fail over a busy primary).
DOWN_AFTER_MS = 2000
#: A replica's first sync starts at once (Redis waits 5 s for more replicas).
_FAST_SYNC = ("--repl-diskless-sync-delay", "0")


def _wait(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    detail = f" (last error: {last})" if last else ""
    raise RedisServerError(f"{what} within {timeout_s}s{detail}")


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and below 65536."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RedisServerError("no free port pair (port, port + 10000) for a Cluster node")


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


class LocalCluster:
    """``primaries`` primaries with ``replicas`` replicas each, made with
    ``redis-cli --cluster create``; every slot covered before ``start``
    returns."""

    def __init__(self, data_dir: str | Path | None = None, *, primaries: int = 3,
                 replicas: int = 1, extra_args: tuple[str, ...] = ()) -> None:
        if shutil.which("redis-cli") is None:
            raise RedisServerError("redis-cli is not installed (apt-get install redis-tools): "
                                   "the Cluster is made with 'redis-cli --cluster create'")
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="rqsup-cluster-")).resolve()
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        for i in range(primaries * (1 + replicas)):
            self.nodes.append(RedisServer(
                self.data_dir / f"node{i}", unix_socket=False, appendonly=False,
                port=_cluster_port(),
                extra_args=("--cluster-enabled", "yes",
                            "--cluster-config-file", str(self.data_dir / f"node{i}/nodes.conf"),
                            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                            "--cluster-require-full-coverage", "no",
                            *_FAST_SYNC, *extra_args)))

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        """The seed list in rqsup's form (three nodes are enough to find the rest)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        for n in self.nodes:
            n.start()
        out = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout_s)
        if out.returncode != 0:
            self.cleanup()
            raise RedisServerError(f"redis-cli --cluster create failed: {out.stdout[-1500:]}"
                                   f"{out.stderr[-500:]}")
        self.wait_healthy(timeout_s)
        return self

    def info(self, port: int) -> dict[str, str]:
        with contextlib.closing(_client(port)) as c:
            raw = c.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def roles(self) -> dict[int, str]:
        """Port -> "master" or "slave", for each running node."""
        out = {}
        for n in self.nodes:
            if n.is_running():
                with contextlib.closing(_client(n.port)) as c:
                    out[n.port] = c.info("replication")["role"]
        return out

    def primaries(self) -> list[int]:
        return [p for p, r in self.roles().items() if r == "master"]

    def replica_of(self, primary: int) -> int:
        for p, r in self.roles().items():
            if r == "slave":
                with contextlib.closing(_client(p)) as c:
                    if int(c.info("replication")["master_port"]) == primary:
                        return p
        raise RedisServerError(f"no replica of 127.0.0.1:{primary} is running")

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Every running node reports cluster_state ok with all 16384 slots,
        and every running replica is in sync with its primary."""
        def ok() -> bool:
            for n in self.nodes:
                if n.is_running():
                    i = self.info(n.port)
                    if i.get("cluster_state") != "ok" or i.get("cluster_slots_ok") != "16384":
                        return False
                    with contextlib.closing(_client(n.port)) as c:
                        rep = c.info("replication")
                    if rep["role"] == "slave" and rep.get("master_link_status") != "up":
                        return False
            return True
        _wait("the Cluster did not report every slot ok", ok, timeout_s)

    def failover(self, primary: int, timeout_s: float = 20.0) -> int:
        """``CLUSTER FAILOVER`` on the primary's replica: a planned, lossless
        switch. Returns the new primary's port."""
        replica = self.replica_of(primary)
        with contextlib.closing(_client(replica)) as c:
            c.execute_command("CLUSTER", "FAILOVER")  # type: ignore[no-untyped-call]
        _wait(f"127.0.0.1:{replica} did not become a primary",
              lambda: self.roles().get(replica) == "master"
              and self.roles().get(primary) == "slave", timeout_s)
        self.wait_healthy(timeout_s)
        return replica

    def kill_primary(self, primary: int, timeout_s: float = 30.0) -> int:
        """SIGKILL a primary and wait until its replica took over its slots."""
        replica = self.replica_of(primary)
        self.node(primary).kill()
        _wait(f"127.0.0.1:{replica} did not take over from the killed primary",
              lambda: self.roles().get(replica) == "master", timeout_s)
        self.wait_healthy(timeout_s)
        return replica

    def cleanup(self) -> None:
        for n in self.nodes:
            n.cleanup()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()


class _SentinelProcess:
    def __init__(self, data_dir: Path, master: str, primary_port: int) -> None:
        self.port = free_port()
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {master} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {master} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {master} 5000\n"
            f"sentinel parallel-syncs {master} 2\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen([binary, str(self.conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class LocalSentinel:
    """One primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum 2)
    watching the primary under the name ``master``."""

    def __init__(self, data_dir: str | Path | None = None, *, master: str = "rqsup",
                 replicas: int = 2, sentinels: int = 3) -> None:
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="rqsup-sentinel-")).resolve()
        self.master = master
        self.servers = [RedisServer(self.data_dir / "primary", unix_socket=False,
                                    appendonly=False, extra_args=_FAST_SYNC)]
        p0 = self.servers[0].port
        for i in range(replicas):
            self.servers.append(RedisServer(self.data_dir / f"replica{i}", unix_socket=False,
                                            appendonly=False,
                                            extra_args=("--replicaof", "127.0.0.1", str(p0),
                                                        *_FAST_SYNC)))
        self.sentinels = [_SentinelProcess(self.data_dir / f"sentinel{i}", master, p0)
                          for i in range(sentinels)]

    @property
    def url(self) -> str:
        return ("redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
                + f"/{self.master}/0")

    def sentinel_query(self, *args: Any) -> Any:
        for s in self.sentinels:
            if s.proc is None:
                continue
            try:
                with contextlib.closing(_client(s.port)) as c:
                    return c.execute_command("SENTINEL", *args)  # type: ignore[no-untyped-call]
            except (redis.RedisError, OSError):
                continue
        raise RedisServerError("no sentinel answered")

    def failovers(self) -> int:
        """The primary's config epoch: how many failovers the sentinels made."""
        info: dict[Any, Any] = dict(self.sentinel_query("master", self.master))
        return int(info.get("config-epoch", info.get(b"config-epoch", 0)))

    def primary_port(self) -> int:
        addr = self.sentinel_query("get-master-addr-by-name", self.master)
        return int(addr[1])

    def start(self, timeout_s: float = 30.0) -> LocalSentinel:
        for s in self.servers:
            s.start()
        for sp in self.sentinels:
            sp.start()
        self.wait_healthy(timeout_s)
        return self

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """The sentinels agree on a primary that has every running replica
        in sync."""
        def ok() -> bool:
            port = self.primary_port()
            with contextlib.closing(_client(port)) as c:
                info = c.info("replication")
            running = sum(1 for s in self.servers if s.is_running())
            if info["role"] != "master" or int(info["connected_slaves"]) < running - 1:
                return False
            for s in self.servers:
                if s.is_running() and s.port != port:
                    with contextlib.closing(_client(s.port)) as c:
                        rep = c.info("replication")
                    if rep.get("master_link_status") != "up" or rep.get("master_port") != port:
                        return False
            known = self.sentinel_query("sentinels", self.master)
            return len(known) >= len([s for s in self.sentinels if s.proc]) - 1
        _wait("the Sentinel setup did not settle", ok, timeout_s)

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def kill_primary(self, timeout_s: float = 30.0) -> int:
        """SIGKILL the primary and wait until the sentinels promoted a replica.
        Returns the new primary's port."""
        old = self.primary_port()
        self.server(old).kill()
        _wait("the sentinels did not promote a replica",
              lambda: self.primary_port() != old, timeout_s)
        new = self.primary_port()
        _wait(f"127.0.0.1:{new} did not become a primary",
              lambda: _client(new).info("replication")["role"] == "master", timeout_s)
        return new

    def cleanup(self) -> None:
        for sp in self.sentinels:
            sp.stop()
        for s in self.servers:
            s.cleanup()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalSentinel:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()
