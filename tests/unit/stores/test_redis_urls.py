"""`sessions.store` Redis URLs: what each form names, what is refused and how, and the
TLS settings each client is built with (the live TLS test is in
tests/integration/stores/test_redis_tls.py)."""

from __future__ import annotations

import pytest

from gateway.stores.redis import connect, open_redis
from gateway.stores.redis_urls import RedisMode, RedisUrlError, for_redis_py, parse_redis_url


def test_one_server_with_credentials_and_a_database() -> None:
    target = parse_redis_url("rediss://app:s%40cret@cache.internal:6380/3")
    assert target.mode is RedisMode.STANDALONE and target.tls
    assert target.nodes == (("cache.internal", 6380),)
    assert (target.username, target.password, target.db) == ("app", "s@cret", 3)
    assert "s@cret" not in repr(target) and "s%40cret" not in repr(target)


def test_a_password_alone_and_default_port() -> None:
    target = parse_redis_url("redis://secret@cache")
    assert (target.username, target.password) == (None, "secret")
    assert target.nodes == (("cache", 6379),) and not target.tls


def test_sentinels_name_the_service_and_keep_their_own_password() -> None:
    target = parse_redis_url(
        "redis+sentinel://:master-pw@s1,s2:26380,[::1]/mymaster/2?sentinel_password=sp"
    )
    assert target.mode is RedisMode.SENTINEL
    assert target.nodes == (("s1", 26379), ("s2", 26380), ("::1", 26379))
    assert (target.service_name, target.db) == ("mymaster", 2)
    assert (target.password, target.sentinel_password) == ("master-pw", "sp")
    assert "master-pw" not in repr(target) and "sentinel_password=" not in repr(target)


def test_a_cluster_lists_seed_nodes_and_has_only_database_0() -> None:
    target = parse_redis_url("rediss+cluster://n1:7000,n2:7001")
    assert target.mode is RedisMode.CLUSTER and target.tls
    assert target.nodes == (("n1", 7000), ("n2", 7001))
    with pytest.raises(RedisUrlError, match="only database 0"):
        parse_redis_url("redis+cluster://n1:7000/1")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("memcached://x", "expected redis://"),
        ("redis://", "no host"),
        ("redis://a,b", "one host"),
        ("redis://h:99999", "bad port"),
        ("redis://h:port", "bad port"),
        ("redis://h/zero", "must be a number"),
        ("redis+sentinel://s1", "service_name"),
        ("redis+sentinel://s1/a/1/x", "service_name"),
        ("redis://h/0?wait_replicas=one", "wait_replicas must be 0 to 16"),
        ("redis+cluster://n1?wait_replicas=-1", "wait_replicas must be 0 to 16"),
        ("redis+sentinel://s1/m?wait_replicas=17", "wait_replicas must be 0 to 16"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, reason: str) -> None:
    with pytest.raises(RedisUrlError, match=reason):
        parse_redis_url(url)


def test_a_bad_url_never_echoes_its_password() -> None:
    with pytest.raises(RedisUrlError) as caught:
        parse_redis_url("redis://user:hunter2@h:notaport")
    assert "hunter2" not in str(caught.value)


def test_a_private_ca_serves_every_form() -> None:
    for url in (
        "rediss://h/0?ssl_ca_certs=/etc/authgate/ca.pem",
        "rediss+sentinel://s1/mymaster?ssl_ca_certs=/etc/authgate/ca.pem",
        "rediss+cluster://n1:7000?ssl_ca_certs=/etc/authgate/ca.pem",
    ):
        assert parse_redis_url(url).ca_certs == "/etc/authgate/ca.pem"


async def test_sentinel_and_cluster_clients_verify_tls_with_the_named_ca() -> None:
    # Built, not connected: the settings every connection of these clients will use.
    cluster = open_redis("rediss+cluster://127.0.0.1:7000?ssl_ca_certs=/tmp/ca.pem")
    try:
        kwargs = cluster.client.connection_kwargs  # type: ignore[union-attr]
        assert kwargs["ssl_ca_certs"] == "/tmp/ca.pem"
        assert kwargs["ssl_cert_reqs"] == "required"
    finally:
        await cluster.close()

    sentinel = open_redis("rediss+sentinel://127.0.0.1:26379/mymaster?ssl_ca_certs=/tmp/ca.pem")
    try:
        assert sentinel.sentinel is not None
        pools = [s.connection_pool for s in sentinel.sentinel.sentinels]
        pools.append(sentinel.client.connection_pool)  # type: ignore[union-attr]
        for pool in pools:
            assert "SSL" in pool.connection_class.__name__
            assert pool.connection_kwargs["ssl_ca_certs"] == "/tmp/ca.pem"
            assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
    finally:
        await sentinel.close()


def test_revocations_wait_for_a_replica_by_default_only_with_sentinel() -> None:
    assert parse_redis_url("redis+sentinel://s1/mymaster").wait_replicas == 1
    assert parse_redis_url("redis://h/0").wait_replicas == 0
    assert parse_redis_url("redis+cluster://n1:7000").wait_replicas == 0
    assert parse_redis_url("redis+cluster://n1:7000?wait_replicas=1").wait_replicas == 1
    assert parse_redis_url("redis+sentinel://s1/mymaster?wait_replicas=0").wait_replicas == 0
    assert parse_redis_url("redis://h/0?wait_replicas=2").wait_replicas == 2


def test_redis_py_never_sees_authgate_s_own_options() -> None:
    assert for_redis_py("redis://h/0?wait_replicas=1") == "redis://h/0"
    assert (
        for_redis_py("rediss://h/0?wait_replicas=1&ssl_ca_certs=/ca.pem")
        == "rediss://h/0?ssl_ca_certs=/ca.pem"
    )
    assert for_redis_py("redis://h/0") == "redis://h/0"
    # redis-py hands options it does not know to each connection it makes
    kwargs = connect("redis://h:6380/2?wait_replicas=1").connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("h", 6380, 2)
    assert "wait_replicas" not in kwargs
