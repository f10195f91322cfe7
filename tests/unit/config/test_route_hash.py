"""A route's hash is made once (routes key dicts on every request): it must still be
the hash of every field, so that routes that differ in any field are different keys
and equal routes are one key."""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import fields, replace

from gateway.config.model import RouteConfig

BASE = RouteConfig(host="app.example.com", upstream="http://127.0.0.1:9000")
CHANGED = {
    "host": "other.example.com",
    "upstream": "http://127.0.0.1:9001",
    "path": "/api",
    "websockets": False,
    "preserve_host": True,
    "identity_headers": "none",
    "identity_header_map": (("email", "X-Mail"),),
    "connect_timeout": 1.0,
    "read_timeout": 2.0,
    "jwt": False,
}


def test_every_field_is_named_here() -> None:
    assert set(CHANGED) == {f.name for f in fields(RouteConfig)}


def test_a_route_changed_in_any_field_is_another_key() -> None:
    for name, value in CHANGED.items():
        changed = replace(BASE, **{name: value})
        keyed = {BASE: "before"}
        assert changed not in keyed, name
        assert hash(changed) != hash(BASE), name


def test_equal_routes_are_one_key() -> None:
    again = RouteConfig(host="app.example.com", upstream="http://127.0.0.1:9000")
    assert again == BASE and again is not BASE
    assert {BASE: 1}[again] == 1
    assert replace(replace(BASE, jwt=False), jwt=True) in {BASE: 1}


def test_a_route_unpickled_where_strings_hash_otherwise_is_found() -> None:
    hash(BASE)  # made here, with this process's seed
    check = (
        "import pickle, sys\n"
        "from gateway.config.model import RouteConfig\n"
        "route = pickle.loads(sys.stdin.buffer.read())\n"
        "fresh = RouteConfig(host='app.example.com', upstream='http://127.0.0.1:9000')\n"
        "assert {fresh: 1}.get(route) == 1 and hash(route) == hash(fresh)\n"
    )
    for seed in ("1", "2"):
        subprocess.run(
            [sys.executable, "-c", check],
            input=pickle.dumps(BASE),
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )
