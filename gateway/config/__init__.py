"""The gateway's configuration: `load_config()` turns config.yaml (and `AUTHGATE_*`
variables) into the frozen `Config` of `gateway.config.model`, or raises `ConfigError`
listing every problem as `FILE:LINE: key.path: what is wrong`.
"""

from gateway.config.durations import parse_duration
from gateway.config.loader import load_config
from gateway.errors import ConfigError

__all__ = ["ConfigError", "load_config", "parse_duration"]
