"""Push-down `ls`/`glob`/`grep` give exactly what plain `StoreBackend` gives on the same data."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from deepagents.backends import StoreBackend
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from psycopg import sql as pgsql

from bench.harness import merge_results
from memory import MemoryService, TenantMemoryBackend, bind_tenant, pushdown
from memory.db import CONNECTION_KWARGS, with_dbname
from memory.pushdown import glob_literals
from memory.tenancy import tenant_namespace

TENANT = "acme"
NEIGHBOURS = ("acme-1", "acme_", "acm", "acmex", "Acme")
"""Tenants whose namespaces sort next to or LIKE-match the tenant's if escaping were wrong."""

LITERALS = ["a.b", "(x)", "[1]", "*", "\\", "%", "_", "^$", "a+b?", "{2}", "|"]

FILES: dict[str, str] = {
    "/a.md": "top file\nmentions a.b once\n",
    "/b.txt": "b file (x) and [1]\n*star*\n",
    "/.hidden.md": "hidden a.b\n",
    "/.cfg/ci.md": "dot dir (x)\n",
    "/notes": "a file named like a directory: a.b\n",
    "/notes/x.md": "x in notes\nback\\slash and 100% and snake_case\n",
    "/notes/y.txt": "y text a.b\n(x) [1] * \\ % _\n",
    "/notes/deep/z.md": "deep z\n^$ a+b? {2} |\n",
    "/notes/deep/er/w.txt": "deeper still a.b\n",
    "/dir1/x": "dir1 x\n",
    "/dir2/x": "dir2 x a.b\n",
    "/dirA/x": "dirA x\n",
    "/dir10/x": "dir10 x\n",
    "/café/naïve.md": "crème brûlée\n日本語 テキスト a.b\n",
    "/日本/メモ.md": "メモ (x)\n",
    "/100%/done_1.md": "percent dir _\n%\n",
    "/under_score/a%b.md": "under score % _\n",
    "/underXscore/aXb.md": "near miss for LIKE: under_score\n",
    "/pct%/x": "pct x\n",
    "/weird/x.md/": "trailing slash key a.b\n",
    "/weird/dot.md/.": "trailing dot key a.b\n",
    "/MIXED.MD": "upper case ext\n",
    "/empty.md": "",
    "/multi.md": "a.b\na.b twice\nnot here\na.b thrice\n",
    "/brace/a.md": "brace a\n",
    "/brace/b.txt": "brace b\n",
    "/esc/*.md": "a star in the name\n",
}
FILES |= {f"/bulk/f{i:03}.md": f"bulk file {i}\n{'a.b' if i % 7 == 0 else 'none'}\n" for i in range(130)}

LS_PATHS = [
    "/", "/notes", "/notes/", "/notes/deep/", "/café/", "/日本", "/100%/", "/under_score/", "/pct%/",
    "/nope/", "", "notes", "/weird/", "/a.md", "/bulk/", "/.cfg", "/esc/", "/no\x00pe/", "/\ud800/",
]

GLOBS: list[tuple[str, str | None]] = [
    ("*.md", None), ("**/*.md", None), ("/notes/*.md", None), ("notes/*.md", None), ("dir?/x", None),
    ("[ab]*", None), ("*.md", "/notes"), ("*", "/notes"), ("**", None), ("*", None), ("*.txt", "/notes/deep"),
    ("*.md", "/a.md"), ("*", "/notes/x.md"), ("x", None), ("*.MD", None), ("{a,b}.*", None),
    ("brace/{a,b}.*", None), ("../x", None), ("*.md", "   "), ("notes/**", None), ("100%/*", None),
    ("under_score/a%b.md", None), ("*%*", None), ("*_*", None), ("?.md", None), ("*.md/", None),
    ("\\*.md", None), ("esc/\\*.md", None), ("日本/*", None), ("**/naïve.md", None), ("*", "/nope"),
    (".*", None), ("*.md", "notes"), ("*.md", "/notes/"), ("*.md", "///"), ("/*.md", None),
    ("[!a]*.md", None), ("*[", None), ("x.md", "/weird"), ("dot.md", None), ("f00?.md", "/bulk"),
    ("*\x00", None), ("[\x00a].md", None), ("*.md", "/x\x00"), ("*\ud800", None),
]

GREPS: list[tuple[str, dict]] = [
    *[(literal, {}) for literal in LITERALS],
    ("a.b", {"path": "/notes"}),  # an exact file shadows the directory of the same name
    ("a.b", {"path": "/notes/"}),
    ("a.b", {"path": "notes"}),
    ("a.b", {"path": "   "}),
    ("a.b", {"glob": "*.md"}),
    ("a.b", {"glob": "**/*.txt"}),
    ("a.b", {"glob": "../x"}),
    ("a.b", {"glob": "*.md", "path": "/bulk"}),
    ("a.b", {"max_count": 1}),
    ("a.b", {"max_count": 3}),
    ("a.b", {"max_count": 0}),
    ("", {"path": "/notes"}),
    ("crème", {}),
    ("日本語", {}),
    ("テキスト a.b", {}),
    ("a\nb", {}),
    ("zzz-none", {}),
    ("bulk file", {"path": "/bulk", "max_count": 5}),
    ("line", {}),
    ("base64", {}),
    ("acme-1 only", {}),
    ("a\x00b", {}),
    ("\ud800", {}),
    ("a.b", {"path": "/no\x00pe"}),
    ("a.b", {"glob": "*.m\x00d"}),
]


def _plain(store) -> StoreBackend:
    namespace = tenant_namespace(TENANT)
    return StoreBackend(namespace=lambda _rt: namespace, store=store)


def _legacy_and_odd_rows(store: PostgresStore) -> None:
    """Rows the tools never write but the plain backend must tolerate; puts are sequential
    so that every row has its own updated_at (the search order)."""
    namespace = tenant_namespace(TENANT)
    store.put(namespace, "/legacy.md", {"content": ["legacy line a.b", "(x) here"], "encoding": "utf-8"})
    store.put(namespace, "/blob.bin", {"content": "YS5i", "encoding": "base64"})  # base64 of 'a.b'
    store.put(namespace, "/b64text.md", {"content": "a.b shows in base64 text", "encoding": "base64"})
    store.put(namespace, "/nocontent.md", {"encoding": "utf-8"})
    store.put(namespace, "/stamped.md", {"content": "dated a.b", "encoding": "utf-8",
                                         "created_at": "2024-01-01T00:00:00+00:00",
                                         "modified_at": "2030-01-01T00:00:00+00:00"})


def _populate(svc: MemoryService) -> None:
    with bind_tenant(TENANT):
        ours = svc.memory_backend()
        for path, content in FILES.items():
            assert ours.write(path, content).error is None
    for neighbour in NEIGHBOURS:
        with bind_tenant(neighbour):
            backend = svc.memory_backend()
            for path in ("/a.md", "/notes/x.md", "/only-theirs.md", "/bulk/f001.md"):
                backend.write(path, f"{neighbour} a.b acme-1 only (x)\n")
    _legacy_and_odd_rows(svc.store)


def _compare_sync(svc: MemoryService) -> None:
    plain = _plain(svc.store)
    with bind_tenant(TENANT):
        ours = svc.memory_backend()
        for path in LS_PATHS:
            assert ours.ls(path) == plain.ls(path), path
        for pattern, path in GLOBS:
            assert ours.glob(pattern, path) == plain.glob(pattern, path), (pattern, path)
        for pattern, kwargs in GREPS:
            assert ours.grep(pattern, **kwargs) == plain.grep(pattern, **kwargs), (pattern, kwargs)


async def _compare_async(svc: MemoryService) -> None:
    plain = _plain(svc.store)
    with bind_tenant(TENANT):
        ours = svc.memory_backend()
        for path in LS_PATHS:
            assert await ours.als(path) == await plain.als(path), path
        for pattern, path in GLOBS:
            assert await ours.aglob(pattern, path) == await plain.aglob(pattern, path), (pattern, path)
        for pattern, kwargs in GREPS:
            assert await ours.agrep(pattern, **kwargs) == await plain.agrep(pattern, **kwargs), (pattern, kwargs)


def test_sync_results_equal_plain_store_backend(service: MemoryService) -> None:
    _populate(service)
    _compare_sync(service)
    # and without key ranges, as on a database whose collation does not sort by code point
    assert pushdown._KEYS_BY_CODE_POINT[service.store] is True  # the test servers use C.UTF-8
    pushdown._KEYS_BY_CODE_POINT[service.store] = False
    _compare_sync(service)
    plain = _plain(service.store)
    with bind_tenant(TENANT):
        ours = service.memory_backend()
        # the comparison is not vacuous: the data shows up, and nothing of the neighbours does
        assert {"/notes/", "/bulk/", "/café/", "/a.md"} <= {e["path"] for e in ours.ls("/").entries}
        assert len(ours.glob("**/*.md").matches) > 130
        texts = [m["text"] for m in ours.grep("a.b").matches]
        assert "legacy line a.b" in texts and "dated a.b" in texts and "shows in base64" not in " ".join(texts)
        assert ours.grep("acme-1 only").matches == []
        assert ours.grep("a.b", path="/notes").matches == [
            {"path": "/notes", "line": 1, "text": "a file named like a directory: a.b"}
        ]
        assert ours.glob("../x").error and ours.grep("a.b", glob="../x").error
        with pytest.raises(AttributeError):
            plain.ls(None)  # type: ignore[arg-type]
        with pytest.raises(AttributeError):
            ours.ls(None)  # type: ignore[arg-type]


def test_async_results_equal_plain_store_backend(database_url: str) -> None:
    async def main() -> None:
        async with MemoryService.aopen(database_url=database_url, database_pool_max_size=4) as svc:
            plain_writer = _plain(svc.store)
            with bind_tenant(TENANT):
                ours = svc.memory_backend()
                for path, content in list(FILES.items())[:40]:
                    assert (await ours.awrite(path, content)).error is None
            await asyncio.to_thread(plain_writer.write, "/sync-written.md", "a.b via the sync path\n")
            await _compare_async(svc)
            # the sync methods on the async store (from a worker thread) agree too
            with bind_tenant(TENANT):
                assert await asyncio.to_thread(ours.ls, "/") == await plain_writer.als("/")
                assert await asyncio.to_thread(ours.grep, "a.b") == await plain_writer.agrep("a.b")
                with pytest.raises(asyncio.InvalidStateError):
                    ours.ls("/")  # a sync call on the store's own loop would deadlock

    asyncio.run(main())


def test_async_methods_on_the_sync_store(service: MemoryService) -> None:
    _populate(service)
    plain = _plain(service.store)

    async def main() -> None:
        with bind_tenant(TENANT):
            ours = service.memory_backend()
            assert await ours.als("/notes/") == plain.ls("/notes/")
            assert await ours.aglob("**/*.md") == plain.glob("**/*.md")
            assert await ours.agrep("(x)") == plain.grep("(x)")

    asyncio.run(main())


def test_linguistic_collation_database(pg_server) -> None:
    """On an ICU database keys do not sort by code point: no key ranges, same results."""
    name = f"memory_test_icu_{uuid.uuid4().hex[:8]}"
    try:
        with pg_server.admin() as conn:
            conn.execute(
                pgsql.SQL(
                    "CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                ).format(pgsql.Identifier(name))
            )
    except psycopg.Error as exc:
        pytest.skip(f"no ICU database on {pg_server.name}: {exc}")
    try:
        with MemoryService.open(database_url=with_dbname(pg_server.admin_url, name), database_pool_max_size=4) as svc:
            svc.setup()
            _populate(svc)
            _compare_sync(svc)
            assert pushdown._KEYS_BY_CODE_POINT[svc.store] is False
    finally:
        pg_server.drop_database(name)


def test_descendant_namespaces_with_shared_keys(service: MemoryService) -> None:
    """`store.search` also returns descendant namespaces; a key found twice keeps the first
    position and the last value: the same must hold when SQL filters content."""
    namespace = tenant_namespace(TENANT)
    store = service.store
    store.put(namespace, "/dup.md", {"content": "first has it: a.b", "encoding": "utf-8"})
    store.put((*namespace, "sub"), "/other.md", {"content": "other a.b", "encoding": "utf-8"})
    store.put((*namespace, "sub"), "/dup.md", {"content": "last lacks it", "encoding": "utf-8"})
    store.put(namespace, "/late.md", {"content": "late a.b", "encoding": "utf-8"})
    store.put((*namespace[:-1], "memoriesX"), "/sibling.md", {"content": "sibling a.b", "encoding": "utf-8"})
    plain = _plain(store)
    with bind_tenant(TENANT):
        ours = service.memory_backend()
        assert ours.grep("a.b") == plain.grep("a.b")
        assert ours.ls("/") == plain.ls("/")
        assert ours.glob("*.md") == plain.glob("*.md")
        assert "/sibling.md" not in {m["path"] for m in ours.glob("*.md").matches}


def test_expired_items_are_never_listed(service: MemoryService) -> None:
    namespace = tenant_namespace(TENANT)
    ttl_store = PostgresStore(service.pool, ttl={"default_ttl": 60})
    ttl_store.put(namespace, "/gone/old.md", {"content": "expired a.b", "encoding": "utf-8"}, ttl=0.001)
    ttl_store.put(namespace, "/kept.md", {"content": "kept a.b", "encoding": "utf-8"})
    time.sleep(0.2)
    with bind_tenant(TENANT):
        ours = service.memory_backend()
        assert [e["path"] for e in ours.ls("/").entries] == ["/kept.md"]
        assert [m["path"] for m in ours.glob("**/*.md").matches] == ["/kept.md"]
        assert [m["path"] for m in ours.grep("a.b").matches] == ["/kept.md"]

        async def main() -> None:
            assert [e["path"] for e in (await ours.als("/")).entries] == ["/kept.md"]

        asyncio.run(main())


@pytest.mark.parametrize(
    ("pattern", "literals"),
    [
        ("*.md", ("", ".md")),
        ("**/*.md", ("", ".md")),
        ("/notes/*.md", ("notes/", ".md")),
        ("dir?/x", ("", "x")),
        ("{a,b}.*", ("", "")),
        ("a\\*b", ("", "")),
        ("./x/*.md", ("", ".md")),
        ("[ab]/c", ("", "c")),
        ("x.md/", ("x.md/", "")),
    ],
)
def test_glob_literals(pattern: str, literals: tuple[str, str]) -> None:
    assert glob_literals(pattern) == literals


def test_single_connection_stores(service: MemoryService) -> None:
    """A store on one shared connection (not a pool), sync and async, takes the store's lock."""
    _populate(service)
    expected = _plain(service.store)
    with psycopg.Connection.connect(service.database_url, **CONNECTION_KWARGS) as conn:
        store = PostgresStore(conn)
        with bind_tenant(TENANT):
            ours = TenantMemoryBackend(store=store, resolver=service.resolver)
            assert ours.ls("/notes/") == expected.ls("/notes/")
            assert ours.glob("**/*.md") == expected.glob("**/*.md")
            assert ours.grep("a.b") == expected.grep("a.b")

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(service.database_url, **CONNECTION_KWARGS) as aconn:
            astore = AsyncPostgresStore(aconn)
            with bind_tenant(TENANT):
                ours = TenantMemoryBackend(store=astore, resolver=service.resolver)
                results = await asyncio.gather(ours.als("/notes/"), ours.aglob("**/*.md"), ours.agrep("a.b"))
                assert list(results) == [expected.ls("/notes/"), expected.glob("**/*.md"), expected.grep("a.b")]

    asyncio.run(main())


def test_bench_results_merge_by_name(tmp_path: Path) -> None:
    """bench/results.json keeps other entries' figures and replaces same-named ones."""
    path = tmp_path / "results.json"
    merge_results(path, [{"name": "sweep", "ratio": 3.0}, {"name": "ls_10k", "ratio": 1.0}])
    merged = merge_results(path, [{"name": "ls_10k", "ratio": 90.0}, {"name": "grep_10k", "ratio": 50.0}])
    assert merged == [{"name": "sweep", "ratio": 3.0}, {"name": "ls_10k", "ratio": 90.0}, {"name": "grep_10k", "ratio": 50.0}]
