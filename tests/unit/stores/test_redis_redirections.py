"""Where a Cluster revocation follows a MOVED or ASK (gateway/stores/redis.py), on a
real redis-py Cluster client that has mapped nothing yet (no server is reached)."""

from __future__ import annotations

from typing import Any

import redis.exceptions
from redis.asyncio.cluster import ClusterNode

from gateway.stores.redis import _redirected_to, open_redis

ORIGIN = ClusterNode("10.0.0.5", 7000)


def _cluster() -> Any:
    return open_redis("redis+cluster://10.0.0.5:7000,10.0.0.6:7000").client


def test_a_node_not_met_yet_joins_the_clients_nodes_once() -> None:
    cluster = _cluster()
    moved = redis.exceptions.MovedError("3999 10.0.0.9:7001")
    node = _redirected_to(cluster, moved, ORIGIN)
    assert (node.host, node.port) == ("10.0.0.9", 7001)
    assert cluster.get_node(host="10.0.0.9", port=7001) is node
    asked = redis.exceptions.AskError("12 10.0.0.9:7001")
    assert _redirected_to(cluster, asked, ORIGIN) is node


def test_the_new_node_is_connected_as_the_others_are() -> None:
    cluster = _cluster()
    moved = redis.exceptions.MovedError("3999 10.0.0.9:7001")
    node = _redirected_to(cluster, moved, ORIGIN)
    kwargs = cluster.nodes_manager.connection_kwargs
    assert node.max_connections == kwargs["max_connections"]
    assert node.connection_kwargs["socket_timeout"] == kwargs["socket_timeout"]


def test_a_redirection_with_a_port_alone_means_the_origins_host() -> None:
    cluster = _cluster()
    moved = redis.exceptions.MovedError("3999 :6381")
    node = _redirected_to(cluster, moved, ORIGIN)
    assert (node.host, node.port) == ("10.0.0.5", 6381)
