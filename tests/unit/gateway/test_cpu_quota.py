"""The CPU quota the default worker count keeps within (gateway/cpu_quota.py), read
from /proc files and cgroup trees laid out as the kernel lays them out (v2, v1, hybrid,
containers with and without a cgroup namespace), including the malformed and the
missing. (A real cgroup: tests/integration/test_serve.py.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cpu_quota import quota_cpus, workers_for


@dataclass(frozen=True)
class Mount:
    """One cgroup mount: where (under the test's folder), which cgroup is its root."""

    point: str
    fstype: str = "cgroup2"
    root: str = "/"
    options: str = "rw"


def system(
    tmp_path: Path, mounts: list[Mount], cgroup: str, files: dict[str, str]
) -> tuple[Path, Path]:
    """/proc/self/mountinfo naming `mounts`, /proc/self/cgroup saying `cgroup`, and the
    `files` (paths under the test's folder)."""
    lines = [f"21 1 0:19 / {tmp_path}/proc rw,relatime shared:2 - proc proc rw"]
    for number, mount in enumerate(mounts):
        point = str(tmp_path / mount.point).replace(" ", "\\040")
        lines.append(
            f"{30 + number} 23 0:{28 + number} {mount.root} {point} rw,nosuid shared:9"
            f" - {mount.fstype} {mount.fstype} {mount.options}"
        )
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("\n".join(lines) + "\n")
    proc_cgroup = tmp_path / "cgroup"
    proc_cgroup.write_text(cgroup)
    for mount in mounts:
        (tmp_path / mount.point).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        file = tmp_path / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    return mountinfo, proc_cgroup


V2 = [Mount("sys/fs/cgroup")]
V1 = [
    Mount("sys/fs/cgroup/cpu,cpuacct", "cgroup", options="rw,cpu,cpuacct"),
    Mount("sys/fs/cgroup/memory", "cgroup", options="rw,memory"),
    Mount("sys/fs/cgroup/systemd", "cgroup", options="rw,xattr,name=systemd"),
]


@pytest.mark.parametrize(
    ("mounts", "cgroup", "files", "expected"),
    [
        # cgroup v2, in a container with its own cgroup namespace: the mount's root
        (V2, "0::/\n", {"sys/fs/cgroup/cpu.max": "150000 100000\n"}, 1.5),
        (V2, "0::/\n", {"sys/fs/cgroup/cpu.max": "max 100000\n"}, None),
        (V2, "0::/\n", {}, None),
        # v2 on a host: the smallest limit along the path holds
        (
            V2,
            "0::/kubepods/pod1/ctr\n",
            {
                "sys/fs/cgroup/kubepods/cpu.max": "max 100000",
                "sys/fs/cgroup/kubepods/pod1/cpu.max": "200000 100000",
                "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "400000 100000",
            },
            2.0,
        ),
        (
            V2,
            "0::/a/b\n",
            {"sys/fs/cgroup/a/b/cpu.max": "50000 100000", "sys/fs/cgroup/cpu.max": "max 1"},
            0.5,
        ),
        # v2 in a container without a cgroup namespace: /proc names the host's path,
        # the mount's root is the container's cgroup
        (
            [Mount("sys/fs/cgroup", root="/docker/abc")],
            "0::/docker/abc\n",
            {"sys/fs/cgroup/cpu.max": "300000 100000"},
            3.0,
        ),
        # ... and a cgroup below it: the leaf is read, then up to the mount's root
        (
            [Mount("sys/fs/cgroup", root="/docker/abc")],
            "0::/docker/abc/sub\n",
            {"sys/fs/cgroup/cpu.max": "300000 100000", "sys/fs/cgroup/sub/cpu.max": "1 1"},
            1.0,
        ),
        # ... a path not under the mount's root: the mount's root is all there is
        (
            [Mount("sys/fs/cgroup", root="/docker/abc")],
            "0::/elsewhere\n",
            {"sys/fs/cgroup/cpu.max": "250000 100000"},
            2.5,
        ),
        # cgroup v1: cpu joined with cpuacct; the other hierarchies are not read
        (
            V1,
            "12:memory:/x\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
            {
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                "sys/fs/cgroup/memory/x/cpu.cfs_quota_us": "1",
            },
            0.5,
        ),
        # v1, cpu alone, mounted under any name, whatever its order in /proc
        (
            [Mount("cgroups/c", "cgroup", options="rw,cpu")],
            "2:cpuacct:/job\n1:cpu:/job\n",
            {
                "cgroups/c/job/cpu.cfs_quota_us": "250000",
                "cgroups/c/job/cpu.cfs_period_us": "100000",
            },
            2.5,
        ),
        (
            V1,
            "4:cpu,cpuacct:/\n",
            {
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
            },
            None,
        ),
        # a hybrid host: cpu on v1, systemd's unified tree beside it (no cpu there)
        (
            [*V1, Mount("sys/fs/cgroup/unified")],
            "4:cpu,cpuacct:/a\n0::/a\n",
            {
                "sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_quota_us": "300000",
                "sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_period_us": "100000",
                "sys/fs/cgroup/unified/a/cgroup.procs": "",
            },
            3.0,
        ),
        # a mount point with a space in its name (mountinfo writes it as \040)
        ([Mount("sys/fs/c group")], "0::/\n", {"sys/fs/c group/cpu.max": "200000 100000"}, 2.0),
        # no cgroup mount at all
        ([], "0::/\n", {}, None),
    ],
)
def test_the_quota_is_read_as_the_kernel_writes_it(
    tmp_path: Path, mounts: list[Mount], cgroup: str, files: dict[str, str], expected: float | None
) -> None:
    assert quota_cpus(*system(tmp_path, mounts, cgroup, files)) == expected


@pytest.mark.parametrize(
    "cpu_max",
    ["", "garbage", "100000", "abc 100000", "0 100000", "-5 100000", "100000 0", "1 2 3"],
)
def test_a_malformed_limit_counts_as_none(tmp_path: Path, cpu_max: str) -> None:
    files = {"sys/fs/cgroup/cpu.max": cpu_max}
    assert quota_cpus(*system(tmp_path, V2, "0::/\n", files)) is None


def test_a_quota_too_big_for_a_float_counts_as_none(tmp_path: Path) -> None:
    files = {"sys/fs/cgroup/cpu.max": "9" * 400 + " 1"}
    assert quota_cpus(*system(tmp_path, V2, "0::/\n", files)) is None


def test_what_cannot_be_read_counts_as_no_limit(tmp_path: Path) -> None:
    mountinfo, cgroup = system(tmp_path, V2, "0::/\n", {"sys/fs/cgroup/cpu.max": "1 1"})
    assert quota_cpus(mountinfo, cgroup) == 1.0, "premise"
    assert quota_cpus(tmp_path / "missing", cgroup) is None
    assert quota_cpus(mountinfo, tmp_path / "missing") is None
    cgroup.write_text("nonsense\n::\n")
    assert quota_cpus(mountinfo, cgroup) is None
    mountinfo.write_text("short line\n1 2 3 4 5 6 - \n")
    cgroup.write_text("0::/\n")
    assert quota_cpus(mountinfo, cgroup) is None
    other = tmp_path / "b"
    other.mkdir()
    found = system(other, V2, "0::/\n", {})
    (other / "sys/fs/cgroup/cpu.max").write_bytes(b"\xff 100000")
    assert quota_cpus(*found) is None


def test_a_cgroup_name_beyond_ascii_is_read(tmp_path: Path) -> None:
    files = {"sys/fs/cgroup/émoji/cpu.max": "200000 100000"}
    mountinfo, cgroup = system(tmp_path, V2, "0::/émoji\n", files)
    cgroup.write_bytes("0::/émoji\n".encode() + b"1:name=x:/\xff\n")
    assert quota_cpus(mountinfo, cgroup) == 2.0


def test_a_path_without_its_leading_slash_is_read_from_the_mount(tmp_path: Path) -> None:
    files = {"sys/fs/cgroup/job/cpu.max": "200000 100000"}
    assert quota_cpus(*system(tmp_path, V2, "0::job\n", files)) == 2.0


def test_a_folder_that_cannot_be_looked_into_counts_as_no_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Path.is_dir` lets a permission error through (a folder of another user's; as
    root, which these tests may run as, nothing is refused, so the refusal is made)."""
    files = {"sys/fs/cgroup/locked/job/cpu.max": "50000 100000"}
    found = system(tmp_path, V2, "0::/locked/job\n", files)
    looked_into = Path.is_dir

    def refused_under_locked(folder: Path) -> bool:
        if "locked" in folder.parts:
            raise PermissionError(13, "Permission denied", str(folder))
        return looked_into(folder)

    monkeypatch.setattr(Path, "is_dir", refused_under_locked)
    assert quota_cpus(*found) is None


def test_a_path_that_climbs_out_of_the_mount_is_not_followed(tmp_path: Path) -> None:
    files = {"sys/fs/cgroup/cpu.max": "max 100000", "sys/fs/outside/cpu.max": "50000 100000"}
    assert quota_cpus(*system(tmp_path, V2, "0::/../outside\n", files)) is None


@pytest.mark.parametrize(
    ("cpus", "quota", "workers"),
    [
        (32, None, 32),
        (32, 2.0, 2),
        (32, 1.5, 1),  # rounded down: a worker for half a CPU would be throttled
        (32, 0.25, 1),  # at least one
        (2, 8.0, 2),  # no more than the CPUs it may run on
        (0, None, 1),
    ],
)
def test_workers_keep_within_the_quota(cpus: int, quota: float | None, workers: int) -> None:
    assert workers_for(cpus, quota) == workers
