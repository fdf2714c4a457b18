"""A local Redis Cluster of 3 masters and 3 replicas that the test session starts and stops itself.

This module owns the `redis_cluster` fixture (session-scoped; tests/conftest.py imports it so any
test can ask for it) and `LocalCluster`, the handle it yields:

* ``url``: ``redis://127.0.0.1:<port>/0`` of a node that was a master when the cluster was made
  (any node is a valid entry point; after a `failover()` of that master it is a replica).
* ``nodes``: every node as ``ClusterNode(port, role)``, role ``"master"`` or ``"replica"``, read
  live from the servers (so it follows failovers). ``masters()`` / ``replicas()``: their ports.
* ``client()``: a sync ``redis.RedisCluster`` for assertions (the caller closes it, or uses
  ``with``). ``master_of(key)``: the port of the master that serves the key's slot.
* ``failover(master_port)``: a graceful ``CLUSTER FAILOVER`` on that master's replica, waiting
  (bounded) until the two swapped roles, every node agrees on the masters and
  ``cluster_state:ok`` again; returns the new master's port.
* ``keys_per_master()``: ``DBSIZE`` of each master, by port.
* ``direct[port]``: a plain ``redis.Redis`` on one node (``GET`` there answers ``MOVED`` for a
  key of another master's slot); ``info(port)``: its ``CLUSTER INFO``; ``replica_of(port)``.

Each node runs ``redis-server --cluster-enabled yes --cluster-node-timeout 2000`` without
persistence on a 127.0.0.1 port from `PORT_RANGE`, chosen so that the port and its cluster bus
port (+10000) are both free and outside Linux's ephemeral range. ``redis-cli --cluster create``
joins them. Every wait is bounded; at the end every process is stopped by its pid (terminate, then
kill) and its files removed. Without ``redis-server`` or ``redis-cli`` the tests that use the
fixture skip with the reason, except under ``CI=true``, where that is a failure.
"""

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

MASTERS = 3
REPLICAS_PER_MASTER = 1
SLOTS = 16384
NODE_TIMEOUT_MS = 2000
BUS_PORT_OFFSET = 10000
PORT_RANGE = range(20000, 22700)  # bus ports 30000..32699: below the ephemeral 32768..60999
SETUP_TIMEOUT_S = 30.0
FAILOVER_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.05
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class ClusterNode:
    port: int
    role: str  # "master" or "replica"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator["LocalCluster"]:
    """A 3-master, 3-replica Redis Cluster on 127.0.0.1, for the whole session."""
    server, cli = cluster_binaries()
    workdir = tmp_path_factory.mktemp("redis-cluster")
    cluster = LocalCluster(server, cli, workdir, pick_ports(MASTERS * (1 + REPLICAS_PER_MASTER)))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def cluster_binaries() -> tuple[str, str]:
    """``redis-server`` and ``redis-cli`` from PATH; skip (fail under CI=true) without them."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        missing = "redis-server" if server is None else "redis-cli"
        reason = f"no {missing} binary on PATH: the Redis Cluster tests need it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return server, cli


def pick_ports(wanted: int) -> list[int]:
    """`wanted` ports from `PORT_RANGE` whose port and bus port are both free right now."""
    candidates = random.sample(PORT_RANGE, len(PORT_RANGE))
    ports = [port for port in candidates[:500] if bindable(port)][:wanted]
    if len(ports) < wanted:
        raise RuntimeError(f"found only {len(ports)} free port pairs in {PORT_RANGE}")
    return ports


def bindable(port: int) -> bool:
    for candidate in (port, port + BUS_PORT_OFFSET):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s}s")
        time.sleep(POLL_S)


class ClosingRedisCluster(redis.RedisCluster):
    """A `redis.RedisCluster` whose `close()` closes its sockets too.

    redis-py 8.1's `close()` leaves every node's connections open (the node clients do not own
    their pools), which pytest, warnings being errors, reports as unclosed sockets.
    """

    def close(self) -> None:
        super().close()
        manager = self.nodes_manager
        for node in [*manager.nodes_cache.values(), *manager.startup_nodes.values()]:
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()


class LocalCluster:
    """The cluster's processes, a plain client per node, and the views tests assert on."""

    def __init__(self, server: str, cli: str, workdir: Path, ports: list[int]) -> None:
        self.server = server
        self.cli = cli
        self.workdir = workdir
        self.ports = ports
        self.url = f"redis://127.0.0.1:{ports[0]}/0"
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.direct: dict[int, redis.Redis] = {}

    def __repr__(self) -> str:
        return f"LocalCluster(url={self.url!r}, ports={self.ports})"

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the servers, join them into a cluster, wait until it serves every slot."""
        try:
            for port in self.ports:
                self.spawn(port)
            wait_until(self.all_answer, SETUP_TIMEOUT_S, "the cluster nodes did not answer PING")
            self.create()
            wait_until(self.healthy, SETUP_TIMEOUT_S, "the cluster did not become healthy")
        except Exception as exc:
            raise RuntimeError(
                f"the local Redis Cluster did not start: {exc}\n{self.logs()}"
            ) from exc

    def spawn(self, port: int) -> None:
        args = [self.server, "--port", str(port), "--bind", "127.0.0.1"]
        args += ["--cluster-enabled", "yes", "--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        args += ["--cluster-config-file", str(self.workdir / f"nodes-{port}.conf")]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        args += ["--logfile", str(self.workdir / f"redis-{port}.log")]
        args += ["--repl-diskless-sync-delay", "0"]  # a replica's first sync waits 5 s otherwise
        self.processes[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.direct[port] = redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=2.0, decode_responses=True
        )

    def create(self) -> None:
        """``redis-cli --cluster create``: slots spread over the masters, a replica each."""
        args = [self.cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports)]
        args += ["--cluster-replicas", str(REPLICAS_PER_MASTER), "--cluster-yes"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=SETUP_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")

    def stop(self) -> None:
        """Stop every server by its pid: terminate, wait, kill if it does not exit."""
        for client in self.direct.values():
            client.close()
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        self.processes.clear()

    def logs(self) -> str:
        """The last lines of each server's log, to explain a failed start."""
        tails = []
        for port in self.ports:
            path = self.workdir / f"redis-{port}.log"
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            tails.append(f"--- redis-{port}.log\n" + "\n".join(lines[-LOG_TAIL_LINES:]))
        return "\n".join(tails)

    # --- what tests read ----------------------------------------------------------------------

    @property
    def nodes(self) -> list[ClusterNode]:
        return [ClusterNode(port, self.role(port)) for port in self.ports]

    def masters(self) -> list[int]:
        return [node.port for node in self.nodes if node.role == "master"]

    def replicas(self) -> list[int]:
        return [node.port for node in self.nodes if node.role == "replica"]

    def client(self) -> redis.RedisCluster:
        """A cluster-aware client (slot routing, MOVED handling by redis-py); close it after."""
        return ClosingRedisCluster.from_url(self.url, decode_responses=True)

    def master_of(self, key: str) -> int:
        """The port of the master serving `key`'s slot, from that master's own slot table."""
        slot = key_slot(key.encode())
        ranges = self.direct[self.ports[0]].execute_command("CLUSTER", "SLOTS")
        for start, end, master, *_ in ranges:
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(f"no master serves slot {slot}")

    def keys_per_master(self) -> dict[int, int]:
        return {port: int(self.direct[port].dbsize()) for port in self.masters()}

    def info(self, port: int) -> dict[str, str]:
        """``CLUSTER INFO`` of one node as a dict of strings."""
        text: str = self.direct[port].execute_command("CLUSTER", "INFO")
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {name: value.strip() for name, value in pairs}

    def role(self, port: int) -> str:
        reply = self.direct[port].execute_command("ROLE")
        return "master" if reply[0] == "master" else "replica"

    # --- failover -----------------------------------------------------------------------------

    def failover(self, master_port: int) -> int:
        """Promote `master_port`'s replica gracefully; return its port once all is settled."""
        replica = self.replica_of(master_port)
        self.direct[replica].execute_command("CLUSTER", "FAILOVER")
        wait_until(
            lambda: self.role(replica) == "master" and self.role(master_port) == "replica",
            FAILOVER_TIMEOUT_S,
            f"{replica} did not take over from {master_port}",
        )
        wait_until(self.healthy, FAILOVER_TIMEOUT_S, "the cluster did not settle after failover")
        return replica

    def replica_of(self, master_port: int) -> int:
        """The port of a replica that is connected to `master_port` and in sync."""
        reply = self.direct[master_port].execute_command("ROLE")
        if reply[0] != "master" or not reply[2]:
            raise ValueError(f"{master_port} is not a master with a replica: {reply}")
        return int(reply[2][0][1])

    # --- health -------------------------------------------------------------------------------

    def all_answer(self) -> bool:
        return all(self.answers(port) for port in self.ports)

    def answers(self, port: int) -> bool:
        if self.processes[port].poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited (port taken meanwhile?)")
        try:
            return bool(self.direct[port].ping())
        except redis.ConnectionError:
            return False

    def healthy(self) -> bool:
        """Every node: state ok, every slot served, and the same roles seen as the nodes report
        of themselves; 3 masters, each with its replica linked and acknowledged."""
        try:
            roles = {port: self.role(port) for port in self.ports}
            if list(roles.values()).count("master") != MASTERS:
                return False
            if not all(self.replication_up(port) for port in self.ports):
                return False
            return all(self.node_agrees(port, roles) for port in self.ports)
        except redis.RedisError:
            return False

    def node_agrees(self, port: int, roles: dict[int, str]) -> bool:
        info = self.info(port)
        if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
            return False
        return self.roles_seen_by(port) == roles

    def roles_seen_by(self, port: int) -> dict[int, str]:
        """Each node's role as `port`'s CLUSTER NODES flags it ("failing" if flagged so)."""
        text: str = self.direct[port].execute_command("CLUSTER", "NODES")
        seen = {}
        for line in text.splitlines():
            address, flags = line.split()[1:3]
            node_port = int(address.split("@")[0].rsplit(":", 1)[1])
            seen[node_port] = node_role(set(flags.split(",")))
        return seen

    def replication_up(self, port: int) -> bool:
        """A master that lists its replicas online, or a replica whose link is up."""
        reply = self.direct[port].execute_command("ROLE")
        if reply[0] == "master":
            return len(reply[2]) == REPLICAS_PER_MASTER
        return bool(reply[3] == "connected")


def node_role(flags: set[str]) -> str:
    if flags & {"fail", "fail?", "handshake", "noaddr"}:
        return "failing"
    return "master" if "master" in flags else "replica"
