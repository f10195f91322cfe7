"""Database tenants: validated like config tenants, one owner per host, and a live
directory that swaps whole indexes (config + database) without a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config.model import Config, RouteConfig, TenantConfig
from gateway.policy_sets import PolicyRegistry
from gateway.stores import open_database
from gateway.stores.database import Database
from gateway.tenant_store import (
    InvalidTenant,
    Setting,
    StoredTenant,
    TenantConflict,
    TenantDirectory,
    TenantRefresher,
    TenantStore,
    UnknownTenant,
)
from policies import Action, RequestContext

CONFIG_TENANT = TenantConfig(id="acme", name="Acme", domains=("acme.test", "*.acme.test"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    config = Config(
        source=tmp_path / "config.yaml",
        tenants=(CONFIG_TENANT,),
        storage=f"sqlite:///{tmp_path / 'authgate.db'}",
    )
    database = await open_database(config)
    yield database
    await database.close()


@pytest.fixture
def store(db: Database) -> TenantStore:
    return TenantStore(db, (CONFIG_TENANT,), clock=Clock())


async def test_an_added_tenant_is_listed_with_its_domains_in_order(store: TenantStore) -> None:
    await store.add("globex", "Globex", ["globex.test", "*.globex.test"])
    await store.add_domain("globex", "globex-wiki.test")
    [entry] = await store.list()
    assert entry.config is not None
    assert entry.config.name == "Globex"
    assert entry.config.domains == ("globex.test", "*.globex.test", "globex-wiki.test")


async def test_a_host_of_a_config_tenant_cannot_be_added_and_both_are_named(
    store: TenantStore,
) -> None:
    with pytest.raises(TenantConflict) as caught:
        await store.add("globex", "Globex", ["acme.test"])
    assert 'acme.test belongs to both tenant "acme" (config) and tenant "globex"' in str(
        caught.value
    )
    with pytest.raises(TenantConflict, match='tenant id "acme"'):
        await store.add("acme", "Acme again", ["other.test"])
    assert await store.list() == []


async def test_a_host_of_another_database_tenant_cannot_be_added(store: TenantStore) -> None:
    await store.add("globex", "Globex", ["globex.test"])
    await store.add("initech", "Initech", ["initech.test"])
    with pytest.raises(TenantConflict) as caught:
        await store.add_domain("initech", "globex.test")
    assert 'globex.test belongs to both tenant "globex" (database) and tenant "initech"' in str(
        caught.value
    )
    with pytest.raises(TenantConflict, match='tenant "globex"'):
        await store.add("hooli", "Hooli", ["globex.test"])
    stored = {t.id: t.config for t in await store.list()}
    assert stored["initech"] is not None and stored["initech"].domains == ("initech.test",)


async def test_edits_are_checked_by_the_config_rules(store: TenantStore, tmp_path: Path) -> None:
    await store.add("globex", "Globex", ["globex.test"])
    with pytest.raises(InvalidTenant, match="primary_color"):
        await store.configure("globex", [Setting("primary_color", "red")], section="branding")
    with pytest.raises(InvalidTenant, match="not covered by this tenant's domains"):
        await store.add_route("globex", RouteConfig(host="evil.test", upstream="http://x:1"))
    with pytest.raises(InvalidTenant, match="domains"):
        await store.remove_domain("globex", "globex.test")  # the last one
    with pytest.raises(InvalidTenant, match="file not found"):
        await store.configure(
            "globex", [Setting("logo", str(tmp_path / "missing.svg"))], section="branding"
        )
    with pytest.raises(UnknownTenant):
        await store.add_domain("nobody", "nobody.test")


async def test_branding_switches_and_routes_round_trip(store: TenantStore, tmp_path: Path) -> None:
    logo = tmp_path / "logo.svg"
    logo.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ndefault: one_factor\n")
    await store.add("globex", "Globex", ["globex.test", "globex-wiki.test"])
    await store.configure(
        "globex",
        [
            Setting("primary_color", "#00AA55"),
            Setting("logo", str(logo)),
            Setting("footer_links", (("Privacy", "https://globex.test/privacy"),)),
        ],
        section="branding",
    )
    await store.configure(
        "globex",
        [
            Setting("login_methods", ("password",)),
            Setting("signup", True),
            Setting("login_host", "globex.test"),
            Setting("policies", (str(policy),)),
        ],
    )
    tenant = await store.add_route(
        "globex", RouteConfig(host="globex-wiki.test", upstream="http://127.0.0.1:9000")
    )
    assert tenant.branding.primary_color == "#00AA55"
    assert tenant.branding.logo == str(logo)
    assert tenant.branding.footer_links[0].label == "Privacy"
    assert (tenant.login_methods, tenant.signup, tenant.login_host) == (
        ("password",),
        True,
        "globex.test",
    )
    assert tenant.policies == (policy,)
    assert [r.upstream for r in tenant.routes] == ["http://127.0.0.1:9000"]
    stored = await store.get("globex")
    assert stored is not None and stored.config == tenant
    tenant = await store.remove_route("globex", "globex-wiki.test")
    assert tenant.routes == ()


async def test_removing_a_tenant_frees_its_domains(store: TenantStore) -> None:
    await store.add("globex", "Globex", ["globex.test"])
    assert await store.remove("globex")
    assert not await store.remove("globex")
    await store.add("initech", "Initech", ["globex.test"])


async def test_the_revision_moves_with_every_edit(store: TenantStore) -> None:
    first = await store.revision()
    await store.add("globex", "Globex", ["globex.test"])
    second = await store.revision()
    await store.add_domain("globex", "www.globex.test")
    third = await store.revision()
    await store.add("initech", "Initech", ["initech.test"])
    fourth = await store.revision()
    await store.remove("globex")
    assert len({first, second, third, fourth, await store.revision()}) == 5


def directory() -> TenantDirectory:
    return TenantDirectory((CONFIG_TENANT,), PolicyRegistry((CONFIG_TENANT,)))


def context(host: str) -> RequestContext:
    return RequestContext(
        host=host, path="/", method="GET", ip=None, country=None, principal=None, now=0.0
    )


def test_the_directory_serves_database_tenants_after_a_swap(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ndefault: bypass\n")
    live = directory()
    assert live.tenant_for_host("globex.test") is None
    globex = TenantConfig(id="globex", name="Globex", domains=("globex.test",), policies=(policy,))
    old_index = live.index
    assert live.replace([StoredTenant("globex", globex)]) == []
    assert live.index is not old_index  # a new index, never a mutated one
    assert live.tenant_for_host("globex.test") == globex
    assert live.decide("globex", context("globex.test")).action is Action.ALLOW
    # A config tenant without policies denies; so does a database tenant without any.
    assert live.decide("acme", context("acme.test")).action is Action.DENY
    bare = TenantConfig(id="initech", name="Initech", domains=("initech.test",))
    live.replace([StoredTenant("initech", bare)])
    assert live.tenant_for_host("globex.test") is None
    assert live.decide("initech", context("initech.test")).action is Action.DENY


def test_an_edited_policy_file_of_a_database_tenant_is_compiled_anew(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ndefault: bypass\n")
    live = directory()
    globex = TenantConfig(id="globex", name="Globex", domains=("globex.test",), policies=(policy,))
    live.replace([StoredTenant("globex", globex)])
    assert live.decide("globex", context("globex.test")).action is Action.ALLOW
    policy.write_text("version: 1\ndefault: deny\n# edited\n")
    live.replace([StoredTenant("globex", globex)])  # the periodic refresh
    assert live.decide("globex", context("globex.test")).action is Action.DENY


def test_a_database_tenant_that_clashes_with_the_config_is_left_out_and_named() -> None:
    live = directory()
    clash = TenantConfig(id="evil", name="Evil", domains=("evil.test", "acme.test"))
    problems = live.replace([StoredTenant("evil", clash)])
    assert problems == [
        'acme.test belongs to both tenant "acme" (config) and tenant "evil" (database)'
    ]
    assert live.tenant_for_host("evil.test") is None
    assert live.tenant_for_host("acme.test") == CONFIG_TENANT


async def test_the_refresher_picks_up_a_domain_added_to_the_database(store: TenantStore) -> None:
    live = directory()
    refresher = TenantRefresher(live, store)
    await refresher.refresh(force=True)
    await store.add("globex", "Globex", ["globex.test"])
    assert await refresher.refresh()
    tenant = live.tenant_for_host("globex.test")
    assert tenant is not None and tenant.id == "globex"
    assert not await refresher.refresh()  # nothing changed: no reload
    await store.add_domain("globex", "globex-wiki.test")
    assert await refresher.refresh()
    assert live.tenant_for_host("globex-wiki.test") is not None


async def test_the_refresher_recompiles_a_database_tenant_whose_policy_file_was_edited(
    store: TenantStore, tmp_path: Path
) -> None:
    # Nothing in the tenants table moves: only the file. The edit must still apply.
    policy = tmp_path / "globex.yaml"
    policy.write_text("version: 1\ndefault: bypass\n")
    await store.add("globex", "Globex", ["globex.test"])
    await store.configure("globex", [Setting("policies", (str(policy),))])
    live = directory()
    refresher = TenantRefresher(live, store)
    await refresher.refresh(force=True)
    assert live.decide("globex", context("globex.test")).action is Action.ALLOW
    policy.write_text("version: 1\ndefault: deny\n# tightened\n")
    assert await refresher.refresh()
    assert live.decide("globex", context("globex.test")).action is Action.DENY
    assert not await refresher.refresh()  # and no reload when nothing moved


async def test_an_edit_from_a_host_whose_clock_is_behind_still_moves_the_revision(
    db: Database,
) -> None:
    ahead = TenantStore(db, (CONFIG_TENANT,), clock=lambda: 2_000_000.0)
    behind = TenantStore(db, (CONFIG_TENANT,), clock=lambda: 1_000_000.0)
    await behind.add("globex", "Globex", ["globex.test", "old.globex.test"])
    await ahead.add("initech", "Initech", ["initech.test"])  # the newest `updated`
    live = directory()
    refresher = TenantRefresher(live, behind)
    await refresher.refresh(force=True)
    assert live.tenant_for_host("old.globex.test") is not None
    await behind.remove_domain("globex", "old.globex.test")
    assert await refresher.refresh(), "an edit with an older clock left the revision as it was"
    assert live.tenant_for_host("old.globex.test") is None
