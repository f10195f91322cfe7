"""UserStore contract, on every SQL backend."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.stores.base import AlreadyExists, NotFound, User, new_id
from gateway.stores.sql import SqlUserStore


def user(username: str = "Alice", tenant: str = "acme", **fields: object) -> User:
    base = User(
        id=new_id(),
        tenant=tenant,
        username=username,
        email=f"{username.lower()}@example.com",
        display_name=f"{username} Liddell",
        groups=("staff", "wiki"),
        roles=("editor",),
        disabled=False,
        password_hash="$argon2id$v=19$fake",
        created=1000.0,
        updated=1000.0,
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


async def test_a_created_user_reads_back_equal(users: SqlUserStore) -> None:
    alice = user()
    await users.create(alice)
    assert await users.get(alice.id) == alice
    assert await users.get_by_username("acme", "Alice") == alice


async def test_username_lookup_ignores_case(users: SqlUserStore) -> None:
    alice = user("Alice")
    await users.create(alice)
    assert await users.get_by_username("acme", "ALICE") == alice
    assert await users.get_by_username("acme", " alice ") == alice


async def test_usernames_are_unique_per_tenant_case_insensitively(users: SqlUserStore) -> None:
    await users.create(user("Alice"))
    with pytest.raises(AlreadyExists):
        await users.create(user("alice"))
    await users.create(user("alice", tenant="globex"))  # another tenant: fine


async def test_users_are_tenant_scoped(users: SqlUserStore) -> None:
    await users.create(user("alice"))
    await users.create(user("bob"))
    await users.create(user("carol", tenant="globex"))
    assert [u.username for u in await users.list("acme")] == ["alice", "bob"]
    assert await users.get_by_username("globex", "alice") is None


async def test_update_writes_the_mutable_fields(users: SqlUserStore) -> None:
    alice = user()
    await users.create(alice)
    changed = dataclasses.replace(
        alice,
        disabled=True,
        password_hash="$argon2id$new",
        groups=("admins",),
        roles=(),
        email=None,
        updated=2000.0,
    )
    await users.update(changed)
    assert await users.get(alice.id) == changed


async def test_updating_an_unknown_user_raises_not_found(users: SqlUserStore) -> None:
    with pytest.raises(NotFound):
        await users.update(user())


async def test_unknown_user_is_none(users: SqlUserStore) -> None:
    assert await users.get(new_id()) is None
    assert await users.get_by_username("acme", "nobody") is None


async def test_set_password_writes_the_hash_alone_and_never_revives_a_disabled_user(
    users: SqlUserStore,
) -> None:
    # A password change holds a copy of the user read earlier; a disable made meanwhile
    # (another instance, the CLI) must survive it.
    alice = user()
    await users.create(alice)
    assert await users.set_password(alice.id, "$argon2id$v=19$new", 2000.0)
    stored = await users.get(alice.id)
    assert stored == dataclasses.replace(alice, password_hash="$argon2id$v=19$new", updated=2000.0)
    await users.update(dataclasses.replace(stored, disabled=True, groups=()))
    assert not await users.set_password(alice.id, "$argon2id$v=19$newer", 3000.0)
    after = await users.get(alice.id)
    assert after is not None and after.disabled and after.groups == ()
    assert after.password_hash == "$argon2id$v=19$new"
    assert not await users.set_password(new_id(), "$argon2id$v=19$x", 3000.0)  # no such user
