"""What deciding on a request reads of it."""

from __future__ import annotations

from typing import Any, Protocol

from multidict import CIMultiDictProxy


class RequestView(Protocol):
    """What deciding on a request reads of it: aiohttp's request, or the fast path's
    (gateway/fast_path.py), which has nothing else."""

    @property
    def method(self) -> str: ...

    @property
    def raw_path(self) -> str: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def secure(self) -> bool: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...
