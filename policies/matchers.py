"""Matchers built once at load time: path globs, network sets, permission grants, host index.

Each turns a pattern an operator wrote into the cheapest test that answers it, so the
per-request path compares strings and integers and rarely runs a regex.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from policies.model import IPAddress, IPNetwork

# ---------------------------------------------------------------- paths


class GlobError(ValueError):
    """A path pattern that cannot be compiled; the message says why."""


def glob_to_regex(glob: str) -> str:
    """Translate a segment glob to a regex body (to be used with fullmatch).

    `*` within a segment matches any run of characters except `/`; a `**` segment
    matches zero or more whole segments, so `/static/**` covers `/static` and
    `/static/a/b` but never `/staticx`.
    """
    if not glob.startswith("/"):
        raise GlobError("must start with '/' (or 're:' for a regex)")
    out: list[str] = []
    for segment in glob.split("/")[1:]:
        if segment == "**":
            out.append("(?:/[^/]*)*")
        elif "**" in segment:
            raise GlobError("'**' must be a whole segment, as in '/a/**'")
        else:
            out.append("/" + "[^/]*".join(re.escape(part) for part in segment.split("*")))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class PathMatcher:
    """A rule's `paths`: exact paths in a set, `prefix/**` as prefixes, the rest as regexes.

    With `case_sensitive=False` globs are lowercased here and compared with the
    lowercased request path; `re:` patterns get re.IGNORECASE and see the path as is.
    """

    case_sensitive: bool
    exact: frozenset[str]
    prefixes: tuple[str, ...]  # "/static" for "/static/**"; "" for "/**"
    regexes: tuple[re.Pattern[str], ...]
    # Derived from the above once, for `matches` (a rule's paths are tried on every
    # request of its host): the exact paths plus each prefix itself; each prefix + "/",
    # for one startswith(); the regexes that see the key (globs), and those that see the
    # path as is (`re:`, which carry IGNORECASE when the rule is case-insensitive).
    _whole: frozenset[str] = field(init=False)
    _starts: tuple[str, ...] = field(init=False)
    _key_regexes: tuple[re.Pattern[str], ...] = field(init=False)
    _path_regexes: tuple[re.Pattern[str], ...] = field(init=False)

    def __post_init__(self) -> None:
        as_is = tuple(
            r for r in self.regexes if not self.case_sensitive and r.flags & re.IGNORECASE
        )
        derived = {
            "_whole": self.exact | frozenset(self.prefixes),
            "_starts": tuple(prefix + "/" for prefix in self.prefixes),
            "_key_regexes": tuple(r for r in self.regexes if r not in as_is),
            "_path_regexes": as_is,
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    @classmethod
    def compile(cls, patterns: Sequence[str], case_sensitive: bool) -> PathMatcher:
        """Raises GlobError for a pattern that cannot be compiled. Matchers are immutable:
        rules with the same patterns share one (a large policy repeats a few patterns)."""
        return _compile_paths(tuple(patterns), case_sensitive)

    @classmethod
    def check(cls, pattern: str, case_sensitive: bool) -> None:
        """Raises GlobError if `pattern` cannot be compiled (what `compile` would raise)."""
        _compile_pattern(pattern, case_sensitive)

    @classmethod
    def _build(cls, patterns: tuple[str, ...], case_sensitive: bool) -> PathMatcher:
        exact: set[str] = set()
        prefixes: list[str] = []
        regexes: list[re.Pattern[str]] = []
        for pattern in patterns:
            kind, value = _compile_pattern(pattern, case_sensitive)
            if kind == "exact":
                assert isinstance(value, str)
                exact.add(value)
            elif kind == "prefix":
                assert isinstance(value, str)
                prefixes.append(value)
            else:
                assert isinstance(value, re.Pattern)
                regexes.append(value)
        return cls(case_sensitive, frozenset(exact), tuple(prefixes), tuple(regexes))

    def matches(self, path: str, lowered: str) -> bool:
        """`lowered` is `path.lower()`, computed once per request by the caller."""
        key = path if self.case_sensitive else lowered
        if key in self._whole or (self._starts and key.startswith(self._starts)):
            return True
        for regex in self._key_regexes:
            if regex.fullmatch(key):
                return True
        # Loops, not any(): no generator per call on the per-request path.
        for regex in self._path_regexes:  # noqa: SIM110
            if regex.fullmatch(path):
                return True
        return False


# Bounded: policies are reloaded; a few thousand distinct patterns cover the largest ones.
@functools.lru_cache(maxsize=4096)
def _compile_paths(patterns: tuple[str, ...], case_sensitive: bool) -> PathMatcher:
    return PathMatcher._build(patterns, case_sensitive)


@functools.lru_cache(maxsize=4096)
def _compile_pattern(pattern: str, case_sensitive: bool) -> tuple[str, str | re.Pattern[str]]:
    """One path pattern: ("exact", path), ("prefix", "/static") or ("regex", compiled)."""
    if pattern.startswith("re:"):
        flags = 0 if case_sensitive else re.IGNORECASE
        try:
            return "regex", re.compile(pattern[3:], flags)
        except re.error as exc:
            raise GlobError(f"invalid regex: {exc}") from None
    body = glob_to_regex(pattern)  # validates
    glob = pattern if case_sensitive else pattern.lower()
    if "*" not in glob:
        return "exact", glob
    if glob.endswith("/**") and "*" not in glob[:-3]:
        return "prefix", glob[:-3]
    return "regex", re.compile(body if case_sensitive else glob_to_regex(glob))


# ---------------------------------------------------------------- networks


def normalise_ip(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:10.0.0.1) is the IPv4 address it carries."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return mapped
    return ip


@dataclass(frozen=True, slots=True)
class NetworkSet:
    """CIDRs as (network int, mask int) pairs per IP version: membership is two int ops."""

    v4: tuple[tuple[int, int], ...]
    v6: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, networks: Iterable[IPNetwork]) -> NetworkSet:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for net in networks:
            pair = (int(net.network_address), int(net.netmask))
            (v4 if net.version == 4 else v6).append(pair)
        return cls(tuple(v4), tuple(v6))

    def contains(self, ip: IPAddress) -> bool:
        value = int(ip)
        for network, mask in self.v4 if ip.version == 4 else self.v6:
            if value & mask == network:
                return True
        return False


# ---------------------------------------------------------------- permissions


def permission_covers(granted: str, required: str) -> bool:
    """`*` covers everything, `wiki.*` covers `wiki.read` and `wiki.page.edit`, else equality."""
    if granted == required or granted == "*":
        return True
    return granted.endswith(".*") and required.startswith(granted[:-1])


@dataclass(frozen=True, slots=True)
class Grants:
    """A principal's effective permissions, split for quick `covers` checks."""

    everything: bool
    exact: frozenset[str]
    prefixes: tuple[str, ...]  # "wiki." for "wiki.*"

    @classmethod
    def of(cls, permissions: Iterable[str]) -> Grants:
        exact: set[str] = set()
        prefixes: list[str] = []
        everything = False
        for p in permissions:
            if p == "*":
                everything = True
            elif p.endswith(".*"):
                prefixes.append(p[:-1])
            exact.add(p)
        return cls(everything, frozenset(exact), tuple(sorted(set(prefixes))))

    def covers(self, required: str) -> bool:
        if self.everything or required in self.exact:
            return True
        return any(required.startswith(prefix) for prefix in self.prefixes)


NO_GRANTS = Grants(False, frozenset(), ())


# ---------------------------------------------------------------- hosts


def merge_sorted(*lists: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(set().union(*lists)))


class RuleHostIndex:
    """For a canonical host, the positions of the rules that can match it, in rule order.

    Rules name exact hosts (`wiki.example.com`) or wildcards (`*.example.com`: any depth
    of subdomain, not the apex), or no host at all (every host). Every candidate tuple
    is merged and sorted at load time, so a lookup is one dict hit for a known exact
    host, or a walk over the host's labels for any other; first-match order is kept.
    (The pure twin of gateway/tenants.py's HostIndex, which picks one winner instead.)
    """

    def __init__(self, rule_hosts: Sequence[tuple[str, ...]]) -> None:
        anywhere: list[int] = []
        exact: dict[str, list[int]] = {}
        wild: dict[str, list[int]] = {}  # "example.com" for "*.example.com"
        for position, hosts in enumerate(rule_hosts):
            if not hosts:
                anywhere.append(position)
            for host in hosts:
                if host.startswith("*."):
                    wild.setdefault(host[2:], []).append(position)
                else:
                    exact.setdefault(host, []).append(position)
        self._anywhere = tuple(anywhere)
        # Per wildcard suffix: host-less rules, its own wildcard rules, and those of every
        # shorter suffix (a host under a.b.c is also under b.c).
        self._wild: dict[str, tuple[int, ...]] = {}
        for suffix in wild:
            lists = [anywhere]
            for parent in _suffixes(suffix, include_self=True):
                lists.append(wild.get(parent, []))
            self._wild[suffix] = merge_sorted(*lists)
        self._exact: dict[str, tuple[int, ...]] = {
            host: merge_sorted(positions, self._under_wildcards(host))
            for host, positions in exact.items()
        }

    def _under_wildcards(self, host: str) -> tuple[int, ...]:
        for suffix in _suffixes(host, include_self=False):
            found = self._wild.get(suffix)
            if found is not None:
                return found
        return self._anywhere

    def candidates(self, host: str) -> tuple[int, ...]:
        found = self._exact.get(host)
        if found is not None:
            return found
        return self._under_wildcards(host)


def _suffixes(host: str, include_self: bool) -> Iterable[str]:
    """`a.b.c` → (`a.b.c`,) `b.c`, `c`: longest first."""
    if include_self:
        yield host
    dot = host.find(".")
    while dot != -1:
        yield host[dot + 1 :]
        dot = host.find(".", dot + 1)
