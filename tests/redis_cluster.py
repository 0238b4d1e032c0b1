"""A throwaway three-node Redis Cluster on loopback ports, as ElastiCache runs in cluster mode.

Three masters (no replicas) of Debian's ``redis-server``, each on a free
port with its cluster bus on another (``cluster-port``), their data and
``nodes.conf`` in a temporary directory; ``redis-cli --cluster create``
spreads the 16,384 slots over them.  :func:`start_cluster` returns the
running cluster; :meth:`RedisCluster.stop` kills the servers and removes the
directory.  The tests reach it as ``redis+cluster://127.0.0.1:<port>``
(:func:`fmn.redisconn.connect`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fmn.local.stack import free_port

NODES = 3


@dataclass
class LocalCluster:
    ports: list[int]
    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def _cluster_ok(port: int) -> bool:
    out = subprocess.run(["redis-cli", "-p", str(port), "cluster", "info"],
                         capture_output=True, text=True, timeout=5).stdout
    return "cluster_state:ok" in out


def start_cluster() -> LocalCluster:
    """Start the servers and form the cluster; raises OSError or RuntimeError if it cannot."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise OSError("redis-server and redis-cli are needed (Debian package redis-server)")
    directory = Path(tempfile.mkdtemp(prefix="fmn-redis-cluster-"))
    cluster = LocalCluster([], directory)
    try:
        for i in range(NODES):
            port, bus = free_port(), free_port()
            node_dir = directory / str(i)
            node_dir.mkdir()
            cluster.processes.append(subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-port", str(bus), "--cluster-config-file", "nodes.conf",
                 "--dir", str(node_dir), "--save", "", "--appendonly", "no",
                 "--maxmemory-policy", "noeviction", "--logfile", "redis.log",
                 "--daemonize", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            cluster.ports.append(port)
        deadline = time.monotonic() + 15
        while not all(subprocess.run([cli, "-p", str(p), "ping"], capture_output=True,
                                     text=True).stdout.strip() == "PONG"
                      for p in cluster.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster's redis-server processes did not start")
            time.sleep(0.1)
        created = subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in cluster.ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-500:]}"
                               f"{created.stderr[-500:]}")
        deadline = time.monotonic() + 30
        while not all(_cluster_ok(p) for p in cluster.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.2)
    except BaseException:
        cluster.stop()
        raise
    return cluster
