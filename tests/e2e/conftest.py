"""The browser tests reuse the integration servers: the echo upstream and the gateway."""

from tests.integration.conftest import server_path, start_gateway, upstream

__all__ = ["server_path", "start_gateway", "upstream"]
