"""The tenants table on SQLite and PostgreSQL: edits move the revision pollers compare,
whatever the editing host's clock says."""

from __future__ import annotations

import itertools

from gateway.config.model import TenantConfig
from gateway.stores.database import Database
from gateway.tenant_store import TenantStore

CONFIG_TENANT = TenantConfig(id="acme", name="Acme", domains=("acme.test",))


async def test_every_edit_moves_the_revision_even_from_a_clock_behind(database: Database) -> None:
    ahead = TenantStore(database, (CONFIG_TENANT,), clock=lambda: 2_000_000.0)
    behind = TenantStore(database, (CONFIG_TENANT,), clock=lambda: 1_000_000.0)
    seen = [await behind.revision()]
    await ahead.add("initech", "Initech", ["initech.test"])
    seen.append(await behind.revision())
    await behind.add("globex", "Globex", ["globex.test", "old.globex.test"])
    seen.append(await behind.revision())
    await behind.remove_domain("globex", "old.globex.test")
    seen.append(await behind.revision())
    await behind.add_domain("globex", "new.globex.test")
    seen.append(await behind.revision())
    assert len(set(seen)) == len(seen), seen
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(seen))
