"""A read-only YAML users file, for tiny setups that want no user database.

```yaml
users:
  alice:
    password: $argon2id$v=19$m=19456,t=2,p=1$…   # from `authgate user hash-password`
    email: alice@example.com
    name: Alice Example
    groups: [staff, wiki]
    roles: [editor]
    disabled: false
```

Its users sit in front of the database's for the tenant that names the file: a
username found in the file is that user, whatever the database holds. Ids are
derived from tenant and username, so sessions survive a restart. Nothing is ever
written to the file (a password rehash is skipped for these users).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from gateway.config.model import TenantConfig
from gateway.errors import ConfigError
from gateway.stores import NotFound, Stores, User, UserStore, normalize_username
from policies.source import Problem, SourceError, line_of, load_yaml_file

_KEYS = ("password", "email", "name", "groups", "roles", "disabled")
FILE_ID_PREFIX = "file:"


def file_user_id(tenant: str, username: str) -> str:
    return f"{FILE_ID_PREFIX}{tenant}:{normalize_username(username)}"


def load_users_file(path: Path, tenant: str) -> dict[str, User]:
    """The file's users by normalised username; ConfigError names file, line and key."""
    try:
        data = load_yaml_file(path)
    except SourceError as exc:
        raise ConfigError(exc.problems) from None
    problems: list[Problem] = []
    users: dict[str, User] = {}
    entries = data.get("users") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError([Problem(str(path), line_of(data), "users", "expected a mapping")])
    for username, entry in entries.items():
        key = f"users.{username}"
        if not isinstance(username, str) or not isinstance(entry, dict):
            problems.append(
                Problem(str(path), line_of(entries, username), key, "expected a mapping")
            )
            continue
        problems.extend(
            Problem(str(path), line_of(entry, k), f"{key}.{k}", "unknown key")
            for k in entry
            if k not in _KEYS
        )
        user = _user(path, tenant, username, entry, problems)
        if user is not None:
            users[normalize_username(username)] = user
    if problems:
        raise ConfigError(problems)
    return users


def _user(
    path: Path, tenant: str, username: str, entry: dict[str, Any], problems: list[Problem]
) -> User | None:
    def text(name: str) -> str | None:
        value = entry.get(name)
        if value is None or isinstance(value, str):
            return value
        problems.append(
            Problem(str(path), line_of(entry, name), f"users.{username}.{name}", "expected text")
        )
        return None

    def names(name: str) -> tuple[str, ...]:
        value = entry.get(name, [])
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        problems.append(
            Problem(str(path), line_of(entry, name), f"users.{username}.{name}", "expected a list")
        )
        return ()

    password = text("password")
    if password is not None and not password.startswith("$argon2"):
        problems.append(
            Problem(
                str(path),
                line_of(entry, "password"),
                f"users.{username}.password",
                "expected an argon2 hash (never a plain password)",
            )
        )
        return None
    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        problems.append(
            Problem(
                str(path),
                line_of(entry, "disabled"),
                f"users.{username}.disabled",
                "expected true or false",
            )
        )
    return User(
        id=file_user_id(tenant, username),
        tenant=tenant,
        username=username,
        email=text("email"),
        display_name=text("name"),
        groups=names("groups"),
        roles=names("roles"),
        disabled=bool(disabled),
        password_hash=password,
        created=0.0,
        updated=0.0,
    )


def load_users_files(tenants: tuple[TenantConfig, ...]) -> dict[str, dict[str, User]]:
    """Every tenant's users file, by tenant id; ConfigError lists the problems of all."""
    problems: list[Problem] = []
    files: dict[str, dict[str, User]] = {}
    for tenant in tenants:
        if tenant.users_file is None:
            continue
        try:
            files[tenant.id] = load_users_file(tenant.users_file, tenant.id)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return files


def is_file_user(user: User) -> bool:
    """A user defined in a users file: read-only here (edit the file)."""
    return user.id.startswith(FILE_ID_PREFIX)


def with_users_files(stores: Stores, tenants: tuple[TenantConfig, ...]) -> Stores:
    """The stores with the tenants' users files in front of the database's users (as
    they are unless a tenant has a users file); ConfigError when a file is bad."""
    files = load_users_files(tenants)
    if not files:
        return stores
    return dataclasses.replace(stores, users=LayeredUserStore(stores.users, files))


class LayeredUserStore:
    """File users (per tenant) in front of the database's UserStore."""

    def __init__(self, database: UserStore, files: dict[str, dict[str, User]]) -> None:
        self.database = database
        self.files = files
        self._by_id = {u.id: u for users in files.values() for u in users.values()}

    def replace(self, files: dict[str, dict[str, User]]) -> list[User]:
        """Swap in the files as read again; returns the users who changed or are gone
        (as they were), whose cached sessions and keys must be dropped everywhere."""
        by_id = {u.id: u for users in files.values() for u in users.values()}
        changed = [u for uid, u in self._by_id.items() if by_id.get(uid) != u]
        self.files, self._by_id = files, by_id
        return changed

    async def create(self, user: User) -> None:
        if normalize_username(user.username) in self.files.get(user.tenant, {}):
            from gateway.stores import AlreadyExists

            raise AlreadyExists(f"{user.username} is defined in the tenant's users file")
        await self.database.create(user)

    async def get(self, user_id: str) -> User | None:
        if user_id.startswith(FILE_ID_PREFIX):
            return self._by_id.get(user_id)
        return await self.database.get(user_id)

    async def get_by_username(self, tenant: str, username: str) -> User | None:
        found = self.files.get(tenant, {}).get(normalize_username(username))
        if found is not None:
            return found
        return await self.database.get_by_username(tenant, username)

    async def list(self, tenant: str) -> list[User]:
        from_file = list(self.files.get(tenant, {}).values())
        known = {normalize_username(u.username) for u in from_file}
        rest = [
            u
            for u in await self.database.list(tenant)
            if normalize_username(u.username) not in known
        ]
        return sorted(from_file + rest, key=lambda u: normalize_username(u.username))

    async def set_password(self, user_id: str, password_hash: str, updated: float) -> bool:
        if user_id.startswith(FILE_ID_PREFIX):
            raise NotFound("users from a users file are read-only; edit the file")
        return await self.database.set_password(user_id, password_hash, updated)

    async def update(self, user: User) -> None:
        if is_file_user(user):
            raise NotFound("users from a users file are read-only; edit the file")
        await self.database.update(user)
