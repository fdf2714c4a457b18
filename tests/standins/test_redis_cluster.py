"""The local Redis Cluster (tests/standins/redis_cluster.py): it is up, spread, and survives a
failover.

The cluster is shared by the whole session, so every key here carries a prefix of its own and is
deleted after; a failover is undone before the test ends, so the layout stays as documented.
"""

import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.standins.redis_cluster import SLOTS, LocalCluster


@pytest.fixture
def prefix() -> str:
    return f"cluster-selftest:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster) -> Iterator[redis.RedisCluster]:
    with redis_cluster.client() as client:
        yield client


def key_on(cluster: LocalCluster, master_port: int, prefix: str) -> str:
    """A key under `prefix` whose slot `master_port` serves."""
    for number in range(10_000):
        key = f"{prefix}{number}"
        if cluster.master_of(key) == master_port:
            return key
    raise LookupError(f"no key under {prefix!r} lands on {master_port}")


def test_three_masters_with_a_replica_each_serve_every_slot(redis_cluster: LocalCluster) -> None:
    masters, replicas = redis_cluster.masters(), redis_cluster.replicas()
    assert len(masters) == 3
    assert len(replicas) == 3
    assert sorted(redis_cluster.replica_of(port) for port in masters) == sorted(replicas)
    for node in redis_cluster.nodes:
        info = redis_cluster.info(node.port)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_ok"] == str(SLOTS)
        assert info["cluster_known_nodes"] == "6"
    assert redis_cluster.url.startswith("redis://127.0.0.1:")


def test_a_key_written_through_the_cluster_client_lands_on_each_master(
    redis_cluster: LocalCluster, cluster_client: redis.RedisCluster, prefix: str
) -> None:
    before = redis_cluster.keys_per_master()
    keys = {port: key_on(redis_cluster, port, prefix) for port in redis_cluster.masters()}
    try:
        for port, key in keys.items():
            assert cluster_client.set(key, f"on {port}")
            assert cluster_client.get_node_from_key(key).port == port
            # a plain client on that master reads it: the master really holds the key
            assert redis_cluster.direct[port].get(key) == f"on {port}"
        after = redis_cluster.keys_per_master()
        assert all(after[port] == before[port] + 1 for port in keys)
    finally:
        cluster_client.delete(*keys.values())


def test_failover_swaps_a_pair_and_the_cluster_stays_usable(
    redis_cluster: LocalCluster, cluster_client: redis.RedisCluster, prefix: str
) -> None:
    old_master = redis_cluster.masters()[0]
    key = key_on(redis_cluster, old_master, prefix)
    cluster_client.set(key, "kept")
    new_master = redis_cluster.failover(old_master)
    try:
        assert new_master in redis_cluster.masters()
        assert old_master in redis_cluster.replicas()
        assert redis_cluster.master_of(key) == new_master
        # the client made before the failover follows the MOVED reply to the new master
        assert cluster_client.get(key) == "kept"
        assert cluster_client.set(key, "written after")
        assert redis_cluster.direct[new_master].get(key) == "written after"
        with redis_cluster.client() as fresh:
            assert fresh.get(key) == "written after"
    finally:
        cluster_client.delete(key)
        assert redis_cluster.failover(new_master) == old_master
    assert old_master in redis_cluster.masters()
