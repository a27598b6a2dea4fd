"""Side effects of the memory tools against plain `StoreBackend` on the same store: vectors after
edits and uploads, TTLs after ls/glob/grep, and the protocol's async timeouts on a locked table."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from deepagents.backends import StoreBackend, protocol
from psycopg.rows import dict_row

from memory import MemoryService, bind_tenant
from memory.tenancy import tenant_namespace
from memory.vectors import HashingEmbeddings

from conftest import TEMPLATE

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""

DIMS = 16
OURS, PLAIN = "acme", "plain"


def plain_backend(store) -> StoreBackend:
    namespace = tenant_namespace(PLAIN)
    return StoreBackend(namespace=lambda _rt: namespace, store=store)


def vectors_of(url: str, tenant: str) -> dict[str, dict[str, str]]:
    """key -> field_name -> embedding text, for a tenant's memory namespace."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT key, field_name, embedding::text AS e FROM store_vectors WHERE prefix = %s",
            (f"{tenant}.memories",),
        ).fetchall()
    found: dict[str, dict[str, str]] = {}
    for row in rows:
        found.setdefault(row["key"], {})[row["field_name"]] = row["e"]
    return found


def assert_vectors_in_step(url: str) -> None:
    """Every item with text content has exactly the vector of its current content; no vector is orphaned."""
    embed = HashingEmbeddings(DIMS)
    with psycopg.connect(url, row_factory=dict_row) as conn:
        items = conn.execute("SELECT prefix, key, value->>'content' AS content FROM store").fetchall()
        stored = {
            (r["prefix"], r["key"], r["field_name"]): [float(x) for x in r["e"].strip("[]").split(",")]
            for r in conn.execute("SELECT prefix, key, field_name, embedding::text AS e FROM store_vectors").fetchall()
        }
    expected = {(i["prefix"], i["key"], "content"): embed.embed_query(i["content"]) for i in items if i["content"] is not None}
    assert stored.keys() == expected.keys()
    for name, vector in expected.items():
        assert stored[name] == pytest.approx(vector, abs=1e-6), name


def scores(store, tenant: str, query: str) -> dict[str, float]:
    return {item.key: round(item.score, 6) for item in store.search(tenant_namespace(tenant), query=query, limit=50)}


@pytest.fixture
def vector_url(embedded_server) -> Iterator[str]:
    name = f"memory_test_{uuid.uuid4().hex[:12]}"
    url = embedded_server.create_database(name, template=TEMPLATE)
    with MemoryService.open(database_url=url, database_pool_max_size=2, index_dims=DIMS, index_embed="fake") as svc:
        svc.setup()
    yield url
    embedded_server.drop_database(name)


def _vector_settings(url: str) -> dict:
    return {"database_url": url, "database_pool_max_size": 20, "index_dims": DIMS, "index_embed": "fake"}


# -- vectors in step ------------------------------------------------------------------------------


def _scenario(backend) -> None:
    backend.write("/zoo.md", "the giraffe eats leaves\n")
    assert backend.edit("/zoo.md", "giraffe", "penguin").error is None
    backend.write("/secret.md", "the password is hunter2\nkeep it\n")
    assert backend.edit("/secret.md", "the password is hunter2\n", "").error is None
    backend.upload_files([("/up.md", b"uploaded otter notes\n"), ("/bin.dat", b"\xff\xfe binary")])
    backend.write("/up.md", "rewritten walrus notes\n")


def test_write_edit_upload_leave_the_same_vectors_as_plain_store_backend(vector_url):
    with MemoryService.open(**_vector_settings(vector_url)) as svc:
        with bind_tenant(OURS):
            _scenario(svc.memory_backend())
        _scenario(plain_backend(svc.store))
        assert vectors_of(vector_url, OURS) == vectors_of(vector_url, PLAIN)
        for query in ("penguin", "giraffe", "hunter2", "walrus", "otter"):
            assert scores(svc.store, OURS, query) == scores(svc.store, PLAIN, query), query
        assert max(scores(svc.store, OURS, "penguin"), key=scores(svc.store, OURS, "penguin").get) == "/zoo.md"
        assert scores(svc.store, OURS, "hunter2")["/secret.md"] < 0.5
    assert_vectors_in_step(vector_url)


def test_async_edits_reembed_like_plain_store_backend(vector_url):
    async def scenario():
        async with MemoryService.aopen(**_vector_settings(vector_url)) as svc:
            ours, plain = svc.memory_backend(), plain_backend(svc.store)
            with bind_tenant(OURS):
                await ours.awrite("/zoo.md", "the giraffe eats leaves\n")
                assert (await ours.aedit("/zoo.md", "giraffe", "penguin")).error is None
                await ours.aupload_files([("/up.md", b"otter\n")])
            await plain.awrite("/zoo.md", "the giraffe eats leaves\n")
            assert (await plain.aedit("/zoo.md", "giraffe", "penguin")).error is None
            await plain.aupload_files([("/up.md", b"otter\n")])

    asyncio.run(scenario())
    assert vectors_of(vector_url, OURS) == vectors_of(vector_url, PLAIN)
    assert_vectors_in_step(vector_url)


def test_contended_edits_lose_nothing_and_end_with_the_final_contents_vector(vector_url):
    runs = 12
    board = "".join(f"slot-{i:02d}: empty\n" for i in range(runs))
    with MemoryService.open(**_vector_settings(vector_url)) as svc:
        backend = svc.memory_backend()
        with bind_tenant(OURS):
            backend.write("/board.md", board)
        barrier = threading.Barrier(runs)

        def edit(i: int):
            with bind_tenant(OURS):
                barrier.wait(timeout=60)
                return backend.edit("/board.md", f"slot-{i:02d}: empty", f"slot-{i:02d}: done")

        with ThreadPoolExecutor(max_workers=runs) as pool:
            results = list(pool.map(edit, range(runs)))
        assert [r.error for r in results] == [None] * runs
        final = svc.store.get(tenant_namespace(OURS), "/board.md").value["content"]
    assert final == "".join(f"slot-{i:02d}: done\n" for i in range(runs))
    assert_vectors_in_step(vector_url)


def test_ttl_deletion_tenant_deletion_and_import_keep_vectors_in_step(vector_url, tmp_path):
    from jobs.ttl_cleanup import ttl_cleanup
    from memory import tenants
    from memory.db import connection
    from memory.retention import RetentionPolicy

    with MemoryService.open(**_vector_settings(vector_url)) as svc:
        for tenant in ("acme", "initech"):
            with bind_tenant(tenant):
                _scenario(svc.memory_backend())
        with psycopg.connect(vector_url, autocommit=True) as conn:
            conn.execute("UPDATE store SET expires_at = now() - interval '1 minute' WHERE key = '/zoo.md'")
            assert ttl_cleanup(conn, RetentionPolicy()).counts["vectors"] == 2
        assert_vectors_in_step(vector_url)
        with connection(svc.pool) as conn:
            tenants.export_tenant(conn, "acme", tmp_path / "acme.bundle")
            tenants.delete_tenant(conn, "acme")
            assert_vectors_in_step(vector_url)
            tenants.import_tenant(conn, tmp_path / "acme.bundle", as_tenant="acme2")
        with bind_tenant("acme2"):
            assert svc.memory_backend().edit("/secret.md", "keep it", "penguin").error is None
    assert_vectors_in_step(vector_url)


# -- TTL refresh on listing ---------------------------------------------------------------------

KEYS = ["/a.md", "/notes/b.md", "/notes/deep/c.md", "/other/d.txt", "/no-ttl.md", "/expired.md"]


def _seed_ttl_rows(url: str) -> None:
    """The same rows for both tenants (and a descendant namespace, and a neighbour tenant): 1 minute
    left of a 1440-minute TTL; one without a TTL, one already expired."""
    with psycopg.connect(url, autocommit=True) as conn:
        for prefix in (f"{OURS}.memories", f"{PLAIN}.memories", f"{OURS}.memories.sub", f"{PLAIN}.memories.sub", "acme-x.memories"):
            for key in KEYS:
                ttl = None if key == "/no-ttl.md" else 1440
                expires = None if ttl is None else ("-1 minute" if key == "/expired.md" else "1 minute")
                conn.execute(
                    "INSERT INTO store (prefix, key, value, expires_at, ttl_minutes) VALUES "
                    "(%s, %s, jsonb_build_object('content', 'needle in ' || %s::text, 'encoding', 'utf-8'),"
                    " now() + %s::interval, %s)",
                    (prefix, key, key, expires, ttl),
                )


def _refreshed(url: str) -> dict[str, set[tuple[str, str]]]:
    """By tenant prefix: (namespace tail, key) of the rows whose TTL was restarted (more than an hour left)."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT prefix, key FROM store WHERE expires_at > now() + interval '1 hour' ORDER BY 1, 2"
        ).fetchall()
    found: dict[str, set[tuple[str, str]]] = {}
    for row in rows:
        tenant, _, tail = row["prefix"].partition(".")
        found.setdefault(tenant, set()).add((tail, row["key"]))
    return found


def _reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE store SET expires_at = now() + interval '1 minute' WHERE ttl_minutes IS NOT NULL AND expires_at > now()")


CALLS = [
    ("ls", ("/notes/",)),
    ("glob", ("*.txt", "/other")),
    ("grep", ("needle", "/notes")),
    ("ls", ("/nope\x00/",)),
    ("glob", ("*[", None)),
]


@pytest.mark.parametrize(("call", "args"), CALLS, ids=[f"{c}{a!r}" for c, a in CALLS])
def test_listing_refreshes_ttls_like_plain_store_backend(database_url, call, args):
    _seed_ttl_rows(database_url)
    with MemoryService.open(database_url=database_url, database_pool_max_size=4) as svc:
        ours, plain = svc.memory_backend(), plain_backend(svc.store)
        with bind_tenant(OURS):
            ours_result = getattr(ours, call)(*args)
        assert _refreshed(database_url).keys() == {OURS}
        plain_result = getattr(plain, call)(*args)
    assert ours_result == plain_result
    refreshed = _refreshed(database_url)
    assert refreshed[OURS] == refreshed[PLAIN]
    assert refreshed[OURS] == {(tail, key) for tail in ("memories", "memories.sub") for key in KEYS[:4]}


def test_async_listing_refreshes_ttls_like_plain_store_backend(database_url):
    _seed_ttl_rows(database_url)

    async def scenario():
        async with MemoryService.aopen(database_url=database_url, database_pool_max_size=4) as svc:
            ours, plain = svc.memory_backend(), plain_backend(svc.store)
            for call, args in CALLS[:3]:
                _reset(database_url)
                with bind_tenant(OURS):
                    ours_result = await getattr(ours, f"a{call}")(*args)
                plain_result = await getattr(plain, f"a{call}")(*args)
                assert ours_result == plain_result
                refreshed = _refreshed(database_url)
                assert refreshed.keys() == {OURS, PLAIN} and refreshed[OURS] == refreshed[PLAIN], call

    asyncio.run(scenario())


def test_listing_refreshes_nothing_when_the_store_does_not_refresh_on_read(database_url):
    _seed_ttl_rows(database_url)
    with MemoryService.open(database_url=database_url, database_pool_max_size=4, retention_refresh_on_read=False) as svc:
        with bind_tenant(OURS):
            svc.memory_backend().ls("/")
        plain_backend(svc.store).ls("/")
    assert _refreshed(database_url) == {}


# -- the protocol's async timeouts on a locked table ------------------------------------------------


@pytest.fixture
def lock_holder(database_url) -> Iterator[psycopg.Connection]:
    """A second connection holding `store` in ACCESS EXCLUSIVE mode (until it rolls back)."""
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE store IN ACCESS EXCLUSIVE MODE")
        yield holder
        holder.rollback()


@pytest.fixture
def short_timeouts(monkeypatch) -> None:
    monkeypatch.setattr(protocol, "ASYNC_GREP_TIMEOUT", 1)
    monkeypatch.setattr(protocol, "ASYNC_GLOB_TIMEOUT", 1)


@pytest.mark.parametrize("flavour", ["async store", "sync store"])
def test_async_listing_on_a_locked_table_times_out_with_the_protocols_message(
    database_url, lock_holder, short_timeouts, flavour
):
    async def scenario(svc) -> None:
        ours, plain = svc.memory_backend(), plain_backend(svc.store)
        try:
            with bind_tenant(OURS):
                grep, glob, ls = await asyncio.gather(ours.agrep("x"), ours.aglob("*.md"), ours.als("/"))
            plain_grep = await plain.agrep("x")  # BackendProtocol's own agrep: to_thread + ASYNC_GREP_TIMEOUT
        finally:
            lock_holder.rollback()  # the table is free again (and stuck worker threads can finish)
        assert grep.error == plain_grep.error == "Error: grep timed out after 1s. Try a more specific pattern or a narrower path."
        assert glob.error == "Error: glob timed out after 1s. Try a more specific pattern or a narrower path."
        assert ls.error == "Error: ls timed out after 1s. Try a more specific pattern or a narrower path."
        # the tools work again on the same pool
        with bind_tenant(OURS):
            assert (await ours.awrite("/after.md", "x")).error is None
            assert [e["path"] for e in (await ours.als("/")).entries] == ["/after.md"]

    if flavour == "async store":

        async def run() -> None:
            async with MemoryService.aopen(database_url=database_url, database_pool_max_size=8) as svc:
                await scenario(svc)

        asyncio.run(run())
    else:
        with MemoryService.open(database_url=database_url, database_pool_max_size=8) as svc:
            asyncio.run(scenario(svc))
