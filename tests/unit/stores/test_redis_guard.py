"""Every failure of the Redis driver is the store being down (a 503), never a 500."""

from __future__ import annotations

import pytest
import redis.exceptions

from gateway.errors import StoreUnavailable
from gateway.stores.redis import _guard


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ConnectionError("refused"),
        redis.exceptions.TimeoutError("slow"),
        redis.exceptions.ClusterDownError("CLUSTERDOWN"),
        redis.exceptions.RedisClusterException("Redis Cluster cannot be connected"),
        redis.exceptions.SlotNotCoveredError("slot 5 not covered"),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
async def test_a_driver_failure_is_the_store_being_down(error: Exception) -> None:
    async def failing() -> None:
        raise error

    with pytest.raises(StoreUnavailable):
        await _guard(failing)
