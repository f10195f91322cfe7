"""How many CPUs the process's cgroups let it use: the default worker count fits a
container whose CPU limit is smaller than the machine.

Why: `server.workers: auto` counted the CPUs the process may run on. In a container
limited by a quota (Kubernetes `limits.cpu: 2`, `docker run --cpus 2`) on a 32-CPU host,
that is 32 workers sharing two CPUs' worth of time. Each costs its memory (about 75 MB),
and together they run into the quota and are throttled for whole periods (100 ms by
default), which is the tail latency the gateway is built to avoid. As Go's
`automaxprocs` does, the count is the quota rounded down, and at least one.

Where: `/proc/self/mountinfo` says where the cgroup file systems are mounted (cgroup
v2, and the v1 hierarchy with the `cpu` controller) and which cgroup each mount's root
is; `/proc/self/cgroup` says the process's cgroup in each. The limit is read (v2
`cpu.max`; v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`) in the process's cgroup and
in each one above it up to the mount's root: the smallest holds. A process whose cgroup
is not under the mount's root (a container without a cgroup namespace sees the host's
path) reads the mount's root, which is then its container's cgroup, as the JVM does.
Anything unreadable or malformed counts as no limit: this sets a default and must
never stop a start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

PROC_MOUNTINFO = Path("/proc/self/mountinfo")
PROC_CGROUP = Path("/proc/self/cgroup")

Limit = Callable[[Path], "float | None"]


def quota_cpus(mountinfo: Path = PROC_MOUNTINFO, cgroup: Path = PROC_CGROUP) -> float | None:
    """CPU time a second the process's cgroups allow it (1.5: one and a half CPUs), or
    None when nothing limits it or it cannot be told."""
    memberships = dict(_memberships(_lines(cgroup)))
    limits: list[float] = []
    for fstype, root, mount_point, options in _mounts(_lines(mountinfo)):
        if fstype == "cgroup2" and "" in memberships:
            limits += _along(mount_point, root, memberships[""], _v2_limit)
        elif fstype == "cgroup" and "cpu" in options:
            path = next((p for c, p in memberships.items() if "cpu" in c.split(",")), None)
            if path is not None:
                limits += _along(mount_point, root, path, _v1_limit)
    return min(limits, default=None)


def workers_for(cpus: int, quota: float | None) -> int:
    """Workers for `cpus` CPUs to run on under `quota` (CPU time a second): one per CPU,
    no more than the quota rounded down, at least one."""
    if quota is None:
        return max(1, cpus)
    return max(1, min(cpus, math.floor(quota)))


def _lines(file: Path) -> list[str]:
    try:
        return file.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return []


def _memberships(lines: list[str]) -> Iterator[tuple[str, str]]:
    """(controllers, cgroup path) from `/proc/self/cgroup`: "" for v2's controllers."""
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, colon, path = rest.partition(":")
        if colon and (controllers or hierarchy == "0"):
            yield controllers, path


def _mounts(lines: list[str]) -> Iterator[tuple[str, str, Path, set[str]]]:
    """(file system type, the cgroup at the mount's root, the mount point, its super
    options) of each cgroup mount in `/proc/self/mountinfo`."""
    for line in lines:
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
            root, mount_point = fields[3], fields[4]
            fstype, super_options = fields[dash + 1], fields[dash + 3]
        except (ValueError, IndexError):
            continue
        if fstype in ("cgroup", "cgroup2"):
            yield (
                fstype,
                _unescape(root),
                Path(_unescape(mount_point)),
                set(super_options.split(",")),
            )


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def _along(mount_point: Path, root: str, path: str, read: Limit) -> list[float]:
    """The limits in the cgroup at `path` (seen from the mount, whose root is the cgroup
    `root`) and in each one above it, up to the mount's root."""
    cgroup, mounted = PurePosixPath("/" + path.strip().lstrip("/")), PurePosixPath(root)
    try:
        relative = cgroup.relative_to(mounted)
    except ValueError:  # not under the mount's root: the mount's root is all there is
        relative = PurePosixPath()
    limits = []
    for step in (relative, *relative.parents):
        folder = mount_point / step
        if ".." in step.parts or not _is_dir(folder):
            continue
        limit = read(folder)
        if limit is not None:
            limits.append(limit)
    return limits


def _v2_limit(folder: Path) -> float | None:
    """`cpu.max`: "max 100000" (none) or "<quota> <period>", in microseconds."""
    fields = _read(folder / "cpu.max").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_limit(folder: Path) -> float | None:
    """`cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`."""
    quota = _read(folder / "cpu.cfs_quota_us").strip()
    if not quota or quota == "-1":
        return None
    return _ratio(quota, _read(folder / "cpu.cfs_period_us").strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
        if quota_us <= 0 or period_us <= 0:
            return None
        return quota_us / period_us
    except (ValueError, OverflowError):
        return None


def _is_dir(folder: Path) -> bool:
    try:
        return folder.is_dir()
    except OSError:  # (is_dir itself lets a permission error through)
        return False


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return ""
