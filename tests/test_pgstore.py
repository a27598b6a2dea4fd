"""`PipelinedAsyncPostgresStore` answers every batch exactly as `AsyncPostgresStore` does; a tenant's
search (both twins) finds what upstream finds, through the tenant index."""

from __future__ import annotations

import asyncio

import psycopg
from langgraph.store.base import GetOp, ListNamespacesOp, PutOp, SearchOp
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore

from memory.db import CONNECTION_KWARGS, aopen_pool, open_pool
from memory.pgstore import PipelinedAsyncPostgresStore, TenantSearchPostgresStore

TTL = {"refresh_on_read": True, "omit_expired": True}


def _reads(root: str) -> list:
    return [
        GetOp((root, "a"), "k1"),
        GetOp((root, "a"), "missing"),
        GetOp((root, "b"), "k1", refresh_ttl=False),
        GetOp((root, "a"), "k2"),
        SearchOp((root,), limit=10),
        SearchOp((root, "a"), filter={"n": 2}, limit=5),
        SearchOp(("nobody",), limit=10),
        ListNamespacesOp(match_conditions=None, max_depth=None, limit=100, offset=0),
        GetOp((root, "c", "d"), "k3"),
    ]


def _seed(root: str) -> list:
    return [
        PutOp((root, "a"), "k1", {"n": 1, "content": "one"}),
        PutOp((root, "a"), "k2", {"n": 2, "content": "two"}, ttl=60),
        PutOp((root, "b"), "k1", {"n": 3, "content": "three"}),
        PutOp((root, "c", "d"), "k3", {"n": 4, "content": "four"}),
    ]


def _plain(result):
    """Results without timestamps (and TTL refreshes), comparable across two stores and roots."""
    if isinstance(result, list):
        return [_plain(item) for item in result]
    if hasattr(result, "dict"):
        return {k: v for k, v in result.dict().items() if k not in ("created_at", "updated_at")}
    return result


def test_every_kind_of_read_and_a_write_in_one_batch_answer_as_upstream(database_url):
    async def scenario():
        async with await aopen_pool(database_url, 1, 4) as pool:
            upstream = AsyncPostgresStore(pool, ttl=TTL)
            pipelined = PipelinedAsyncPostgresStore(pool, ttl=TTL)
            for theirs, ours in zip(_seed("theirs"), _seed("ours"), strict=True):  # apart: a search's order is defined
                await upstream.abatch([theirs])
                await pipelined.abatch([ours])
            answers = {}
            for root, store in (("theirs", upstream), ("ours", pipelined)):
                # A get of a key written in the same batch sees the state before the batch, as upstream.
                batch = [*_reads(root), PutOp((root, "a"), "new", {"n": 5}), GetOp((root, "a"), "new")]
                answers[root] = await store.abatch(batch)
                assert await store.aget((root, "a"), "new") is not None
            return answers

    answers = asyncio.run(scenario())
    theirs, ours = answers["theirs"], answers["ours"]
    assert len(ours) == len(theirs) == 11
    namespaces_ours = [ns for ns in ours[7] if ns[0] == "ours"]
    namespaces_theirs = [ns for ns in theirs[7] if ns[0] == "theirs"]
    assert [ns[1:] for ns in namespaces_ours] == [ns[1:] for ns in namespaces_theirs] == [("a",), ("b",), ("c", "d")]
    for index, (mine, upstream) in enumerate(zip(ours, theirs, strict=True)):
        if index != 7:  # the same answers, but for the root label
            assert repr(_plain(mine)).replace("'ours'", "'root'") == repr(_plain(upstream)).replace("'theirs'", "'root'"), index
    assert ours[0].value == {"n": 1, "content": "one"} and ours[1] is None and ours[10] is None
    assert [item.key for item in ours[5]] == ["k2"] and ours[6] == []


# -- gets: a plain read, the TTL refresh only where a row has a TTL -------------------------------

EXPIRY = """
SELECT key, CASE WHEN expires_at IS NULL THEN 'none' WHEN expires_at <= now() THEN 'expired'
                 WHEN expires_at > now() + interval '50 minutes' THEN 'renewed' ELSE 'left' END AS expiry
FROM store WHERE prefix = %s ORDER BY key
"""
SHORTEN = """
UPDATE store SET expires_at = CASE WHEN key = 'gone' THEN now() - interval '1 second' ELSE now() + interval '1 minute' END
WHERE prefix = %s AND ttl_minutes IS NOT NULL
"""


def _refresh_batch(root: str) -> list:
    namespace = (root, "t")
    return [
        GetOp(namespace, "renew"),
        GetOp(namespace, "keep", refresh_ttl=False),
        GetOp(namespace, "forever"),
        GetOp(namespace, "gone"),
        GetOp(namespace, "renew"),  # twice in one batch
        SearchOp((root, "t"), refresh_ttl=False, limit=10),
        PutOp(namespace, "new", {"n": 9}, ttl=60),
    ]


def test_gets_refresh_ttls_as_upstream_alone_and_in_batches(database_url):
    """A get renews its row's TTL when asked and the row has one; it leaves the others, and never
    revives an expired row: after the same batch (and the same lone gets) every row's expiry is
    upstream's, on both twins, in pipeline mode and without."""
    seed = [("renew", 60), ("keep", 60), ("forever", None), ("gone", 60), ("alone", 60)]

    def prepare(conn, root: str, put) -> None:
        for key, ttl in seed:
            put(PutOp((root, "t"), key, {"key": key}, ttl=ttl))
        conn.execute(SHORTEN, (f"{root}.t",))

    def expiry(conn, root: str) -> dict[str, str]:
        return {row["key"]: row["expiry"] for row in conn.execute(EXPIRY, (f"{root}.t",))}

    with psycopg.connect(database_url, **CONNECTION_KWARGS) as conn:
        sides = {}
        with open_pool(database_url, 1, 2) as pool:
            for root, store in (("sync_theirs", PostgresStore(pool, ttl=TTL)), ("sync_ours", TenantSearchPostgresStore(pool, ttl=TTL))):
                prepare(conn, root, lambda op, store=store: store.batch([op]))
                answers = store.batch(_refresh_batch(root))
                alone = [store.get((root, "t"), "alone"), store.get((root, "t"), "gone")]
                sides[root] = ([_plain(a) for a in answers + alone], expiry(conn, root))

        async def async_sides() -> None:
            async with await aopen_pool(database_url, 1, 4) as apool:
                for root, store in (("async_theirs", AsyncPostgresStore(apool, ttl=TTL)),
                                    ("async_ours", PipelinedAsyncPostgresStore(apool, ttl=TTL))):
                    for key, ttl in seed:
                        await store.abatch([PutOp((root, "t"), key, {"key": key}, ttl=ttl)])
                    conn.execute(SHORTEN, (f"{root}.t",))
                    answers = await store.abatch(_refresh_batch(root))
                    alone = [await store.aget((root, "t"), "alone"), await store.aget((root, "t"), "gone")]
                    sides[root] = ([_plain(a) for a in answers + alone], expiry(conn, root))

        asyncio.run(async_sides())

    expected_expiry = {"renew": "renewed", "keep": "left", "forever": "none", "gone": "expired", "alone": "renewed", "new": "renewed"}
    for root, (answers, expiries) in sides.items():
        assert expiries == expected_expiry, root
        assert repr(answers).replace(f"'{root}'", "'root'") == repr(sides["sync_theirs"][0]).replace("'sync_theirs'", "'root'"), root
        assert [a["key"] if a else None for a in answers[:5] + answers[7:]] == ["renew", "keep", "forever", None, "renew", "alone", None]


NEIGHBOURS = [("a_b",), ("a_b", "x"), ("a_b", "x", "y"), ("aXb", "x"), ("a_bc", "x"), ("a%", "x"), ("b", "a_b"), ("a", "b")]
"""Namespaces around tenant `a_b`: LIKE metacharacters, a longer tenant, the tenant as a deeper label."""


def _found(items) -> list[tuple[tuple[str, ...], str]]:
    return [(item.namespace, item.key) for item in items]


def test_a_tenant_search_finds_what_upstream_finds_newest_first(database_url):
    async def asearch(tenant):
        async with await aopen_pool(database_url, 1, 2) as pool:
            return _found(await PipelinedAsyncPostgresStore(pool, ttl=TTL).asearch((tenant,), limit=100))

    with open_pool(database_url, 1, 2) as pool:
        upstream, ours = PostgresStore(pool, ttl=TTL), TenantSearchPostgresStore(pool, ttl=TTL)
        for n, namespace in enumerate(NEIGHBOURS * 2):  # written in turns: newest first interleaves them
            upstream.put(namespace, f"k{n}", {"n": n})
        for tenant in ("a_b", "aXb", "a%", "a", "b", "nobody"):
            expected = _found(upstream.search((tenant,), limit=100))
            assert _found(ours.search((tenant,), limit=100)) == expected, tenant
            assert asyncio.run(asearch(tenant)) == expected, tenant
        found = _found(ours.search(("a_b",), limit=100))
        assert {namespace for namespace, _ in found} == {("a_b",), ("a_b", "x"), ("a_b", "x", "y")}
        assert [key for _, key in found] == [f"k{n}" for n in (10, 9, 8, 2, 1, 0)]
        assert _found(ours.search(("a_b",), limit=2, offset=1)) == found[1:3]


def test_a_tenant_search_is_served_by_the_tenant_index(database_url):
    """The query a tenant's search sends and the migration's index agree (no sort of the tenant's items)."""
    with psycopg.connect(database_url, **CONNECTION_KWARGS) as conn:
        store = TenantSearchPostgresStore(conn, ttl=TTL)
        (query, params), = store._prepare_batch_search_queries([(0, SearchOp(("acme",), limit=10))])[0]
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            conn.execute(f"SET {setting} = off")
        plan = "\n".join(row["QUERY PLAN"] for row in conn.execute("EXPLAIN " + query, params))
    assert "memory_store_tenant_recent_idx" in plan, plan
    assert "Sort" not in plan, plan


def test_without_the_tenant_index_searches_stay_upstreams_until_setup_builds_it(database_url):
    """Code deployed before `memory db upgrade` (or an interrupted build) must not turn every tenant
    search into a read of the whole table: the tenant condition is used only once the index is there."""
    from memory import MemoryService, migrations, sql

    migrations.downgrade(database_url, "8d41f0c2b7e3")  # the schema before the index

    def tenant_condition(store) -> bool:
        (query, _), = store._prepare_batch_search_queries([(0, SearchOp(("acme",), limit=10))])[0]
        return sql.STORE_SEARCH_TENANT in query

    async def async_store_uses_it() -> bool:
        async with MemoryService.aopen(database_url=database_url, database_pool_max_size=2) as svc:
            return tenant_condition(svc.store)

    with MemoryService.open(database_url=database_url, database_pool_max_size=2) as svc:
        assert not tenant_condition(svc.store)
        assert not asyncio.run(async_store_uses_it())
        svc.store.put(("acme", "memories"), "/a.md", {"content": "a"})
        assert [item.key for item in svc.store.search(("acme",))] == ["/a.md"]
        svc.setup()
        assert tenant_condition(svc.store)
        assert [item.key for item in svc.store.search(("acme",))] == ["/a.md"]
    assert asyncio.run(async_store_uses_it())


# -- each caller's operations stay its own --------------------------------------------------------


def test_a_write_refused_for_one_tenant_fails_only_its_caller(database_url):
    """Upstream fails a shared batch as a whole: one tenant's put over its quota would roll back the
    other callers' writes and hand them that tenant's error. Here the others are untouched."""
    from memory import MemoryService
    from memory.quotas import QuotaExceeded

    async def scenario():
        async with MemoryService.aopen(
            database_url=database_url, database_pool_max_size=6, quota_rules=[{"tenant": "full", "max_tenant_files": 1}]
        ) as svc:
            store = svc.store
            await store.aput(("full", "memories"), "/a.md", {"content": "a"})
            await store.aput(("other", "memories"), "/seen.md", {"content": "seen"})
            await store.aput(("other", "memories"), "/gone.md", {"content": "gone"})
            answers = await asyncio.gather(
                store.aput(("full", "memories"), "/b.md", {"content": "over the quota"}),
                store.aput(("other", "memories"), "/c.md", {"content": "c"}),
                store.aget(("other", "memories"), "/seen.md"),
                store.adelete(("other", "memories"), "/gone.md"),
                store.asearch(("other",)),
                return_exceptions=True,
            )
            keys = ((("other", "memories"), "/c.md"), (("other", "memories"), "/gone.md"), (("full", "memories"), "/b.md"))
            return answers, [await store.aget(namespace, key) for namespace, key in keys]

    (refused, put, got, deleted, found), (written, gone, over) = asyncio.run(scenario())
    assert QuotaExceeded.from_error(refused) is not None, refused
    assert put is None and deleted is None, (put, deleted)
    assert got.value == {"content": "seen"} and isinstance(found, list), (got, found)
    assert written.value == {"content": "c"} and gone is None and over is None


def test_a_search_that_cannot_be_built_is_refused_to_its_caller_alone(database_url):
    from memory.pgstore import InvalidSearch

    async def scenario():
        async with await aopen_pool(database_url, 1, 4) as pool:
            store = PipelinedAsyncPostgresStore(pool)
            await store.abatch(_seed("mine"))
            return await asyncio.gather(
                store.asearch(("theirs",), filter={"n": {"$bogus": 1}}),
                store.aget(("mine", "a"), "k1"),
                store.asearch(("mine",), filter={"n": {"$gt": 2}}),
                return_exceptions=True,
            )

    refused, got, found = asyncio.run(scenario())
    assert isinstance(refused, InvalidSearch) and "$bogus" in str(refused), refused
    assert got.value["n"] == 1
    assert sorted(item.value["n"] for item in found) == [3, 4]


def test_batches_in_flight_bounds_the_batches_at_the_database(database_url):
    """`[database] batches_in_flight` reaches the async store, and no more batches than that run at
    once, however the callers arrive; every caller still gets its own answer."""
    from memory import MemoryService

    async def peak(in_flight: int) -> int:
        async with MemoryService.aopen(database_url=database_url, database_pool_max_size=8,
                                       database_batches_in_flight=in_flight) as svc:
            store = svc.store
            assert store.batches_in_flight == in_flight
            running = highest = 0
            execute = store._execute_batch

            async def counted(*args, **kwargs):
                nonlocal running, highest
                running += 1
                highest = max(highest, running)
                try:
                    return await execute(*args, **kwargs)
                finally:
                    running -= 1

            store._execute_batch = counted

            async def caller(n: int) -> None:
                await asyncio.sleep(n % 7 * 0.001)  # arrivals spread over several ticks
                await store.aput((f"t{n % 3}", "memories"), f"/{n}.md", {"n": n})
                assert (await store.aget((f"t{n % 3}", "memories"), f"/{n}.md")).value == {"n": n}

            await asyncio.gather(*(caller(n) for n in range(60)))
            return highest

    assert asyncio.run(peak(1)) == 1
    assert 1 <= asyncio.run(peak(2)) <= 2
