"""Retention: policy precedence and validation, expiry on write, expired rows invisible, TTL cleanup.

The cleanup runs against real PostgreSQL (both servers); "time passes" by moving rows' updated_at
and expires_at back, the way rows written days ago look.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from langgraph.store.base import PutOp
from psycopg.rows import dict_row

from jobs import runs
from jobs.ttl_cleanup import JOB, ttl_cleanup
from memory import MemoryService, bind_tenant
from memory.errors import ConfigError, LegalHoldError
from memory.retention import PolicyError, RetentionPolicy, Rule
from memory.settings import MemorySettings
from memory.tenancy import tenant_namespace

from conftest import TEMPLATE

ROOT = Path(__file__).resolve().parent.parent

POLICY_SETTINGS = {
    "retention_default_ttl_days": 30,
    "retention_rules": [
        {"path": "/memories/scratch/", "ttl_days": 7},
        {"path": "/memories/scratch/keep/", "ttl_days": 0},
        {"tenant": "globex", "path": "/memories/", "ttl_days": 90},
        {"tenant": "globex", "path": "/memories/scratch/", "ttl_days": 1},
    ],
    "retention_legal_hold": ["initech"],
}
POLICY = MemorySettings.load(**POLICY_SETTINGS).retention_policy()
TENANTS = ("acme", "acme_", "globex", "initech")
"""`acme_` sorts next to acme and LIKE-matches it if anything used LIKE; initech is under legal hold."""

# Test-side SQL: moving rows back in time and reading what the store holds.
AGE_ROWS = """
UPDATE store s
   SET updated_at = s.updated_at - make_interval(secs => d.seconds),
       created_at = s.created_at - make_interval(secs => d.seconds),
       expires_at = s.expires_at - make_interval(secs => d.seconds)
  FROM unnest(%(prefixes)s::text[], %(keys)s::text[], %(seconds)s::float8[]) AS d(prefix, key, seconds)
 WHERE s.prefix = d.prefix AND s.key = d.key
"""
STORE_ROWS = "SELECT prefix, key, updated_at, expires_at, ttl_minutes, value FROM store ORDER BY prefix, key"
TTL_OF = """
SELECT ttl_minutes, expires_at - updated_at AS lifetime, expires_at
  FROM store WHERE prefix = %(prefix)s AND key = %(key)s
"""
VECTOR_KEYS = "SELECT DISTINCT prefix, key FROM store_vectors"
INSERT_EXPIRED = """
INSERT INTO store (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes)
SELECT %(prefix)s, '/scratch/' || lpad(i::text, 6, '0') || '.md',
       jsonb_build_object('content', 'x', 'encoding', 'utf-8'),
       now() - interval '8 days', now() - interval '8 days', now() - interval '1 day', 10080
  FROM generate_series(1, %(count)s) AS i
"""
INSERT_VECTORS = """
INSERT INTO store_vectors (prefix, key, field_name, embedding)
SELECT prefix, key, 'content', array_fill(0.5, ARRAY[%(dims)s])::vector FROM store
"""
ITEMS_WITHOUT_VECTORS = """
SELECT count(*) AS n FROM store s
 WHERE NOT EXISTS (SELECT 1 FROM store_vectors v WHERE v.prefix = s.prefix AND v.key = s.key)
"""


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def _age(url: str, rows: list[tuple[str, str, float]]) -> None:
    """Move rows (namespace text, key, days) back by that many days."""
    with _connect(url) as conn:
        conn.execute(
            AGE_ROWS,
            {
                "prefixes": [p for p, _, _ in rows],
                "keys": [k for _, k, _ in rows],
                "seconds": [float(d) * 86400 for _, _, d in rows],
            },
        )


def _rows(url: str) -> list[dict]:
    with _connect(url) as conn:
        return conn.execute(STORE_ROWS).fetchall()


@pytest.fixture
def policy_service(database_url: str) -> Iterator[MemoryService]:
    with MemoryService.open(database_url=database_url, database_pool_max_size=8, **POLICY_SETTINGS) as svc:
        yield svc


# -- the policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "key", "days"),
    [
        ("acme", "/notes.md", 30),  # default
        ("acme", "/scratch/a.md", 7),  # path rule
        ("acme", "/scratch/deeper/a.md", 7),  # path prefix covers subfolders
        ("acme", "/scratch/keep/a.md", None),  # longer path wins; 0 keeps forever
        ("acme", "/scratchpad.md", 30),  # a folder rule is not a string prefix of names
        ("globex", "/notes.md", 90),  # tenant rule beats the default
        ("globex", "/scratch/a.md", 1),  # tenant + longest path beats all
        ("globex", "/scratch/keep/a.md", 1),  # a tenant rule beats a longer tenant-less path
        ("initech", "/scratch/a.md", None),  # legal hold: never expires
        ("initech", "/notes.md", None),
    ],
)
def test_most_specific_rule_wins(tenant, key, days):
    assert POLICY.ttl_days_for(tenant, key) == days
    minutes = POLICY.ttl_minutes_for((tenant, "memories"), key)
    assert minutes == (None if days is None else days * 24 * 60)


def test_rules_are_ordered_most_specific_first_for_sql():
    params = POLICY.sql_params()
    assert list(zip(params["rule_tenants"], params["rule_key_prefixes"], strict=True)) == [
        ("globex", "/scratch/"),
        ("globex", "/"),
        (None, "/scratch/keep/"),
        (None, "/scratch/"),
        (None, "/"),
    ]
    assert params["rule_ttl_seconds"] == [86400, 90 * 86400, None, 7 * 86400, 30 * 86400]
    assert params["held"] == ["initech"]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"retention_rules": [{"path": "/memories/a/", "ttl_days": 1}, {"path": "/memories/a/", "ttl_days": 2}]},
            "invalid configuration: [retention] rules[0] and rules[1] both cover path '/memories/a/' of every tenant "
            "with different ttl_days (1 and 2); keep one",
        ),
        (
            {"retention_rules": [{"path": "/memories/a/", "ttl_days": -1}]},
            "invalid configuration: [retention] rules (MEMORY_RETENTION_RULES) at 0.ttl_days: "
            "Input should be greater than or equal to 0 (got -1)",
        ),
        (
            {"retention_default_ttl_days": -3},
            "invalid configuration: [retention] default_ttl_days (MEMORY_RETENTION_DEFAULT_TTL_DAYS): "
            "Input should be greater than or equal to 0 (got -3)",
        ),
        (
            {"retention_rules": [{"path": "/memories/a/", "ttl_days": 1, "tenants": "acme"}]},
            "invalid configuration: [retention] rules (MEMORY_RETENTION_RULES) at 0.tenants: unknown key",
        ),
        (
            {"retention_rules": [{"path": "/scratch/", "ttl_days": 1}]},
            "invalid configuration: [retention] rules[0].path is '/scratch/'; use a folder under /memories/ "
            "ending in '/', without wildcards, e.g. '/memories/scratch/'",
        ),
        (
            {"retention_legal_hold": ["acme.*"]},
            "invalid configuration: [retention] legal_hold: tenant 'acme.*' contains '.'; "
            "use only letters, digits and - _ @ + : ~",
        ),
    ],
)
def test_invalid_policy_is_refused_with_one_line(settings, expected):
    with pytest.raises(ConfigError) as caught:
        MemorySettings.load(**settings)
    assert str(caught.value) == expected
    assert "\n" not in str(caught.value)


def test_same_rule_twice_with_the_same_ttl_is_not_an_overlap():
    policy = RetentionPolicy.build(rules=[Rule(7, "/memories/a/"), Rule(7, "/memories/a/"), Rule(1, "/memories/a/", "acme")])
    assert policy.ttl_days_for("acme", "/a/x") == 1
    assert policy.ttl_days_for("globex", "/a/x") == 7
    with pytest.raises(PolicyError, match="shortest TTL is one minute"):
        RetentionPolicy.build(rules=[Rule(0.0001, "/memories/a/")])


BAD_CONFIGS = {
    "overlap": (
        '[[retention.rules]]\npath = "/memories/a/"\nttl_days = 1\n[[retention.rules]]\npath = "/memories/a/"\nttl_days = 2\n',
        "error: invalid configuration: [retention] rules[0] and rules[1] both cover path '/memories/a/'",
    ),
    "negative": ("[retention]\ndefault_ttl_days = -1\n", "error: invalid configuration: [retention] default_ttl_days"),
    "unknown key": ("[retention]\nttl = 3\n", "error: invalid configuration: [retention] ttl (MEMORY_RETENTION_TTL): unknown setting"),
    "bad cron": ('[schedule]\nttl_cleanup = "every 5 minutes"\n', "error: invalid configuration: [schedule] ttl_cleanup"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_and_a_non_zero_exit(case, tmp_path):
    toml, start = BAD_CONFIGS[case]
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    env = {**os.environ, "MEMORY_CONFIG": str(config), "MEMORY_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    done = subprocess.run(
        [sys.executable, "-m", "memory", "jobs", "run", "ttl-cleanup", "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(start), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""


# -- expiry on write ---------------------------------------------------------------------------


def _ttl_of(url: str, tenant: str, key: str) -> dict:
    with _connect(url) as conn:
        return conn.execute(TTL_OF, {"prefix": f"{tenant}.memories", "key": key}).fetchone()


def _assert_ttl(url: str, tenant: str, key: str, days: float | None) -> None:
    row = _ttl_of(url, tenant, key)
    if days is None:
        assert row["ttl_minutes"] is None and row["expires_at"] is None, row
    else:
        assert row["ttl_minutes"] == days * 24 * 60, row
        assert row["lifetime"] == timedelta(days=days), row


def test_write_edit_and_upload_put_each_item_with_its_policy_ttl(policy_service, database_url):
    backend = policy_service.memory_backend()
    for tenant in ("acme", "globex", "initech"):
        with bind_tenant(tenant):
            assert backend.write("/notes.md", "hello\n").error is None
            assert backend.write("/scratch/a.md", "draft\n").error is None
            assert backend.write("/scratch/keep/k.md", "kept\n").error is None
            backend.upload_files([("/scratch/up.bin", b"\xff\x00binary"), ("/up.md", b"text")])
    for tenant in ("acme", "globex", "initech"):
        for key in ("/notes.md", "/scratch/a.md", "/scratch/keep/k.md", "/scratch/up.bin", "/up.md"):
            _assert_ttl(database_url, tenant, key, POLICY.ttl_days_for(tenant, key))

    # An edit (compare-and-swap) restamps the TTL the policy gives now.
    _age(database_url, [("acme.memories", "/scratch/a.md", 2)])
    with bind_tenant("acme"):
        assert backend.edit("/scratch/a.md", "draft", "final").error is None
    _assert_ttl(database_url, "acme", "/scratch/a.md", 7)

    # A policy change reaches an item at its next write or edit.
    changed = {**POLICY_SETTINGS, "retention_rules": [{"path": "/memories/scratch/", "ttl_days": 3}]}
    with MemoryService.open(database_url=database_url, database_pool_max_size=2, **changed) as svc:
        with bind_tenant("acme"):
            assert svc.memory_backend().edit("/scratch/a.md", "final", "again").error is None
            assert svc.memory_backend().write("/notes.md", "rewritten\n").error is None
    _assert_ttl(database_url, "acme", "/scratch/a.md", 3)
    _assert_ttl(database_url, "acme", "/notes.md", 30)


def test_async_write_puts_the_policy_ttl(database_url):
    async def main() -> None:
        async with MemoryService.aopen(database_url=database_url, database_pool_max_size=2, **POLICY_SETTINGS) as svc:
            with bind_tenant("globex"):
                result = await svc.memory_backend().awrite("/scratch/a.md", "async draft\n")
                assert result.error is None
                edited = await svc.memory_backend().aedit("/scratch/a.md", "async", "still async")
                assert edited.error is None

    asyncio.run(main())
    _assert_ttl(database_url, "globex", "/scratch/a.md", 1)


# -- expired but not yet swept -----------------------------------------------------------------


def test_expired_items_are_invisible_and_never_revived(policy_service, database_url):
    backend = policy_service.memory_backend()
    with bind_tenant("acme"):
        backend.write("/scratch/old.md", "needle in an old draft\n")
        backend.write("/scratch/fresh.md", "needle in a fresh draft\n")
        backend.write("/notes.md", "needle in notes\n")
    _age(database_url, [("acme.memories", "/scratch/old.md", 8), ("acme.memories", "/scratch/fresh.md", 2)])
    expired_before = _ttl_of(database_url, "acme", "/scratch/old.md")["expires_at"]
    fresh_before = _ttl_of(database_url, "acme", "/scratch/fresh.md")["expires_at"]

    with bind_tenant("acme"):
        assert backend.read("/scratch/old.md").error == "File '/scratch/old.md' not found"
        assert [e["path"] for e in backend.ls("/").entries] == ["/notes.md", "/scratch/"]
        assert [e["path"] for e in backend.ls("/scratch/").entries] == ["/scratch/fresh.md"]
        assert sorted(m["path"] for m in backend.glob("**/*.md").matches) == ["/notes.md", "/scratch/fresh.md"]
        assert sorted(m["path"] for m in backend.grep("needle").matches) == ["/notes.md", "/scratch/fresh.md"]
        assert backend.edit("/scratch/old.md", "needle", "pin").error == "Error: File '/scratch/old.md' not found"
        assert [r.error for r in backend.download_files(["/scratch/old.md"])] == ["file_not_found"]
        assert backend.read("/scratch/fresh.md").error is None

    # Reads did not bring the expired row back; refresh on read moved the live one forward.
    assert _ttl_of(database_url, "acme", "/scratch/old.md")["expires_at"] == expired_before
    assert _ttl_of(database_url, "acme", "/scratch/fresh.md")["expires_at"] > fresh_before + timedelta(days=1)

    # Writing the path again starts a new file, not the expired one.
    with bind_tenant("acme"):
        backend.write("/scratch/old.md", "new\n")
        assert backend.read("/scratch/old.md").file_data["content"] == "new\n"


def test_refresh_on_read_off_leaves_expiry_alone(database_url):
    settings = {**POLICY_SETTINGS, "retention_refresh_on_read": False}
    with MemoryService.open(database_url=database_url, database_pool_max_size=2, **settings) as svc:
        backend = svc.memory_backend()
        with bind_tenant("acme"):
            backend.write("/scratch/a.md", "draft\n")
        _age(database_url, [("acme.memories", "/scratch/a.md", 2)])
        before = _ttl_of(database_url, "acme", "/scratch/a.md")["expires_at"]
        with bind_tenant("acme"):
            assert backend.read("/scratch/a.md").error is None
            assert backend.ls("/scratch/").entries
        assert _ttl_of(database_url, "acme", "/scratch/a.md")["expires_at"] == before


# -- the cleanup job ---------------------------------------------------------------------------

DIRS = ("/", "/scratch/", "/scratch/keep/", "/deep/er/")
AGES = (0.5, 1.5, 8, 40, 100)
STAMPS = ("policy", "none", "long")
"""Written with the policy TTL, with no expiry (before any policy), with an older 365-day TTL."""


def _dataset(svc: MemoryService, url: str) -> dict[tuple[str, str], bool]:
    """Rows of every tenant, folder, age and stamp; returns (namespace text, key) -> expired?"""
    expected: dict[tuple[str, str], bool] = {}
    ops, aging = [], []
    for tenant, folder, (i, age), stamp in itertools.product(TENANTS, DIRS, enumerate(AGES), STAMPS):
        key = f"{folder}f{i}-{stamp}.md"
        namespace = tenant_namespace(tenant)
        policy_days = POLICY.ttl_days_for(tenant, key)
        stamped_days = {"policy": policy_days, "none": None, "long": 365}[stamp]
        ttl = None if stamped_days is None else stamped_days * 24 * 60
        ops.append(PutOp(namespace, key, {"content": f"{tenant} {key}\n", "encoding": "utf-8"}, ttl=ttl))
        aging.append((".".join(namespace), key, age))
        expired = (stamped_days is not None and age >= stamped_days) or (policy_days is not None and age >= policy_days)
        expected[(".".join(namespace), key)] = expired and tenant not in POLICY.legal_hold
    # Other namespaces: only their own expiry counts, never the memory policy.
    ops.append(PutOp(("acme", "other"), "/expired", {"content": "x"}, ttl=60))
    ops.append(PutOp(("acme", "other"), "/old-no-ttl", {"content": "x"}))
    aging += [("acme.other", "/expired", 1), ("acme.other", "/old-no-ttl", 400)]
    expected[("acme.other", "/expired")] = True
    expected[("acme.other", "/old-no-ttl")] = False
    svc.store.batch(ops)
    _age(url, aging)
    return expected


def _per_tenant(keys) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for prefix, _ in keys:
        per = counts.setdefault(prefix.split(".")[0], {})
        per["items"] = per.get("items", 0) + 1
    return counts


def test_dry_run_changes_nothing_and_a_real_run_deletes_exactly_the_expired(policy_service, database_url):
    expected = _dataset(policy_service, database_url)
    doomed = {k for k, gone in expected.items() if gone}
    assert doomed and len(doomed) < len(expected)
    assert not any(prefix.startswith("initech.") for prefix, _ in doomed)
    before = _rows(database_url)

    with psycopg.connect(database_url, autocommit=True) as conn:
        dry = ttl_cleanup(conn, POLICY, dry_run=True, batch_size=7)
    assert _rows(database_url) == before
    assert dry.status == "succeeded" and dry.dry_run
    assert dry.counts["items"] == len(doomed)
    assert dry.tenant_counts == _per_tenant(doomed)

    with psycopg.connect(database_url, autocommit=True) as conn:
        real = ttl_cleanup(conn, POLICY, batch_size=7)
    remaining = {(r["prefix"], r["key"]) for r in _rows(database_url)}
    assert remaining == set(expected) - doomed
    assert real.counts["items"] == len(doomed) == dry.counts["items"]
    assert real.counts["by_expiry"] + real.counts["by_policy"] == len(doomed)
    assert real.counts["by_policy"] > 0 and real.counts["by_expiry"] > 0
    assert real.tenant_counts == dry.tenant_counts
    assert real.counts["batches"] > 1  # slices of the table, each its own transaction

    with psycopg.connect(database_url, autocommit=True) as conn:
        again = ttl_cleanup(conn, POLICY)
        history = runs.history(conn, 10, JOB)
    assert again.counts["items"] == 0
    assert [(r.status, r.dry_run, r.counts["items"]) for r in history] == [
        ("succeeded", False, 0),
        ("succeeded", False, len(doomed)),
        ("succeeded", True, len(doomed)),
    ]
    assert history[1].tenant_counts == real.tenant_counts
    assert all(r.finished_at >= r.started_at and r.host for r in history)


def test_one_tenant_at_a_time(policy_service, database_url):
    expected = _dataset(policy_service, database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        report = ttl_cleanup(conn, POLICY, tenant="acme_")
        with pytest.raises(LegalHoldError, match=r"tenant 'initech' is under legal hold .*nothing was changed"):
            ttl_cleanup(conn, POLICY, tenant="initech")
    remaining = {(r["prefix"], r["key"]) for r in _rows(database_url)}
    gone = {k for k, expired in expected.items() if expired and k[0].split(".")[0] == "acme_"}
    assert remaining == set(expected) - gone
    assert report.tenant_counts == _per_tenant(gone)


def test_a_policy_change_applies_at_the_next_cleanup(database_url):
    with MemoryService.open(database_url=database_url, database_pool_max_size=2, retention_rules=[]) as svc:
        with bind_tenant("acme"):
            svc.memory_backend().write("/scratch/a.md", "no expiry when written\n")
            svc.memory_backend().write("/b.md", "kept\n")
    _age(database_url, [("acme.memories", "/scratch/a.md", 8), ("acme.memories", "/b.md", 8)])
    assert _ttl_of(database_url, "acme", "/scratch/a.md")["expires_at"] is None
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert ttl_cleanup(conn, RetentionPolicy()).counts["items"] == 0
        report = ttl_cleanup(conn, RetentionPolicy.build(rules=[Rule(7, "/memories/scratch/")]))
    assert report.counts == {**report.counts, "items": 1, "by_policy": 1, "by_expiry": 0}
    assert {(r["prefix"], r["key"]) for r in _rows(database_url)} == {("acme.memories", "/b.md")}


def test_a_running_cleanup_holds_the_job_lock(database_url):
    with psycopg.connect(database_url, autocommit=True) as holder, runs.job_lock(holder, JOB) as acquired:
        assert acquired
        with psycopg.connect(database_url, autocommit=True) as conn, pytest.raises(runs.JobBusy, match="already running"):
            ttl_cleanup(conn, POLICY)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert ttl_cleanup(conn, POLICY).status == "succeeded"


def test_stop_between_batches_commits_whole_batches(database_url):
    with _connect(database_url) as conn:
        conn.execute(INSERT_EXPIRED, {"prefix": "acme.memories", "count": 500})
    import threading

    stop = threading.Event()
    with psycopg.connect(database_url, autocommit=True) as conn:
        report = ttl_cleanup(conn, POLICY, batch_size=10, stop=stop, on_batch=lambda r: stop.set())
        assert report.status == "failed" and "interrupted" in report.error
        assert report.counts["batches"] == 1
        assert 0 < report.counts["items"] < 100  # the first slice of the table: a block or so
        assert len(_rows(database_url)) == 500 - report.counts["items"]
        rest = ttl_cleanup(conn, POLICY, batch_size=10)
    assert rest.counts["items"] == 500 - report.counts["items"] and rest.status == "succeeded"
    assert _rows(database_url) == []


# -- vectors go with their items ---------------------------------------------------------------


@pytest.fixture
def vector_database_url(embedded_server) -> Iterator[str]:
    name = f"memory_test_{uuid.uuid4().hex[:12]}"
    url = embedded_server.create_database(name, template=TEMPLATE)
    with MemoryService.open(database_url=url, database_pool_max_size=2, index_dims=8, index_embed="fake") as svc:
        svc.setup()
    yield url
    embedded_server.drop_database(name)


def test_vectors_are_deleted_with_their_items(vector_database_url):
    url = vector_database_url
    settings = {**POLICY_SETTINGS, "index_dims": 8, "index_embed": "fake"}
    with MemoryService.open(database_url=url, database_pool_max_size=2, **settings) as svc:
        backend = svc.memory_backend()
        for tenant in ("acme", "initech"):
            with bind_tenant(tenant):
                backend.write("/scratch/old.md", "old draft\n")
                backend.write("/scratch/new.md", "new draft\n")
                backend.write("/notes.md", "notes\n")
    _age(url, [(f"{t}.memories", "/scratch/old.md", 8) for t in ("acme", "initech")])
    with _connect(url) as conn:
        assert len(conn.execute(VECTOR_KEYS).fetchall()) == 6
    with psycopg.connect(url, autocommit=True) as conn:
        dry = ttl_cleanup(conn, POLICY, dry_run=True)
        report = ttl_cleanup(conn, POLICY)
    assert dry.counts["vectors"] == report.counts["vectors"] == 1
    assert report.tenant_counts == {"acme": {"items": 1, "vectors": 1}}
    with _connect(url) as conn:
        vector_keys = {(r["prefix"], r["key"]) for r in conn.execute(VECTOR_KEYS).fetchall()}
    assert vector_keys == {(r["prefix"], r["key"]) for r in _rows(url)}
    assert ("acme.memories", "/scratch/old.md") not in vector_keys
    assert ("initech.memories", "/scratch/old.md") in vector_keys


# -- killed mid-run ----------------------------------------------------------------------------

KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    import psycopg
    from jobs.ttl_cleanup import ttl_cleanup
    from memory.retention import RetentionPolicy, Rule

    def on_batch(report):
        print("batch", report.counts["batches"], report.counts["items"], flush=True)
        time.sleep(0.05)

    with psycopg.connect(sys.argv[1], autocommit=True) as conn:
        ttl_cleanup(conn, RetentionPolicy.build(rules=[Rule(7, "/memories/scratch/")]), batch_size=100,
                    walk=sys.argv[2], on_batch=on_batch)
    print("finished", flush=True)
    """
)


@pytest.fixture(params=["plain", "vectors"])
def kill_database_url(request, database_url, pg_server) -> str:
    """A database with (vectors) or without (plain) the store_vectors table."""
    if request.param == "vectors":
        if pg_server.name != "pg18":
            pytest.skip("vectors need pgvector (the embedded server)")
        with MemoryService.open(database_url=database_url, database_pool_max_size=2, index_dims=4, index_embed="fake") as svc:
            svc.setup()
    return database_url


def test_sigkill_mid_run_leaves_whole_items_and_the_next_run_finishes(kill_database_url):
    url = kill_database_url
    total = 3000
    with _connect(url) as conn:
        conn.execute(INSERT_EXPIRED, {"prefix": "acme.memories", "count": total})
        has_vectors = conn.execute("SELECT to_regclass('store_vectors') IS NOT NULL AS v").fetchone()["v"]
        if has_vectors:
            conn.execute(INSERT_VECTORS, {"dims": 4})
    with subprocess.Popen([sys.executable, "-c", KILLED_RUN, url, "heap"], cwd=ROOT, stdout=subprocess.PIPE, text=True) as child:
        try:
            seen = [child.stdout.readline() for _ in range(3)]
            assert all(line.startswith("batch") for line in seen), seen
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            seen += child.stdout.readlines()
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == -signal.SIGKILL

    remaining = len(_rows(url))
    committed = {int(line.split()[2]) for line in seen if line.startswith("batch")}
    assert 0 < remaining < total
    # Whole batches only: what is gone is what the batches reported (the kill lands in the pause
    # after a batch or in the middle of the next one's statement, which then never happened).
    assert total - remaining in committed, (total - remaining, sorted(committed))
    with _connect(url) as conn:
        if has_vectors:
            assert conn.execute(ITEMS_WITHOUT_VECTORS).fetchone()["n"] == 0
    with psycopg.connect(url, autocommit=True) as conn:
        (killed,) = runs.history(conn, 1, JOB)
        assert killed.status == "running"
        report = ttl_cleanup(conn, POLICY)
        history = runs.history(conn, 2, JOB)
    assert report.counts["items"] == remaining and report.counts["abandoned_runs"] == 1
    if has_vectors:
        assert report.counts["vectors"] == remaining
    assert _rows(url) == []
    assert [(r.run_id, r.status) for r in history] == [(report.run_id, "succeeded"), (killed.run_id, "failed")]
    assert history[1].error == runs.ABANDONED


# -- the CLI -----------------------------------------------------------------------------------


def _memory(*args: str, url: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memory", *args],
        cwd=ROOT, env={**os.environ, "MEMORY_DATABASE_URL": url, **env},
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.servers("pg18")  # CLI wiring; the library tests cover its SQL on both servers
def test_cli_runs_and_lists_the_job(database_url):
    with _connect(database_url) as conn:
        conn.execute(INSERT_EXPIRED, {"prefix": "acme.memories", "count": 5})
        conn.execute(INSERT_EXPIRED, {"prefix": "globex.memories", "count": 3})
    dry = _memory("jobs", "run", "ttl-cleanup", "--dry-run", "--json", url=database_url)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["tenant_counts"] == {"acme": {"items": 5}, "globex": {"items": 3}}
    assert len(_rows(database_url)) == 8

    one = _memory("jobs", "run", "ttl-cleanup", "--tenant", "globex", url=database_url)
    assert one.returncode == 0, one.stderr
    assert "deleted 3 memory files" in one.stdout
    held = _memory("jobs", "run", "ttl-cleanup", "--json", url=database_url, MEMORY_RETENTION_LEGAL_HOLD='["acme"]')
    assert json.loads(held.stdout)["counts"]["items"] == 0
    assert len(_rows(database_url)) == 5

    history = _memory("jobs", "history", "--json", "--limit", "2", url=database_url)
    assert history.returncode == 0, history.stderr
    assert [(r["dry_run"], r["counts"]["items"]) for r in json.loads(history.stdout)] == [(False, 0), (False, 3)]

    bad_tenant = _memory("jobs", "run", "ttl-cleanup", "--tenant", "a.b", url=database_url)
    assert bad_tenant.returncode == 1 and bad_tenant.stderr.count("\n") == 1
    assert bad_tenant.stderr.startswith("error: tenant 'a.b' contains '.'")

    with psycopg.connect(database_url, autocommit=True) as holder, runs.job_lock(holder, JOB):
        busy = _memory("jobs", "run", "ttl-cleanup", url=database_url)
    assert busy.returncode == 1
    assert busy.stderr == (
        "error: ttl_cleanup is already running (another replica or command holds its lock); "
        "nothing was done, try again later\n"
    )


# -- the two walks -----------------------------------------------------------------------------

INSERT_MIXED = """
INSERT INTO store (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes)
SELECT %(prefix)s, '/f' || lpad(i::text, 5, '0') || '.md', jsonb_build_object('content', 'x', 'encoding', 'utf-8'),
       now() - interval '2 days', now() - interval '2 days',
       CASE WHEN i %% 3 = 0 THEN now() - interval '1 hour' ELSE now() + interval '1 hour' END, 60
  FROM generate_series(1, %(count)s) AS i
"""
"""Every third row expired an hour ago, all at the same instant (ties along the index), the rest live."""
EXPIRED_KEYS = "SELECT prefix, key FROM store WHERE expires_at <= now()"


@pytest.mark.parametrize("walk", ["index", "heap"])
def test_each_walk_deletes_exactly_the_expired(database_url, walk):
    with _connect(database_url) as conn:
        for tenant in TENANTS:
            conn.execute(INSERT_MIXED, {"prefix": f"{tenant}.memories", "count": 90})
        expired = {(r["prefix"], r["key"]) for r in conn.execute(EXPIRED_KEYS).fetchall()}
    everything = {(r["prefix"], r["key"]) for r in _rows(database_url)}
    gone = {k for k in expired if not k[0].startswith("initech.")}
    policy = RetentionPolicy.build(legal_hold=["initech"])
    with psycopg.connect(database_url, autocommit=True) as conn:
        dry = ttl_cleanup(conn, policy, dry_run=True, batch_size=7, walk=walk)
        assert {(r["prefix"], r["key"]) for r in _rows(database_url)} == everything
        real = ttl_cleanup(conn, policy, batch_size=7, walk=walk)
    assert {(r["prefix"], r["key"]) for r in _rows(database_url)} == everything - gone
    assert dry.counts["items"] == real.counts["items"] == real.counts["by_expiry"] == len(gone) == 90
    assert dry.tenant_counts == real.tenant_counts == _per_tenant(gone)
    if walk == "index":
        assert real.counts["batches"] == len(gone) // 7 + 1


def test_the_walk_follows_how_much_has_expired(database_url):
    from jobs.ttl_cleanup import choose_walk

    with _connect(database_url) as conn:
        conn.execute(INSERT_MIXED, {"prefix": "acme.memories", "count": 3000})
        conn.execute("ANALYZE store")
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert choose_walk(conn, RetentionPolicy(), runs.utcnow()) == "heap"  # one row in three
        assert choose_walk(conn, POLICY, runs.utcnow()) == "heap"  # a policy needs the full pass
        ttl_cleanup(conn, RetentionPolicy())
        conn.execute("UPDATE store SET expires_at = now() - interval '1 minute' WHERE key = '/f00001.md'")
        assert choose_walk(conn, RetentionPolicy(), runs.utcnow()) == "index"  # one row left
    with pytest.raises(ValueError, match="needs walk='heap'"):
        with psycopg.connect(database_url, autocommit=True) as conn:
            ttl_cleanup(conn, POLICY, walk="index")


@pytest.mark.parametrize("walk", ["index", "heap"])
def test_a_row_renewed_while_the_batch_waits_for_it_stays(database_url, walk):
    """No lock is taken ahead: the DELETE meets the writer's row lock, waits, and re-checks the
    renewed row (READ COMMITTED), so the write wins and the counts leave the row out."""
    import threading

    with _connect(database_url) as conn:
        conn.execute(INSERT_MIXED, {"prefix": "acme.memories", "count": 300})
    writer = psycopg.connect(database_url)
    writer.execute("UPDATE store SET expires_at = now() + interval '1 day' WHERE key = '/f00150.md'")
    waited = threading.Event()

    def commit_once_the_cleanup_waits() -> None:
        with _connect(database_url) as watch:
            for _ in range(2000):
                if watch.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%%DELETE FROM store%%'"
                ).fetchone():
                    waited.set()
                    break
        writer.commit()

    committer = threading.Thread(target=commit_once_the_cleanup_waits)
    committer.start()
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            report = ttl_cleanup(conn, RetentionPolicy(), batch_size=7, walk=walk)
    finally:
        committer.join(timeout=30)
        writer.close()
    assert waited.is_set()
    keys = {r["key"] for r in _rows(database_url)}
    assert "/f00150.md" in keys
    assert report.counts["items"] == 99 == 300 - len(keys)
    assert report.counts["skipped_busy"] == 0
