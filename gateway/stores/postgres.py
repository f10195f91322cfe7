"""PostgreSQL behind the `Database` interface (asyncpg pool): for many instances.

The schema is changed only by `authgate migrate`; opening checks the version and
refuses an older schema with a message saying what to run, rather than failing
later on a missing column in the middle of a login.

Failover: a libpq multi-host URL (`postgresql://h1:5432,h2:5432/db`) lists the
primary and its standbys. The gateway writes, so it connects only to a server that
accepts writes (`target_session_attrs=read-write` unless the URL or
PGTARGETSESSIONATTRS says otherwise), tries the hosts one after another with a
deadline of its own for each (a hung host must not use up the time the next one
needs), and starts with the host that last worked. A write refused as read-only
(a server fenced or demoted under an open connection) is a 503, and makes the pool
reconnect, so that it finds the new primary.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from gateway import replica_wait
from gateway.errors import StoreUnavailable
from gateway.replica_wait import REPLICA_WAIT_MS, note_unconfirmed, without_option
from gateway.stores.base import AlreadyExists, SchemaOutdated
from gateway.stores.breaker import Breaker, watched
from gateway.stores.database import Row, nested_transaction
from gateway.stores.migrations import latest_version, migrate_postgres, postgres_version

T = TypeVar("T")

log = logging.getLogger("authgate.stores.postgres")

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 5.0  # a store that cannot answer in 5 s is treated as down
# Of several hosts, each gets CONNECT_TIMEOUT shared out, but at least this (libpq's
# minimal connect_timeout): enough for a server that answers, short enough that a
# hung first host leaves the next one the time it needs within COMMAND_TIMEOUT.
HOST_TIMEOUT = 2.0
READ_WRITE = "read-write"

_DRIVER_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


class _NoServerAnswers(asyncpg.exceptions.InternalClientError):  # type: ignore[misc]
    """No host of the URL took a connection for want of an answer (not read-only)."""


# Failures that say the server is out (no answer in time, connection lost or refused),
# which count toward opening the pool's breaker; anything else is an answer.
_OUTAGES = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, _NoServerAnswers)


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, _OUTAGES)


async def _guard(
    operation: Callable[[], Awaitable[T]],
    on_read_only: Callable[[], Awaitable[None]] | None = None,
    breaker: Breaker | None = None,
) -> T:
    """Run a driver call, translating its errors to ours (fail closed). The deadline
    covers waiting for a pooled connection too: against a hung server, requests would
    otherwise queue behind the pool's ten connections for many times the timeout.
    With a `breaker`, a call is refused at once while it is open, and the outcome is
    reported to it (see gateway.stores.breaker)."""
    try:
        with watched(breaker, _is_outage):
            async with asyncio.timeout(COMMAND_TIMEOUT):
                return await operation()
    except asyncpg.UniqueViolationError as exc:
        raise AlreadyExists(str(exc)) from exc
    except asyncpg.ReadOnlySQLTransactionError as exc:
        log.error(
            "postgresql refused a write: the server is read-only (a standby, or a primary"
            " fenced or demoted); failing closed%s",
            ", reconnecting to find the primary" if on_read_only is not None else "",
        )
        if on_read_only is not None:
            await on_read_only()
        raise StoreUnavailable(f"postgresql: read-only server: {exc}") from exc
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}") from exc


def _hosts(url: str) -> list[tuple[str, int | None]]:
    """The hosts of a libpq URL's authority, in order (`h1:5432,[::1]:5433,h3`).
    Empty when the URL names its hosts otherwise (`?host=` or `?port=`, Unix sockets):
    then asyncpg is left to handle them as a whole."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if "host" in query or "port" in query:
        return []
    hostspec = parts.netloc.rpartition("@")[2]
    hosts: list[tuple[str, int | None]] = []
    for entry in filter(None, hostspec.split(",")):
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = entry.partition(":")
        hosts.append((unquote(host), int(port) if port.isdigit() else None))
    return hosts


def _session_attrs(url: str) -> str | None:
    """What to pass as target_session_attrs: read-write unless the URL or the
    environment chose (None: asyncpg reads it from there)."""
    query = parse_qs(urlsplit(url).query)
    if "target_session_attrs" in query or os.environ.get("PGTARGETSESSIONATTRS"):
        return None
    return READ_WRITE


class _Connector:
    """Opens connections for the pool (and for `authgate migrate`): each host of the
    URL in turn, with a deadline per host, starting with the one that last worked."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._hosts = _hosts(url)
        self._attrs = _session_attrs(url)
        self._first = 0
        count = max(1, len(self._hosts))
        self._per_host = max(HOST_TIMEOUT, CONNECT_TIMEOUT / count)

    async def __call__(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        """`asyncpg.connect` to the first host that takes us (the pool passes the URL
        and its own options: ours are used instead)."""
        kwargs.pop("timeout", None)
        if self._attrs is not None:
            kwargs.setdefault("target_session_attrs", self._attrs)
        if not self._hosts:
            return await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT, **kwargs)
        failures: list[str] = []
        read_only = False  # a host answered, as a standby (or fenced)
        count = len(self._hosts)
        start = self._first  # each host once, from here, whatever `_first` becomes
        for step in range(count):
            index = (start + step) % count
            host, port = self._hosts[index]
            try:
                conn = await asyncpg.connect(
                    self._url, host=host, port=port, timeout=self._per_host, **kwargs
                )
            except _DRIVER_ERRORS as exc:
                failures.append(f"{host}:{port or 5432} {_why(exc)}")
                read_only |= isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched)
                if index == self._first and isinstance(exc, (OSError, asyncio.TimeoutError)):
                    # Silent or gone (a host that answers, if only to refuse us, is not
                    # passed over). The next attempt starts after it: a call's deadline
                    # (COMMAND_TIMEOUT) may cut this one short before the host that
                    # answers is reached, and every attempt starting again from the same
                    # silent hosts would never reach it (4 hosts, the first 3 hung).
                    self._first = (index + 1) % count
                continue
            if index != self._first or step:
                log.warning("postgresql: %s:%s accepts writes; trying it first", host, port or 5432)
                self._first = index
            return conn
        if read_only:
            raise asyncpg.exceptions.InternalClientError(
                f"no server accepts writes ({'; '.join(failures)})"
            )
        raise _NoServerAnswers(f"no server answers ({'; '.join(failures)})")


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched):
        return "is read-only (a standby, or default_transaction_read_only)"
    if isinstance(exc, TimeoutError):
        return "did not answer in time"
    return f"{type(exc).__name__}: {exc}"


@functools.lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """`?` placeholders → `$1, $2, …` (our SQL never has a literal '?')."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _rowcount(status: str) -> int:
    """asyncpg reports 'UPDATE 3' / 'INSERT 0 1'; the last number is the row count."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _Connection:
    """Statements on one pooled connection (inside a transaction)."""

    def __init__(
        self, conn: Any, on_read_only: Callable[[], Awaitable[None]], breaker: Breaker
    ) -> None:
        self._conn = conn
        self._on_read_only = on_read_only
        self._breaker = breaker

    async def execute(self, sql: str, *args: object) -> int:
        status = await _guard(
            lambda: self._conn.execute(_numbered(sql), *args), self._on_read_only, self._breaker
        )
        return _rowcount(str(status))

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        rows = await _guard(
            lambda: self._conn.fetch(_numbered(sql), *args), self._on_read_only, self._breaker
        )
        return list(rows)

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        row: Row | None = await _guard(
            lambda: self._conn.fetchrow(_numbered(sql), *args), self._on_read_only, self._breaker
        )
        return row

    @asynccontextmanager
    async def transaction(self, *, replicated: bool = False) -> AsyncIterator[_Connection]:
        nested_transaction(replicated)
        yield self  # a nested transaction joins the one already open

    async def lock(self, name: str) -> None:
        await self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", name)

    async def execute_replicated(self, sql: str, *args: object) -> int:
        raise RuntimeError("Database.execute_replicated() waits for a commit: not in a transaction")

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        """The owner closes the database, not a transaction."""


class PostgresDatabase:
    def __init__(self, pool: asyncpg.Pool, *, wait_replicas: int = 0) -> None:
        self._pool = pool
        self._breaker = Breaker("postgresql")  # one per pool, so per worker
        self._replicas = wait_replicas

    async def _reconnect(self) -> None:
        """A server refused a write as read-only: every pooled connection is replaced
        at its next use, by one to a server that accepts writes (or none: 503)."""
        await self._pool.expire_connections()

    async def execute(self, sql: str, *args: object) -> int:
        status = await _guard(
            lambda: self._pool.execute(_numbered(sql), *args), self._reconnect, self._breaker
        )
        return _rowcount(str(status))

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        rows = await _guard(
            lambda: self._pool.fetch(_numbered(sql), *args), self._reconnect, self._breaker
        )
        return list(rows)

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        row: Row | None = await _guard(
            lambda: self._pool.fetchrow(_numbered(sql), *args), self._reconnect, self._breaker
        )
        return row

    @asynccontextmanager
    async def transaction(self, *, replicated: bool = False) -> AsyncIterator[_Connection]:
        try:
            # A pooled connection proves nothing (its statements report to the breaker);
            # failing to get one within the deadline is an outage.
            with watched(self._breaker, _is_outage, success=None):
                conn = await self._pool.acquire(timeout=COMMAND_TIMEOUT)
            try:
                wrote = False
                async with conn.transaction():
                    yield _Connection(conn, self._reconnect, self._breaker)
                    if replicated and self._replicas:
                        # A transaction that wrote nothing (a code not found, so not
                        # taken) has nothing to confirm: it must not hold a connection
                        # for the wait, nor warn, for anyone who sends unknown codes.
                        wrote = await _guard(
                            lambda: conn.fetchval("SELECT txid_current_if_assigned() IS NOT NULL"),
                            self._reconnect,
                            self._breaker,
                        )
                if wrote:
                    seen = await _guard(
                        lambda: _standbys_after(conn, self._replicas),
                        self._reconnect,
                        self._breaker,
                    )
                    self._unconfirmed(seen)
            finally:
                await self._pool.release(conn)
        except _DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}") from exc

    async def lock(self, name: str) -> None:
        raise RuntimeError("Database.lock() holds only inside a transaction")

    def _unconfirmed(self, seen: tuple[int, int]) -> None:
        have, hidden = seen
        if have >= self._replicas:
            return
        note_unconfirmed("postgresql")
        log.warning(
            "postgresql: a revocation (a write that takes access away) is not confirmed on %d"
            " standby(s) within %d ms"
            " (%d had it%s); it holds unless the primary fails before they have it",
            self._replicas,
            REPLICA_WAIT_MS,
            have,
            f"; the positions of {hidden} this role may not read: grant it pg_monitor"
            if hidden
            else "",
        )

    async def execute_replicated(self, sql: str, *args: object) -> int:
        """`execute`, answered once `wait_replicas` standbys have flushed the WAL up to
        where it stood after the commit (what a promoted standby replays), whether the
        statement changed anything or not (a revocation made meanwhile by another call
        must be confirmed too). Asked of `pg_stat_replication` every few ms: PostgreSQL
        has no WAIT for asynchronous standbys, and making every commit synchronous would
        slow every sign-in to make revocations durable. All on the connection that
        committed, so that the position and the standbys are that server's, even if
        the pool moves to another meanwhile."""
        if not self._replicas:
            return await self.execute(sql, *args)

        async def run() -> tuple[str, tuple[int, int]]:
            async with self._pool.acquire() as conn:
                status = await conn.execute(_numbered(sql), *args)
                return str(status), await _standbys_after(conn, self._replicas)

        status, seen = await _guard(run, self._reconnect, self._breaker)
        self._unconfirmed(seen)
        return _rowcount(status)

    async def ping(self) -> bool:
        """Ready: the server answers and takes writes (a server fenced read-only under
        an open connection is not; the pool then reconnects)."""
        try:
            row = await self.fetchone("SELECT current_setting('transaction_read_only')")
        except StoreUnavailable:
            return False
        if row is not None and row[0] == "on":
            log.error("postgresql: the server is read-only; not ready, reconnecting")
            await self._reconnect()
            return False
        return True

    async def close(self) -> None:
        await self._pool.close()


# Physical standbys that replay what they receive (pg_receivewal reports no replay
# position, logical replication runs in a database): the servers a failover promotes.
_STANDBYS = (
    "SELECT count(*) FILTER (WHERE r.flush_lsn >= $1 AND r.replay_lsn IS NOT NULL),"
    " count(*) FILTER (WHERE r.state IS NULL)"
    " FROM pg_stat_replication r JOIN pg_stat_activity a USING (pid) WHERE a.datname IS NULL"
)


async def _standbys_after(conn: Any, wanted: int) -> tuple[int, int]:
    """After a commit on `conn`: how many standbys have flushed the WAL up to where it
    stands now (asked until `wanted` do, or for REPLICA_WAIT_MS), and how many this role
    may not see the positions of. The insert position: the write position may still be
    short of the commit record (synchronous_commit=off)."""
    target = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REPLICA_WAIT_MS / 1000
    pause = 0.002
    while True:
        have, hidden = await conn.fetchrow(_STANDBYS, target)
        if have >= wanted or loop.time() >= deadline:
            return int(have), int(hidden)
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


async def connect(url: str) -> asyncpg.Connection:
    """One plain connection (for `authgate migrate`)."""
    try:
        return await _Connector(without_option(url))()
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"postgresql: cannot connect: {exc}") from exc


async def migrate(url: str) -> list[str]:
    """Apply pending migrations; returns the names of the files applied."""
    conn = await connect(url)
    try:
        applied = await _guard(lambda: migrate_postgres(conn))
    finally:
        await conn.close()
    return [m.name for m in applied]


async def open_postgres(url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresDatabase:
    """A pool on `url`, refusing a schema older than this code (`SchemaOutdated`).
    `?wait_replicas=N` in the URL: see `PostgresDatabase.execute_replicated`."""
    try:
        replicas = replica_wait.of_url(url, 0)
    except ValueError as exc:  # the config check said so already, with its line
        raise StoreUnavailable(f"storage: {exc}") from None
    url = without_option(url)
    try:
        pool = await asyncpg.create_pool(
            url,
            connect=_Connector(url),
            min_size=min_size,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
        )
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"postgresql: cannot connect: {exc}") from exc
    try:
        async with pool.acquire() as conn:
            have = await _guard(lambda: postgres_version(conn))
        need = latest_version("postgres")
        if have < need:
            raise SchemaOutdated(
                f"the PostgreSQL schema is at version {have}, this authgate needs {need}:"
                " run `authgate migrate`"
            )
    except BaseException:
        await pool.close()
        raise
    return PostgresDatabase(pool, wait_replicas=replicas)
