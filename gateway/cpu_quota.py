"""How many CPUs the process's cgroups let it use: the default worker count fits a
container whose CPU limit is smaller than the machine.

Why: `server.workers: auto` counted the CPUs the process may run on. In a container
limited by a quota (Kubernetes `limits.cpu: 2`, `docker run --cpus 2`) on a 32-CPU host,
that is 32 workers sharing two CPUs' worth of time. Each costs its memory (about 75 MB),
and together they run into the quota and are throttled for whole periods (100 ms by
default), which is the tail latency the gateway is built to avoid. As Go's
`automaxprocs` does, the count is the quota rounded down, and at least one.

Read from the cgroup file system (v2 `cpu.max`, v1 `cpu.cfs_quota_us` and
`cpu.cfs_period_us`), at the process's own cgroup and each one above it up to the
mount's root: the smallest limit along the way holds. In a container the mount's root
is usually the container's own cgroup, and the path `/proc/self/cgroup` names may not
exist under it; the root is read all the same. Anything unreadable or malformed counts
as no limit: this sets a default and must never stop a start.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path, PurePosixPath

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_cpus(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> float | None:
    """CPU time a second the process's cgroups allow it (1.5: one and a half CPUs), or
    None when nothing limits it or it cannot be told."""
    try:
        lines = proc_cgroup.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    limits: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            limits += _along(root, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            mount = root / controllers
            if not _is_dir(mount):
                mount = root / "cpu"
            limits += _along(mount, path, _v1_limit)
    return min(limits, default=None)


def workers_for(cpus: int, quota: float | None) -> int:
    """Workers for `cpus` CPUs to run on under `quota` (CPU time a second): one per CPU,
    no more than the quota rounded down, at least one."""
    if quota is None:
        return max(1, cpus)
    return max(1, min(cpus, math.floor(quota)))


def _along(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The limits in the cgroup at `path` under `mount` and each one above it."""
    limits = []
    # (Anchored here: a path that does not start with "/" is read from the mount too.)
    relative = PurePosixPath("/" + path.strip().lstrip("/")).relative_to("/")
    for step in (relative, *relative.parents):
        folder = mount / step
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
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


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
