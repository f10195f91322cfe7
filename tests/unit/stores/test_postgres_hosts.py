"""The PostgreSQL connector's walk over the hosts of a multi-host URL, against real
sockets on this machine: ports where nothing listens refuse at once."""

from __future__ import annotations

import asyncio
import re
import socket

import pytest

from gateway.stores.postgres import _Connector, _NoServerAnswers


def refusing_ports(count: int) -> list[int]:
    """Ports nothing listens on (bound, then closed)."""
    ports = []
    for _ in range(count):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


async def attempt(connector: _Connector) -> list[int]:
    """The ports one attempt tried, in order (from the error it ends with)."""
    with pytest.raises(_NoServerAnswers) as failed:
        await connector()
    return [int(port) for port in re.findall(r"127\.0\.0\.1:(\d+) ", str(failed.value))]


async def test_each_host_is_tried_once_in_turn() -> None:
    ports = refusing_ports(3)
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    connector = _Connector(f"postgresql://authgate@{hosts}/authgate")
    assert await attempt(connector) == ports
    assert await attempt(connector) == ports  # all failed: where it began


async def test_an_attempt_cut_short_leaves_the_next_to_start_past_the_host_that_failed() -> None:
    # The first host refuses, the second says nothing (a black hole): the call's deadline
    # cuts the attempt there. The next one starts at the silent host, not at the first.
    first, last = refusing_ports(2)
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        silent = hole.getsockname()[1]
        ports = [first, silent, last]
        connector = _Connector(
            "postgresql://authgate@" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/authgate"
        )
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await connector()
        assert await attempt(connector) == [silent, last, first]
