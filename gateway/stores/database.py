"""The sliver of a SQL database the stores need, so one set of store classes
(`gateway.stores.sql`) serves both SQLite and PostgreSQL.

Queries are written once with `?` placeholders; the PostgreSQL adapter numbers
them (`$1`, `$2`, …). Adapters translate driver errors at this boundary: a
unique violation becomes `AlreadyExists`, anything else `StoreUnavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

Row = Sequence[Any]


class Database(Protocol):
    async def execute(self, sql: str, *args: object) -> int:
        """Run one statement; returns the number of rows it changed."""

    async def fetch(self, sql: str, *args: object) -> list[Row]: ...

    async def fetchone(self, sql: str, *args: object) -> Row | None: ...

    def transaction(self, *, replicated: bool = False) -> AbstractAsyncContextManager[Database]:
        """A Database whose statements commit together or not at all. `replicated`: the
        block ends only once the commit is confirmed as `execute_replicated` confirms
        (asked of the outermost transaction; a nested one joins it, and may not ask)."""

    async def lock(self, name: str) -> None:
        """Inside a transaction: wait for the lock called `name` and hold it until the
        transaction ends, so that transactions taking it run one after another (a read
        then a write that depends on it). RuntimeError outside a transaction."""

    async def execute_replicated(self, sql: str, *args: object) -> int:
        """`execute` for a revocation: answered once the replicas the URL asks for
        (`?wait_replicas=N`, PostgreSQL) have the database as it stands after it, so a
        failover cannot undo it, or after REPLICA_WAIT_MS with a warning; without
        waiting when none are asked for (SQLite has none). StoreUnavailable if the
        server fails meanwhile (not confirmed). RuntimeError inside a transaction."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def nested_transaction(replicated: bool) -> None:
    """A nested transaction commits with the outer one, which alone may wait for it."""
    if replicated:
        raise RuntimeError("ask for a replicated transaction on the outermost one")
