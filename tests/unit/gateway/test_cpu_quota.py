"""The CPU quota the default worker count keeps within (gateway/cpu_quota.py), read
from cgroup file trees laid out as the kernel lays them out (v2 and v1), including
the malformed and the missing. (A real cgroup: tests/integration/test_serve.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cpu_quota import quota_cpus, workers_for


def tree(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    """/proc/self/cgroup saying `proc_cgroup`, and a cgroup mount holding `files`."""
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_cgroup)
    root = tmp_path / "sys-fs-cgroup"
    root.mkdir()
    for name, text in files.items():
        file = root / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    return proc, root


@pytest.mark.parametrize(
    ("proc_cgroup", "files", "expected"),
    [
        # cgroup v2, in a container with its own cgroup namespace: the mount's root
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        ("0::/\n", {}, None),
        # v2 on a host: the smallest limit along the path holds
        (
            "0::/kubepods/pod1/ctr\n",
            {
                "kubepods/cpu.max": "max 100000",
                "kubepods/pod1/cpu.max": "200000 100000",
                "kubepods/pod1/ctr/cpu.max": "400000 100000",
            },
            2.0,
        ),
        (
            "0::/kubepods/pod1/ctr\n",
            {"kubepods/pod1/ctr/cpu.max": "50000 100000", "cpu.max": "max 100000"},
            0.5,
        ),
        # v2, a path the mount does not have (no cgroup namespace): its root is read
        ("0::/docker/abc\n", {"cpu.max": "300000 100000"}, 3.0),
        # cgroup v1: cpu with cpuacct, and cpu alone
        (
            "12:memory:/x\n4:cpu,cpuacct:/docker/abc\n3:cpuset:/\n",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            0.5,
        ),
        (
            "1:cpu:/job\n2:cpuacct:/job\n",
            {"cpu/job/cpu.cfs_quota_us": "250000", "cpu/job/cpu.cfs_period_us": "100000"},
            2.5,
        ),
        (
            "1:cpu:/\n",
            {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
            None,
        ),
        # v1 mounted as "cpu" while /proc names "cpu,cpuacct" (a symlink not made here)
        (
            "4:cpu,cpuacct:/\n",
            {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"},
            1.0,
        ),
        # a hybrid host: v1's cpu controller and v2's unified tree, both limiting
        (
            "1:cpu:/a\n0::/a\n",
            {
                "cpu/a/cpu.cfs_quota_us": "300000",
                "cpu/a/cpu.cfs_period_us": "100000",
                "a/cpu.max": "200000 100000",
            },
            2.0,
        ),
    ],
)
def test_the_quota_is_read_as_the_kernel_writes_it(
    tmp_path: Path, proc_cgroup: str, files: dict[str, str], expected: float | None
) -> None:
    proc, root = tree(tmp_path, proc_cgroup, files)
    assert quota_cpus(proc, root) == expected


@pytest.mark.parametrize(
    "cpu_max",
    ["", "garbage", "100000", "abc 100000", "0 100000", "-5 100000", "100000 0", "1 2 3"],
)
def test_a_malformed_limit_counts_as_none(tmp_path: Path, cpu_max: str) -> None:
    proc, root = tree(tmp_path, "0::/\n", {"cpu.max": cpu_max})
    assert quota_cpus(proc, root) is None


def test_what_cannot_be_read_counts_as_no_limit(tmp_path: Path) -> None:
    assert quota_cpus(tmp_path / "missing", tmp_path) is None
    proc, root = tree(tmp_path, "", {})
    proc.write_bytes(b"\xff\xfe0::/\n")
    assert quota_cpus(proc, root) is None
    proc.write_text("nonsense\n::\n0::\n")
    assert quota_cpus(proc, root) is None
    (root / "cpu.max").write_bytes(b"\xff 100000")
    proc.write_text("0::/\n")
    assert quota_cpus(proc, root) is None


def test_a_path_without_its_leading_slash_is_read_from_the_mount(tmp_path: Path) -> None:
    proc, root = tree(tmp_path, "0::job\n", {"job/cpu.max": "200000 100000"})
    assert quota_cpus(proc, root) == 2.0
    proc.write_text("1:cpu:job\n")
    assert quota_cpus(proc, root) is None  # no v1 files here, and nothing raised


def test_a_folder_that_cannot_be_looked_into_counts_as_no_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Path.is_dir` lets a permission error through (a folder of another user's; as
    root, which these tests may run as, nothing is refused, so the refusal is made)."""
    proc, root = tree(tmp_path, "0::/locked/job\n", {"locked/job/cpu.max": "50000 100000"})
    looked_into = Path.is_dir

    def refused_under_locked(folder: Path) -> bool:
        if "locked" in folder.parts:
            raise PermissionError(13, "Permission denied", str(folder))
        return looked_into(folder)

    monkeypatch.setattr(Path, "is_dir", refused_under_locked)
    assert quota_cpus(proc, root) is None


def test_a_path_that_climbs_out_of_the_mount_is_not_followed(tmp_path: Path) -> None:
    proc, root = tree(tmp_path, "0::/../outside\n", {"cpu.max": "max 100000"})
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "cpu.max").write_text("50000 100000")
    assert quota_cpus(proc, root) is None


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
