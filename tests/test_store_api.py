"""The Store API of `memory serve`, driven by the official `langgraph_sdk` client (sync and async)
against a real server process on a free loopback port and real PostgreSQL (the embedded PG 18 +
pgvector, for the semantic search)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import string
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import jwt
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph_sdk import get_client, get_sync_client
from langgraph_sdk.errors import (
    AuthenticationError,
    ConflictError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from conftest import TEMPLATE
from memory import MemoryService
from memory.api import keycache
from memory.api.auth import KeyAuth
from memory.api.errors import ApiError
from memory.apikeys import Principal, authenticate, create_key, list_keys, revoke_key
from memory.db import CONNECTION_KWARGS

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""

ROOT = Path(__file__).resolve().parent.parent
HELD = "held"
CAPPED = "capped"
READ_TIMEOUT_S = 2
MAX_BODY = 64 * 1024
MAX_HEAD = 16 * 1024
JWT_SECRET = "test-secret-" + "x" * 64


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


_OPENED: list = []


def _sync_client(url: str, **kwargs):
    """`get_sync_client`, closed after the test (an unclosed socket is a warning, and warnings are errors)."""
    client = get_sync_client(url=url, **kwargs)
    _OPENED.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


@dataclass
class Server:
    url: str
    database_url: str
    process: subprocess.Popen

    def key(self, tenant: str, *, admin: bool = False) -> str:
        return self.new_key(tenant, admin=admin)[1]

    def new_key(self, tenant: str, *, admin: bool = False) -> tuple[str, str]:
        """(id, secret) of a new key."""
        with _connect(self.database_url) as conn:
            key, secret = create_key(conn, tenant, admin=admin)
        return key.id, secret

    def client(self, api_key: str | None):
        return _sync_client(self.url, api_key=api_key)

    def aclient(self, api_key: str | None):
        return get_client(url=self.url, api_key=api_key)


def _start(database_url: str, extra_env: dict[str, str], *args: str) -> tuple[subprocess.Popen, str]:
    env = {
        **os.environ,
        "MEMORY_DATABASE_URL": database_url,
        "MEMORY_INDEX_DIMS": "64",
        "MEMORY_INDEX_EMBED": "fake",
        "MEMORY_RETENTION_LEGAL_HOLD": json.dumps([HELD]),
        "MEMORY_RETENTION_RULES": json.dumps([{"tenant": CAPPED, "path": "/memories/", "ttl_days": 1}]),
        "MEMORY_API_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        "MEMORY_API_MAX_BODY_BYTES": str(MAX_BODY),
        "MEMORY_API_MAX_HEADER_BYTES": str(MAX_HEAD),
        "MEMORY_QUOTA_RULES": json.dumps([{"tenant": QUOTA_TENANT, "max_tenant_files": 2}]),
        **extra_env,
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "memory", "serve", "--port", "0", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = child.stdout.readline()
    if not line.startswith("serving http://"):
        child.kill()
        raise AssertionError(line + child.stderr.read())
    return child, line.split()[1].removesuffix("/health")


def _stop(child: subprocess.Popen) -> None:
    child.terminate()
    try:
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.stderr.close()


@pytest.fixture(scope="module")
def api_database(embedded_server) -> Iterator[str]:
    """A database migrated with a 64-dim vector index (the offline hashing embedding)."""
    name = f"memory_test_api_{uuid.uuid4().hex[:8]}"
    url = embedded_server.create_database(name, template=TEMPLATE)
    with MemoryService.open(database_url=url, index_dims=64, index_embed="fake", database_pool_max_size=2) as svc:
        svc.setup()
    yield url
    embedded_server.drop_database(name)


@pytest.fixture(scope="module")
def server(api_database) -> Iterator[Server]:
    child, url = _start(api_database, {}, "--no-jobs")
    try:
        yield Server(url, api_database, child)
    finally:
        _stop(child)


def _tenant(label: str = "t") -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


# -- every endpoint, sync and async -------------------------------------------------------------


def test_every_endpoint_round_trips_through_the_sync_sdk(server):
    tenant = _tenant()
    store = server.client(server.key(tenant)).store
    assert store.get_item([tenant, "memories"], "/prefs.md") is None

    store.put_item([tenant, "memories"], "/prefs.md", {"content": "metric units", "kind": "pref"})
    first = store.get_item([tenant, "memories"], "/prefs.md")
    assert set(first) == {"namespace", "key", "value", "created_at", "updated_at"}
    assert first["namespace"] == [tenant, "memories"] and first["key"] == "/prefs.md"
    assert first["value"] == {"content": "metric units", "kind": "pref"}
    created = datetime.fromisoformat(first["created_at"])
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=5)

    store.put_item([tenant, "memories"], "/prefs.md", {"content": "imperial units", "kind": "pref"})
    second = store.get_item([tenant, "memories"], "/prefs.md")
    assert second["value"]["content"] == "imperial units"
    assert second["created_at"] == first["created_at"] and second["updated_at"] > first["updated_at"]

    store.put_item([tenant, "memories", "scratch"], "/a.md", {"content": "a", "kind": "note"})
    store.put_item([tenant, "profile"], "name", {"name": "Ada", "kind": "note"})
    found = store.search_items([tenant], limit=10)["items"]
    assert sorted((tuple(i["namespace"]), i["key"]) for i in found) == [
        ((tenant, "memories"), "/prefs.md"), ((tenant, "memories", "scratch"), "/a.md"), ((tenant, "profile"), "name")
    ]
    assert all(set(i) == {"namespace", "key", "value", "created_at", "updated_at", "score"} for i in found)
    notes = store.search_items([tenant], filter={"kind": "note"})["items"]
    assert sorted(i["key"] for i in notes) == ["/a.md", "name"]
    assert len(store.search_items([tenant], limit=1, offset=1)["items"]) == 1
    assert [i["key"] for i in store.search_items([tenant, "memories", "scratch"])["items"]] == ["/a.md"]

    assert store.list_namespaces()["namespaces"] == [
        [tenant, "memories"], [tenant, "memories", "scratch"], [tenant, "profile"]
    ]
    assert store.list_namespaces(prefix=[tenant], max_depth=2)["namespaces"] == [[tenant, "memories"], [tenant, "profile"]]
    assert store.list_namespaces(suffix=["scratch"])["namespaces"] == [[tenant, "memories", "scratch"]]
    assert store.list_namespaces(limit=1, offset=2)["namespaces"] == [[tenant, "profile"]]

    store.delete_item([tenant, "memories"], "/prefs.md")
    assert store.get_item([tenant, "memories"], "/prefs.md") is None
    store.delete_item([tenant, "memories"], "/never-there.md")  # 204, like the Agent Server


def test_every_endpoint_round_trips_through_the_async_sdk(server):
    tenant = _tenant()
    key = server.key(tenant)

    async def scenario() -> None:
        client = server.aclient(key)
        try:
            store = client.store
            await store.put_item([tenant, "memories"], "/x.md", {"content": "async"}, ttl=60)
            item = await store.get_item([tenant, "memories"], "/x.md", refresh_ttl=False)
            assert item["value"] == {"content": "async"}
            items = (await store.search_items([tenant], query=None))["items"]
            assert [i["key"] for i in items] == ["/x.md"]
            assert (await store.list_namespaces(prefix=[tenant]))["namespaces"] == [[tenant, "memories"]]
            await store.delete_item([tenant, "memories"], "/x.md")
            assert await store.get_item([tenant, "memories"], "/x.md") is None
        finally:
            await client.aclose()

    asyncio.run(scenario())


# -- retention: TTLs, refresh, legal hold -------------------------------------------------------

ROW = "SELECT ttl_minutes, expires_at - now() AS left FROM store WHERE prefix = %(prefix)s AND key = %(key)s"


def _row(server: Server, namespace: list[str], key: str) -> dict:
    with _connect(server.database_url) as conn:
        return conn.execute(ROW, {"prefix": ".".join(namespace), "key": key}).fetchone()


def test_ttl_is_the_clients_capped_by_the_retention_policy_and_refresh_ttl_restarts_it(server):
    tenant = _tenant()
    store = server.client(server.key(tenant)).store
    ns = [tenant, "memories"]
    store.put_item(ns, "/forever.md", {"content": "x"})
    assert _row(server, ns, "/forever.md")["ttl_minutes"] is None
    store.put_item(ns, "/ten.md", {"content": "x"}, ttl=10)
    row = _row(server, ns, "/ten.md")
    assert row["ttl_minutes"] == 10 and timedelta(minutes=9) < row["left"] <= timedelta(minutes=10)

    with _connect(server.database_url) as conn:
        conn.execute("UPDATE store SET expires_at = now() + interval '1 minute' WHERE prefix = %s AND key = '/ten.md'",
                     (".".join(ns),))
    store.get_item(ns, "/ten.md", refresh_ttl=False)
    assert _row(server, ns, "/ten.md")["left"] <= timedelta(minutes=1)
    store.search_items([tenant], refresh_ttl=False)
    assert _row(server, ns, "/ten.md")["left"] <= timedelta(minutes=1)
    store.get_item(ns, "/ten.md", refresh_ttl=True)
    assert _row(server, ns, "/ten.md")["left"] > timedelta(minutes=9)
    with _connect(server.database_url) as conn:
        conn.execute("UPDATE store SET expires_at = now() + interval '1 minute' WHERE prefix = %s AND key = '/ten.md'",
                     (".".join(ns),))
    store.search_items([tenant], refresh_ttl=True)
    assert _row(server, ns, "/ten.md")["left"] > timedelta(minutes=9)

    with _connect(server.database_url) as conn:  # expired: never read back, not even to refresh it
        conn.execute("UPDATE store SET expires_at = now() - interval '1 second' WHERE prefix = %s AND key = '/ten.md'",
                     (".".join(ns),))
    assert store.get_item(ns, "/ten.md", refresh_ttl=True) is None
    assert [i["key"] for i in store.search_items([tenant])["items"]] == ["/forever.md"]


def test_the_retention_policy_caps_api_ttls_as_it_does_agent_writes(server):
    store = server.client(server.key(CAPPED)).store
    ns = [CAPPED, "memories"]
    key = f"/{uuid.uuid4().hex}.md"
    store.put_item(ns, key, {"content": "x"})
    assert _row(server, ns, key)["ttl_minutes"] == 1440  # the tenant's rule: 1 day
    store.put_item(ns, key, {"content": "x"}, ttl=10_000_000)
    assert _row(server, ns, key)["ttl_minutes"] == 1440
    store.put_item(ns, key, {"content": "x"}, ttl=5)
    assert _row(server, ns, key)["ttl_minutes"] == 5


def test_legal_hold_refuses_deletes_and_expiry(server):
    store = server.client(server.key(HELD)).store
    ns = [HELD, "memories"]
    key = f"/{uuid.uuid4().hex}.md"
    store.put_item(ns, key, {"content": "evidence"}, ttl=1)
    assert _row(server, ns, key)["ttl_minutes"] is None  # no expiry under hold
    with pytest.raises(ConflictError) as refused:
        store.delete_item(ns, key)
    assert "legal hold" in refused.value.body["detail"]
    admin = server.client(server.key("ops", admin=True)).store
    with pytest.raises(ConflictError):
        admin.delete_item(ns, key)
    assert store.get_item(ns, key)["value"] == {"content": "evidence"}


QUOTA_TENANT = "quota-t"


def test_quotas_apply_to_api_writes_as_to_agent_writes(server):
    """Two files allowed: the third put is 429 naming the limit, nothing of it stored; deletes free room."""
    store = server.client(server.key(QUOTA_TENANT)).store
    ns = [QUOTA_TENANT, "memories"]
    store.put_item(ns, "/a.md", {"content": "a"})
    store.put_item(ns, "/b.md", {"content": "b"})
    with pytest.raises(RateLimitError) as refused:
        store.put_item(ns, "/c.md", {"content": "c"})
    assert "max_tenant_files = 2" in refused.value.body["detail"] and "nothing was written" in refused.value.body["detail"]
    assert store.get_item(ns, "/c.md") is None
    store.put_item(ns, "/a.md", {"content": "a, rewritten"})  # an update adds no file
    store.delete_item(ns, "/b.md")
    store.put_item(ns, "/c.md", {"content": "c"})
    assert sorted(i["key"] for i in store.search_items([QUOTA_TENANT])["items"]) == ["/a.md", "/c.md"]


# -- vectors in step ------------------------------------------------------------------------------

VECTORS = "SELECT count(*) AS n FROM store_vectors WHERE prefix = %(prefix)s AND key = %(key)s"


def _vectors(server: Server, namespace: list[str], key: str) -> int:
    with _connect(server.database_url) as conn:
        return conn.execute(VECTORS, {"prefix": ".".join(namespace), "key": key}).fetchone()["n"]


def test_semantic_query_uses_the_vector_index_and_vectors_follow_writes(server):
    tenant = _tenant()
    store = server.client(server.key(tenant)).store
    ns = [tenant, "memories"]
    store.put_item(ns, "/coffee.md", {"content": "likes espresso coffee in the morning"})
    store.put_item(ns, "/cats.md", {"content": "has two cats named Tom and Jerry"})
    store.put_item(ns, "/trains.md", {"content": "travels by train on weekends"})
    store.put_item(ns, "/raw.md", {"content": "espresso coffee"}, index=False)
    assert [_vectors(server, ns, k) for k in ("/coffee.md", "/cats.md", "/trains.md", "/raw.md")] == [1, 1, 1, 0]

    found = store.search_items([tenant], query="espresso coffee", limit=3)["items"]
    assert found[0]["key"] == "/coffee.md"
    assert all(isinstance(i["score"], float) for i in found)
    assert found[0]["score"] > found[1]["score"]

    store.put_item(ns, "/cats.md", {"content": "espresso coffee espresso"})  # re-embedded on update
    assert store.search_items([tenant], query="espresso coffee", limit=1)["items"][0]["key"] == "/cats.md"
    store.delete_item(ns, "/cats.md")
    assert _vectors(server, ns, "/cats.md") == 0


# -- credentials ----------------------------------------------------------------------------------


def test_no_key_a_bad_key_and_a_revoked_key_get_401(server):
    tenant = _tenant()
    ns = [tenant, "memories"]
    for api_key in (None, "mem_not-a-key", "not even the format", server.key(tenant) + "x"):
        store = server.client(api_key).store
        for call in (
            lambda: store.get_item(ns, "k"),
            lambda: store.put_item(ns, "k", {"a": 1}),
            lambda: store.delete_item(ns, "k"),
            lambda: store.search_items([tenant]),
            lambda: store.list_namespaces(),
        ):
            with pytest.raises(AuthenticationError):
                call()

    key_id, key = server.new_key(tenant)
    store = server.client(key).store
    store.put_item(ns, "k", {"a": 1})
    with _connect(server.database_url) as conn:
        [listed] = [k for k in list_keys(conn) if k.id == key_id]
        assert listed.last_used_at is not None
        assert authenticate(conn, key) == Principal(tenant, admin=False, key_id=key_id)
        revoke_key(conn, key_id)
        assert authenticate(conn, key) is None
    _refused_soon(lambda: store.get_item(ns, "k"))


# The key cache: served from memory only while the server hears revocations (memory/api/keycache.py).
# A revocation reaches the server as a notification, which the server handles milliseconds after the
# commit: the tests allow it NOTIFY_WITHIN_S (a cached key would live on for key_cache_s = 60 s).
NOTIFY_WITHIN_S = 5.0
REVOKE_WITHOUT_NOTIFY = "UPDATE memory_api_keys SET revoked_at = now() WHERE id = %(id)s"
TERMINATE_LISTENER = """
SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity
 WHERE application_name = %(name)s AND datname = current_database()
"""


def _refused_soon(call, within: float = NOTIFY_WITHIN_S) -> None:
    """`call` raises AuthenticationError, at the latest after `within` seconds of retrying."""
    deadline = time.monotonic() + within
    while True:
        try:
            call()
        except AuthenticationError:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"still accepted {within}s after the key was revoked")
        time.sleep(0.05)


def _metric(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


def _cache_live(server: Server) -> None:
    deadline = time.monotonic() + 30
    while _metric(server, "memory_api_key_cache_live") != 1.0:
        assert time.monotonic() < deadline, "the key cache's listener never came up"
        time.sleep(0.05)


def test_a_revoked_key_is_dropped_from_the_key_cache_by_the_revocations_notification(server):
    _cache_live(server)
    tenant = _tenant()
    ns = [tenant, "memories"]
    hidden_id, hidden = server.new_key(tenant)
    key_id, key = server.new_key(tenant)
    for secret in (hidden, key):
        server.client(secret).store.get_item(ns, "k")
    hits = _metric(server, "memory_api_key_cache_hits_total")
    server.client(key).store.get_item(ns, "k")
    assert _metric(server, "memory_api_key_cache_hits_total") == hits + 1  # served from memory
    with _connect(server.database_url) as conn:
        conn.execute(REVOKE_WITHOUT_NOTIFY, {"id": hidden_id})  # a revocation the server cannot hear
    server.client(hidden).store.get_item(ns, "k")  # so the cache (not the database) answers

    with _connect(server.database_url) as conn:
        revoke_key(conn, key_id)
    _refused_soon(lambda: server.client(key).store.get_item(ns, "k"))
    _refused_soon(lambda: server.client(hidden).store.get_item(ns, "k"))  # any notification empties it


def test_a_lost_listener_drops_the_key_cache_and_a_new_one_starts_empty(server):
    _cache_live(server)
    tenant = _tenant()
    ns = [tenant, "memories"]
    key_id, key = server.new_key(tenant)
    store = server.client(key).store
    store.get_item(ns, "k")
    store.get_item(ns, "k")
    listens = _metric(server, "memory_api_key_cache_listens_total")
    with _connect(server.database_url) as conn:
        assert conn.execute(TERMINATE_LISTENER, {"name": keycache.APPLICATION_NAME}).fetchone()["done"]
        conn.execute(REVOKE_WITHOUT_NOTIFY, {"id": key_id})  # revoked while nobody listens
    deadline = time.monotonic() + 30
    while _metric(server, "memory_api_key_cache_listens_total") == listens:  # a new listener is up
        assert time.monotonic() < deadline, "the key cache's listener did not come back"
        time.sleep(0.05)
    with pytest.raises(AuthenticationError):
        store.get_item(ns, "k")  # what the old listener's cache held is gone
    _, other = server.new_key(tenant)
    server.client(other).store.get_item(ns, "k")


def test_while_the_listener_is_down_every_request_asks_the_database(api_database):
    async def scenario() -> None:
        pool = AsyncConnectionPool(api_database, min_size=1, max_size=2, kwargs=CONNECTION_KWARGS, open=False)
        await pool.open(wait=True)
        cache = keycache.KeyCache(pool, api_database, 60, retry_s=60)  # no reconnection within the test
        auth = KeyAuth(pool, cache)
        await auth.start()
        try:
            deadline = time.monotonic() + 30
            while not cache.live:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            async with pool.connection() as conn:
                key, secret = await asyncio.to_thread(_create_key, api_database, _tenant())
                headers = {"x-api-key": secret}
                assert (await auth.principal(headers)).key_id == key.id
                assert (await auth.principal(headers)).key_id == key.id and cache.hits == 1
                generation = cache.generation()
                assert (await (await conn.execute(TERMINATE_LISTENER, {"name": keycache.APPLICATION_NAME})).fetchone())["done"]
                lost_by = time.monotonic() + NOTIFY_WITHIN_S
                while cache.generation() == generation:  # the loss is noticed
                    assert time.monotonic() < lost_by
                    await asyncio.sleep(0.02)
                assert (await auth.principal(headers)).key_id == key.id  # from the database, not remembered
                await conn.execute(REVOKE_WITHOUT_NOTIFY, {"id": key.id})
            with pytest.raises(ApiError) as refused:
                await auth.principal(headers)
            assert refused.value.status == 401
        finally:
            await auth.stop()
            await pool.close()

    asyncio.run(scenario())


def _create_key(url: str, tenant: str):
    with _connect(url) as conn:
        return create_key(conn, tenant)


def test_an_admin_key_reaches_every_tenant(server):
    a, b = _tenant("a"), _tenant("b")
    server.client(server.key(a)).store.put_item([a, "memories"], "/x.md", {"content": "a"})
    server.client(server.key(b)).store.put_item([b, "memories"], "/x.md", {"content": "b"})
    admin = server.client(server.key("ops", admin=True)).store
    namespaces = admin.list_namespaces()["namespaces"]
    assert [a, "memories"] in namespaces and [b, "memories"] in namespaces
    assert admin.get_item([b, "memories"], "/x.md")["value"] == {"content": "b"}
    assert [i["value"] for i in admin.search_items([a])["items"]] == [{"content": "a"}]
    admin.put_item([b, "memories"], "/y.md", {"content": "by admin"})
    admin.delete_item([a, "memories"], "/x.md")
    assert server.client(server.key(a)).store.get_item([a, "memories"], "/x.md") is None


LABEL = st.text(alphabet=string.ascii_letters + string.digits + "-_@+:~", min_size=1, max_size=10)


@pytest.fixture(scope="module")
def two_tenants(server):
    """Tenant `mine` (and its key) and a victim tenant holding items under random namespaces."""
    mine = _tenant("mine")
    return mine, server.key(mine), server.client(server.key("ops", admin=True)).store


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    other=st.one_of(LABEL, st.sampled_from(["mine", "min", "mine-", "MINE"])),
    rest=st.lists(LABEL, min_size=0, max_size=3),
    key=st.text(min_size=1, max_size=20).filter(lambda k: "\x00" not in k),
)
def test_every_cross_tenant_read_write_search_list_and_delete_is_refused(server, two_tenants, other, rest, key):
    mine, my_key, admin = two_tenants
    if other == mine:
        return
    victim_ns = [other, *rest]
    admin.put_item(victim_ns, key, {"content": "secret of " + other})
    store = server.client(my_key).store

    with pytest.raises(PermissionDeniedError):
        store.put_item(victim_ns, key, {"content": "overwritten"})
    with pytest.raises(PermissionDeniedError):
        store.delete_item(victim_ns, key)
    assert store.get_item(victim_ns, key) is None
    for prefix in (victim_ns, [other], victim_ns[:1]):
        assert store.search_items(prefix)["items"] == []
        assert store.search_items(prefix, query="secret")["items"] == []
        assert store.list_namespaces(prefix=prefix)["namespaces"] == []
    seen_items = store.search_items([], limit=100)["items"]
    assert all(item["namespace"][0] == mine for item in seen_items)
    assert all(ns[0] == mine for ns in store.list_namespaces(limit=1000)["namespaces"])
    assert all(ns[0] == mine for ns in store.list_namespaces(suffix=victim_ns[-1:], limit=1000)["namespaces"])
    assert admin.get_item(victim_ns, key)["value"] == {"content": "secret of " + other}


# -- bad input --------------------------------------------------------------------------------------


def test_bad_namespaces_and_bodies_are_422_with_the_reason(server):
    tenant = _tenant()
    key = server.key(tenant)
    store = server.client(key).store
    with pytest.raises(UnprocessableEntityError) as empty:
        store.put_item([tenant, ""], "k", {"a": 1})
    assert "non-empty" in empty.value.body["detail"]
    with pytest.raises(UnprocessableEntityError):
        store.search_items([tenant, ""])
    with pytest.raises(UnprocessableEntityError) as big:
        store.search_items([tenant], limit=5000)
    assert "max_page" in big.value.body["detail"]

    headers = {"x-api-key": key}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as raw:  # what the SDK refuses to send
        dotted = raw.put("/store/items", json={"namespace": [tenant, "a.b"], "key": "k", "value": {}})
        assert dotted.status_code == 422 and "'.'" in dotted.json()["detail"]
        for method, path, body in (
            ("DELETE", "/store/items", {"namespace": [tenant, "a.b"], "key": "k"}),
            ("POST", "/store/items/search", {"namespace_prefix": [tenant, "a.b"]}),
            ("POST", "/store/namespaces", {"prefix": [tenant, "a.b"]}),
            ("POST", "/store/namespaces", {"suffix": ["a.b"]}),
            ("POST", "/store/items/search", {"namespace_prefix": ["someone-else", "a.b"]}),  # checked before scoping
            ("POST", "/store/namespaces", {"prefix": ["someone-else", "a.b"]}),
            ("GET", "/store/items?namespace=someone-else.&key=k", None),
        ):
            refused = raw.request(method, path, json=body)
            assert refused.status_code == 422 and "'.'" in refused.json()["detail"], (method, path, refused.text)
        assert raw.get("/store/items", params={"namespace": f"{tenant}..x", "key": "k"}).status_code == 422
        assert raw.get("/store/items", params={"key": "k"}).status_code == 422
        not_object = raw.put("/store/items", json={"namespace": [tenant], "key": "k", "value": [1]})
        assert not_object.status_code == 422 and not_object.json() == {"detail": "value must be a JSON object"}
        assert raw.put("/store/items", content=b"{nope", headers={"content-type": "application/json"}).status_code == 422
        assert raw.put("/store/items", json={"namespace": [tenant], "key": "", "value": {}}).status_code == 422
        assert raw.put("/store/items", json={"namespace": [tenant], "key": "k", "value": {}, "ttl": -1}).status_code == 422
        assert raw.put("/store/items", json={"namespace": ["langgraph"], "key": "k", "value": {}}).status_code == 403
        nul = raw.put("/store/items", json={"namespace": [tenant], "key": "k", "value": {"c": "a\u0000b"}})
        assert nul.status_code == 422, nul.text
        assert raw.get("/nope").status_code == 404
        bogus = raw.post("/store/items/search", json={"namespace_prefix": [tenant], "filter": {"n": {"$bogus": 1}}})
        assert bogus.status_code == 422 and "$bogus" in bogus.json()["detail"], bogus.text


def test_a_value_orjson_cannot_say_is_kept_and_answered(server):
    """An integer beyond 64 bits is valid JSON: an agent's write and an API put keep it exactly, and
    get and search return it (not a 500, not a float)."""
    tenant = _tenant()
    big = {"n": 2**70, "content": "big"}
    with MemoryService.open(database_url=server.database_url, database_pool_max_size=2) as svc:
        svc.store.put((tenant, "m"), "big", big)
    with httpx.Client(base_url=server.url, headers={"x-api-key": server.key(tenant)}, timeout=30) as raw:
        got = raw.get("/store/items", params={"namespace": f"{tenant}.m", "key": "big"})
        found = raw.post("/store/items/search", json={"namespace_prefix": [tenant]})
    assert got.status_code == 200 and json.loads(got.text)["value"] == big, got.text
    assert found.status_code == 200 and [item["value"] for item in json.loads(found.text)["items"]] == [big], found.text
    with httpx.Client(base_url=server.url, headers={"x-api-key": server.key(tenant)}, timeout=30) as raw:
        put = raw.put("/store/items", json={"namespace": [tenant, "m"], "key": "sent", "value": big})
        got = raw.get("/store/items", params={"namespace": f"{tenant}.m", "key": "sent"})
        nan = raw.put("/store/items", content=b'{"namespace": ["%s"], "key": "k", "value": {"n": NaN}}' % tenant.encode(),
                      headers={"content-type": "application/json"})
    assert put.status_code == 204 and json.loads(got.text)["value"] == big, got.text  # as sent, not a float
    assert nan.status_code == 422, nan.text  # NaN: not JSON, and not a value PostgreSQL keeps


def test_a_body_over_the_limit_is_413_announced_or_streamed(server):
    tenant = _tenant()
    key = server.key(tenant)
    store = server.client(key).store
    with pytest.raises(Exception) as refused:
        store.put_item([tenant], "big", {"content": "x" * (MAX_BODY + 1)})
    assert refused.value.response.status_code == 413
    assert store.get_item([tenant], "big") is None

    # Announced: refused at once, before the body is read (none is sent here).
    head = (f"PUT /store/items HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\ncontent-type: application/json\r\n"
            f"content-length: {MAX_BODY * 100}\r\n\r\n").encode()
    assert _raw_reply(server.url, head).startswith(b"HTTP/1.1 413")

    # Streamed without a length (chunked): refused once the limit is crossed.
    def chunks():
        yield b'{"namespace": ["' + tenant.encode() + b'"], "key": "big", "value": {"content": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}}'

    with httpx.Client(base_url=server.url, headers={"x-api-key": key}, timeout=30) as raw:
        streamed = raw.put("/store/items", content=chunks())
    assert streamed.status_code == 413 and "max_body_bytes" in streamed.json()["detail"]
    assert store.get_item([tenant], "big") is None



def test_requests_are_counted_and_timed_by_route_and_status(server):
    tenant = _tenant()
    key = server.key(tenant)
    put = 'memory_api_requests_total{method="PUT",route="/store/items",status="204"}'
    big = 'memory_api_requests_total{method="PUT",route="/store/items",status="413"}'
    other = 'memory_api_requests_total{method="GET",route="other",status="404"}'
    timed = 'memory_api_request_duration_seconds_count{route="/store/items"}'
    before = {name: _metric_or_0(server, name) for name in (put, big, other, timed)}
    store = server.client(key).store
    store.put_item([tenant], "a", {"n": 1})
    store.put_item([tenant], "b", {"n": 2})
    with pytest.raises(Exception):
        store.put_item([tenant], "big", {"content": "x" * (MAX_BODY + 1)})
    assert httpx.get(f"{server.url}/no/such/{uuid.uuid4().hex}", timeout=10).status_code == 404
    after = {name: _metric_or_0(server, name) for name in before}
    assert after[put] - before[put] == 2 and after[big] - before[big] == 1 and after[other] - before[other] == 1
    assert after[timed] - before[timed] == 3


def _metric_or_0(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

# -- the server under abuse -------------------------------------------------------------------------


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def test_half_open_sockets_do_not_starve_the_server_and_are_closed_after_the_read_timeout(server):
    host, port = _host_port(server.url)
    tenant = _tenant()
    store = server.client(server.key(tenant)).store
    sockets = []
    try:
        for n in range(40):
            sock = socket.create_connection((host, port), timeout=5)
            if n % 2:  # half of them half-open their second request, after a keep-alive first one
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = b""
                while not reply.endswith(b"ok\n"):
                    reply += sock.recv(1024)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < READ_TIMEOUT_S + 1.5:
            for sock in sockets:  # keep trickling: a byte resets no timer
                try:
                    sock.sendall(b"X")
                except OSError:
                    pass
            assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
            store.put_item([tenant], f"k{answered}", {"n": answered})
            assert store.get_item([tenant], f"k{answered}")["value"] == {"n": answered}
            answered += 1
            time.sleep(0.2)
        assert answered >= 3
        closed = 0
        for sock in sockets:
            sock.settimeout(5)
            try:
                closed += sock.recv(1024) == b""
            except (ConnectionResetError, BrokenPipeError):
                closed += 1
        assert closed == len(sockets), f"{len(sockets) - closed} half-open sockets still open after the read timeout"
    finally:
        for sock in sockets:
            sock.close()


def _raw_reply(url: str, *pieces: bytes) -> bytes:
    """What the server answers to `pieces` sent in turn; b"" when it reset the connection unanswered."""
    reply = b""
    with socket.create_connection(_host_port(url), timeout=10) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
            while chunk := sock.recv(65536):
                reply += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return reply


def test_a_head_over_the_limit_is_refused_however_it_arrives(server):
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD + 1024) + b"\r\n\r\n"
    at_once = _raw_reply(server.url, head)
    assert at_once.startswith(b"HTTP/1.1 431"), at_once[:100]
    in_pieces = _raw_reply(server.url, *(head[i : i + 4096] for i in range(0, len(head), 4096)))
    assert in_pieces == b"" or in_pieces.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), in_pieces[:100]
    # A head that never ends is refused once over the limit, not buffered until the read timeout.
    # (Sent up to 1 KiB past the limit and no further, so the refusal is read before any reset.)
    endless = head.removesuffix(b"\r\n\r\n")
    refused = _raw_reply(server.url, *(endless[i : i + 4096] for i in range(0, len(endless), 4096)))
    assert refused.startswith(b"HTTP/1.1 431") and b"max_header_bytes" in refused, refused[:100]
    assert _raw_reply(server.url, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")


def _ready_checks(server: Server) -> float:
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    [line] = [line for line in metrics.splitlines() if line.startswith("memory_ready_checks_total ")]
    return float(line.split()[1])


def test_a_ready_burst_costs_few_database_checks_and_starves_nothing(server):
    tenant = _tenant()
    store = server.client(server.key(tenant)).store
    before = _ready_checks(server)
    stop = threading.Event()
    answered: list[int] = []

    def others() -> None:
        n = 0
        while not stop.is_set():
            assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
            store.put_item([tenant], f"k{n}", {"n": n})
            answered.append(n)
            n += 1

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(max_workers=33) as pool:
        side = pool.submit(others)
        statuses = list(pool.map(lambda _: client.get(f"{server.url}/ready").status_code, range(300)))
        stop.set()
        side.result()
    assert statuses == [200] * 300
    assert answered, "no API call answered during the /ready burst"
    checks = _ready_checks(server) - before
    assert 1 <= checks <= 30, f"{checks} database checks for 300 /ready"


# -- JWT ---------------------------------------------------------------------------------------------


def test_jwt_credentials_give_the_tenant_of_their_claim(api_database):
    child, url = _start(api_database, {
        "MEMORY_API_AUTH": "jwt", "MEMORY_API_JWT_SECRET": JWT_SECRET,
        "MEMORY_API_JWT_TENANT_CLAIM": "org", "MEMORY_API_JWT_ADMIN_CLAIM": "ops",
    }, "--no-jobs")
    try:
        tenant, other = _tenant("j"), _tenant("k")
        exp = datetime.now(timezone.utc) + timedelta(minutes=5)
        token = jwt.encode({"org": tenant, "exp": exp}, JWT_SECRET, algorithm="HS256")
        store = _sync_client(url, api_key=token).store
        store.put_item([tenant, "memories"], "/a.md", {"content": "a"})
        assert store.get_item([tenant, "memories"], "/a.md")["value"] == {"content": "a"}
        with pytest.raises(PermissionDeniedError):
            store.put_item([other, "memories"], "/a.md", {"content": "a"})
        bearer = _sync_client(url, api_key=None, headers={"Authorization": f"Bearer {token}"}).store
        assert [i["key"] for i in bearer.search_items([])["items"]] == ["/a.md"]

        admin = jwt.encode({"ops": True, "exp": exp}, JWT_SECRET, algorithm="HS256")
        assert _sync_client(url, api_key=admin).store.get_item([tenant, "memories"], "/a.md") is not None
        for bad in (
            jwt.encode({"org": tenant, "exp": datetime.now(timezone.utc) - timedelta(minutes=1)}, JWT_SECRET, algorithm="HS256"),
            jwt.encode({"org": tenant}, JWT_SECRET, algorithm="HS256"),  # no exp
            jwt.encode({"org": tenant, "exp": exp}, "another secret " + "y" * 64, algorithm="HS256"),
            jwt.encode({"org": "a.b", "exp": exp}, JWT_SECRET, algorithm="HS256"),
            jwt.encode({"exp": exp}, JWT_SECRET, algorithm="HS256"),
            jwt.encode({"org": tenant, "exp": exp}, JWT_SECRET, algorithm="HS512"),  # not an allowed algorithm
        ):
            with pytest.raises(AuthenticationError):
                _sync_client(url, api_key=bad).store.get_item([tenant, "memories"], "/a.md")
    finally:
        _stop(child)


# -- the CLI -----------------------------------------------------------------------------------------


def _memory(database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memory", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "MEMORY_DATABASE_URL": database_url},
    )


def test_keys_create_list_revoke_from_the_cli(server):
    tenant = _tenant()
    created = _memory(server.database_url, "keys", "create", tenant, "--name", "ci bot")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("mem_") and len(created.stdout.splitlines()) == 1
    assert "shown only now" in created.stderr
    store = server.client(secret).store
    store.put_item([tenant], "k", {"a": 1})

    listed = _memory(server.database_url, "keys", "list", "--json")
    [key] = [k for k in json.loads(listed.stdout) if k["tenant"] == tenant]
    assert key["name"] == "ci bot" and not key["admin"] and key["revoked_at"] is None
    assert key["last_used_at"] is not None and secret not in listed.stdout
    with _connect(server.database_url) as conn:
        stored = conn.execute("SELECT key_hash FROM memory_api_keys WHERE id = %s", (key["id"],)).fetchone()["key_hash"]
    assert secret not in stored and len(stored) == 64

    revoked = _memory(server.database_url, "keys", "revoke", key["id"])
    assert revoked.returncode == 0 and f"revoked key {key['id']}" in revoked.stdout
    with pytest.raises(AuthenticationError):
        store.get_item([tenant], "k")

    unknown = _memory(server.database_url, "keys", "revoke", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr == "error: no API key with id 'nope'; `memory keys list` shows the ids\n"
    bad = _memory(server.database_url, "keys", "create", "a.b")
    assert bad.returncode == 1 and bad.stderr.startswith("error: tenant 'a.b' contains '.'")


# -- --no-jobs and --jobs-only -------------------------------------------------------------------------


def _serve_in_thread(svc, **kwargs):
    from memory.serve import serve

    stop = threading.Event()
    ready: dict[str, object] = {}
    thread = threading.Thread(
        target=serve,
        kwargs={"svc": svc, "host": "127.0.0.1", "port": 0, "stop": stop,
                "on_ready": lambda url, jobs: ready.update(url=url, jobs=jobs), **kwargs},
    )
    thread.start()
    deadline = time.monotonic() + 60
    while "url" not in ready and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return thread, stop, ready


def test_jobs_only_serves_no_store_api_and_no_jobs_runs_no_job(database_url):
    from apscheduler.triggers.cron import CronTrigger

    from jobs.scheduler import ScheduledJob, job_runners

    with MemoryService.open(database_url=database_url, database_pool_max_size=3) as svc:
        every_second = ScheduledJob("ttl_cleanup", CronTrigger(second="*", timezone=timezone.utc),
                                    job_runners(svc.settings)["ttl_cleanup"], "* * * * * *")
        with _connect(database_url) as conn:
            key = create_key(conn, "acme")[1]
        for mode in ("jobs_only", "no_jobs"):
            thread, stop, ready = _serve_in_thread(svc, jobs=[every_second], **{mode: True})
            try:
                base = ready["url"]
                assert httpx.get(f"{base}/health", timeout=10).status_code == 200
                assert httpx.get(f"{base}/ready", timeout=10).status_code == 200
                search = httpx.post(f"{base}/store/items/search", json={}, headers={"x-api-key": key}, timeout=10)
                if mode == "jobs_only":
                    assert [job.name for job in ready["jobs"]] == ["ttl_cleanup"]
                    assert search.status_code == 404
                    deadline = time.monotonic() + 30
                    while _job_runs(database_url) == 0 and time.monotonic() < deadline:
                        time.sleep(0.2)
                    assert _job_runs(database_url) >= 1
                else:
                    assert ready["jobs"] == []
                    assert search.status_code == 200 and search.json() == {"items": []}
                    before = _job_runs(database_url)
                    time.sleep(2.5)  # two ticks of the every-second trigger, had it been scheduled
                    assert _job_runs(database_url) == before
                    metrics = httpx.get(f"{base}/metrics", timeout=10).text
                    assert 'memory_job_runs_total{job="ttl_cleanup",status="succeeded"} 0.0' in metrics
            finally:
                stop.set()
                thread.join(timeout=60)
            assert not thread.is_alive()


def _job_runs(database_url: str) -> int:
    with _connect(database_url) as conn:
        return conn.execute("SELECT count(*) AS n FROM memory_job_runs WHERE status <> 'running'").fetchone()["n"]


def test_no_jobs_and_jobs_only_together_is_one_error_line(database_url):
    done = _memory(database_url, "serve", "--no-jobs", "--jobs-only", "--port", "0")
    assert done.returncode == 1
    assert done.stderr == "error: --no-jobs and --jobs-only exclude each other: pass one (or neither for both)\n"
