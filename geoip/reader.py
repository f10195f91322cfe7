"""`GeoReader`: IP address → `Location`, over memory-mapped MaxMind databases."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import maxminddb
from maxminddb import InvalidDatabaseError

from geoip.addresses import IPAddress, is_local, parse_address
from geoip.location import LOCAL, UNKNOWN, Location
from geoip.records import location_from_records

try:
    from maxminddb import extension as _extension

    _HAS_EXTENSION = hasattr(_extension, "Reader")
except ImportError:  # pragma: no cover - wheels ship the extension
    _HAS_EXTENSION = False

DEFAULT_CACHE_SIZE = 4096


class GeoDatabaseError(Exception):
    """A GeoIP database is missing, unreadable, corrupt, of the wrong kind, or closed."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self) -> tuple[type[GeoDatabaseError], tuple[Path, str]]:
        # Rebuild from both fields: the default would call __init__(message) and fail
        # when the error crosses a process boundary (workers report start-up errors).
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True, slots=True)
class DatabaseMetadata:
    """What a database says about itself (shown at start-up and by `authgate demo`)."""

    path: Path
    database_type: str
    build_time: datetime
    ip_version: int


@dataclass(frozen=True, slots=True)
class CacheStats:
    """How the lookup cache is doing (for metrics and tests)."""

    hits: int
    misses: int
    size: int
    max_size: int


class GeoReader:
    """Looks up addresses in a City or Country database, plus an optional ASN database.

    Files are memory-mapped, so opening is instant and the OS page cache is shared by
    every worker process. Recent answers are kept in a bounded LRU cache: a busy
    client's address is looked up once, not on every request. Safe to share between
    threads; a lookup never blocks on I/O beyond page faults.
    """

    def __init__(
        self,
        database: str | os.PathLike[str],
        *,
        asn_database: str | os.PathLike[str] | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._geo = _Database(Path(database))
        self._asn: _Database | None = None
        try:
            if "ASN" in self._geo.metadata.database_type.upper():
                raise GeoDatabaseError(
                    self._geo.path,
                    f"is a {self._geo.metadata.database_type} database; a City or Country "
                    "database is needed here (an ASN one goes in asn_database)",
                )
            if asn_database is not None:
                self._asn = _Database(Path(asn_database))
        except BaseException:
            self._geo.close()
            raise
        self._closed = False
        self._cached_lookup = functools.lru_cache(maxsize=cache_size)(self._lookup_uncached)

    @property
    def metadata(self) -> DatabaseMetadata:
        return self._geo.metadata

    @property
    def asn_metadata(self) -> DatabaseMetadata | None:
        return self._asn.metadata if self._asn is not None else None

    def lookup(self, ip: str | IPAddress) -> Location:
        """Where `ip` is. Local addresses give `local=True`; unknown ones all-None fields.

        Raises ValueError if `ip` is not an IP address, GeoDatabaseError if the reader
        is closed or a database turns out to be corrupt.
        """
        address = parse_address(ip)
        if is_local(address):
            return LOCAL
        if self._closed:
            raise GeoDatabaseError(self._geo.path, "the GeoIP reader is closed")
        return self._cached_lookup(address)

    def cache_stats(self) -> CacheStats:
        info = self._cached_lookup.cache_info()
        return CacheStats(info.hits, info.misses, info.currsize, info.maxsize or 0)

    def close(self) -> None:
        """Release the memory maps; later lookups of public addresses raise."""
        self._closed = True
        self._cached_lookup.cache_clear()
        self._geo.close()
        if self._asn is not None:
            self._asn.close()

    def __enter__(self) -> GeoReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _lookup_uncached(self, address: IPAddress) -> Location:
        geo = self._geo.get(address)
        asn = self._asn.get(address) if self._asn is not None else None
        if geo is None and asn is None:
            return UNKNOWN
        return location_from_records(geo, asn)


class _Database:
    """One open .mmdb file, whose errors name the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader = _open(path)
        meta = self._reader.metadata()
        self.metadata = DatabaseMetadata(
            path=path,
            database_type=meta.database_type,
            build_time=datetime.fromtimestamp(meta.build_epoch, tz=UTC),
            ip_version=meta.ip_version,
        )

    def get(self, address: IPAddress) -> object:
        if address.version == 6 and self.metadata.ip_version == 4:
            return None  # an IPv4-only database has nothing to say about IPv6
        try:
            return self._reader.get(address)
        except InvalidDatabaseError as exc:
            raise GeoDatabaseError(self.path, f"corrupt MaxMind database ({exc})") from exc

    def close(self) -> None:
        self._reader.close()


def _open(path: Path) -> maxminddb.Reader:
    # The C extension over a memory map is ~8x faster than the pure-Python reader;
    # without it, MODE_AUTO picks pure Python (memory-mapped where the OS allows).
    mode = maxminddb.MODE_MMAP_EXT if _HAS_EXTENSION else maxminddb.MODE_AUTO
    try:
        return maxminddb.open_database(path, mode)
    except FileNotFoundError:
        raise GeoDatabaseError(path, "no such file") from None
    except (OSError, InvalidDatabaseError, ValueError) as exc:
        raise GeoDatabaseError(path, f"not a readable MaxMind database ({exc})") from exc
