"""The browser tests reuse the integration servers: the echo upstream and the gateway."""

from tests.integration.conftest import start_gateway, upstream

__all__ = ["start_gateway", "upstream"]
