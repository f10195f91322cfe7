"""Policy engine micro-benchmark: `python -m benchmarks.policy`.

Measures, in one run and side by side:
  * decide (no trace) median with 10,000 rules over 1,000 hosts,
  * the same request against a 10-rule policy (the baseline), and their ratio,
  * loading (parse + validate + compile) a 10,000-rule policy file.
Targets (issue 3): median ≤ 10 µs, ratio ≤ 2, load ≤ 1 s.
"""

from __future__ import annotations

import ipaddress
import statistics
import tempfile
import time
from pathlib import Path

from policies import Principal, RequestContext, decide_fast, load_policy_set
from policies.compiler import build_policy_set
from policies.loader import parse_document
from policies.source import parse_yaml

RULES_PER_HOST = 10


def policy_text(hosts: int) -> str:
    """`hosts` x 10 rules; each host gets the same shape of rules (assets, admin, api, …)."""
    lines = [
        "version: 1",
        "default: deny",
        "networks:",
        "  office: [10.0.0.0/8, 2001:db8::/32]",
        "roles:",
        "  viewer: {permissions: [wiki.read]}",
        "  editor: {inherits: [viewer], permissions: [wiki.write]}",
        "  ad: {inherits: [editor], permissions: ['*']}",
        "rules:",
    ]
    for h in range(hosts):
        host = f"app{h}.example.com"
        shapes = [
            ("bypass", '["/static/**", /favicon.ico]', ""),
            ("two_factor", '["/admin/**"]', "    networks: [office]\n    subjects: {roles: [ad]}"),
            ("deny", '["/internal/**"]', ""),
            ("one_factor", '["/api/v1/*/items"]', "    methods: [POST, PUT]"),
            ("bypass", '["/health", /ready]', ""),
            ("two_factor", '["/billing/**"]', "    countries: [GB, DE]\n    fresh: 15m"),
            ("deny", '["re:/debug/.*"]', ""),
            ("one_factor", '["/reports/**"]', "    subjects: {permissions: [wiki.read]}"),
            ("deny", '["/.git/**"]', ""),
            ("one_factor", '["/**"]', ""),
        ]
        for i, (action, paths, extra) in enumerate(shapes):
            lines.append(f"  - name: r{h}-{i}\n    hosts: [{host}]\n    paths: {paths}")
            if extra:
                lines.append(extra)
            lines.append(f"    action: {action}")
    return "\n".join(lines) + "\n"


def write(folder: Path, hosts: int) -> Path:
    path = folder / f"policy-{hosts}.yaml"
    path.write_text(policy_text(hosts), encoding="utf-8")
    return path


def median_decide_us(policy_path: Path, host: str, rounds: int = 20_000) -> float:
    policy = load_policy_set([policy_path])
    principal = Principal("alice", frozenset({"staff"}), frozenset({"editor"}), ("pwd",), 1000.0)
    # The last rule of the host decides: every one of its 10 rules is tried.
    ctx = RequestContext(
        host, "/docs/page", "GET", ipaddress.ip_address("10.1.2.3"), "GB", principal, 1100.0
    )
    assert decide_fast(policy, ctx).rule is not None
    samples = []
    for _ in range(rounds // 100):
        start = time.perf_counter_ns()
        for _ in range(100):
            decide_fast(policy, ctx)
        samples.append((time.perf_counter_ns() - start) / 100 / 1000)
    return statistics.median(samples)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        big = write(Path(tmp), 1000)
        small = write(Path(tmp), 1)
        loads = []
        for _ in range(3):
            start = time.perf_counter()
            load_policy_set([big])
            loads.append(time.perf_counter() - start)
        load_s = statistics.median(loads)
        # Where the load time goes: YAML parsing (policies/source.py) vs validate + compile.
        start = time.perf_counter()
        data = parse_yaml(big.read_text(encoding="utf-8"), str(big))
        yaml_s = time.perf_counter() - start
        start = time.perf_counter()
        document, _ = parse_document(data, str(big))
        build_policy_set([document])
        compile_s = time.perf_counter() - start
        big_us = median_decide_us(big, "app500.example.com")
        small_us = median_decide_us(small, "app0.example.com")
    print(f"decide, 10,000 rules / 1,000 hosts: median {big_us:.2f} µs   (target ≤ 10 µs)")
    print(f"decide, 10 rules (baseline):        median {small_us:.2f} µs")
    print(f"ratio:                              {big_us / small_us:.2f}x     (target ≤ 2x)")
    print(f"load 10,000 rules:                  {load_s * 1000:.0f} ms   (target ≤ 1000 ms)")
    print(f"  of which YAML parsing:            {yaml_s * 1000:.0f} ms")
    print(f"  of which validate + compile:      {compile_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
