"""Every SQL statement of the benchmarks, by name (the service's own are in `memory.sql`)."""

# -- benchmarks (bench/) ---------------------------------------------------------------------
# Scratch databases, one per benchmark module ({} is a psycopg.sql.Identifier).
BENCH_CREATE_DATABASE = "CREATE DATABASE {}"

BENCH_DROP_DATABASE = "DROP DATABASE IF EXISTS {} WITH (FORCE)"

# Bulk load of synthetic memory files.
BENCH_COPY_STORE = "COPY store (prefix, key, value, created_at, updated_at) FROM STDIN"

BENCH_ANALYZE_STORE = "ANALYZE store"

# -- benchmark: TTL sweep (bench/entries/sweep.py) ----------------------------------------------
# `rows` memory files over `tenants` tenants, every other one expired a day ago (the expired half
# spread over the whole table); the rest expire in 30 days. Deterministic: both sides get the same.
BENCH_SWEEP_LOAD = """
INSERT INTO store (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes)
SELECT 't' || lpad((i %% %(tenants)s)::text, 4, '0') || '.memories',
       '/scratch/n' || lpad(i::text, 8, '0') || '.md',
       jsonb_build_object('content', 'a note kept for a while, ' || i, 'encoding', 'utf-8'),
       now() - interval '10 days', now() - interval '10 days',
       CASE WHEN i %% 2 = 0 THEN now() - interval '1 day' ELSE now() + interval '30 days' END,
       43200
  FROM generate_series(1, %(rows)s) AS i
"""

BENCH_VACUUM_STORE = "VACUUM (ANALYZE) store"

BENCH_TRUNCATE_STORE = "TRUNCATE store CASCADE"

BENCH_COUNT_STORE = "SELECT count(*) AS n FROM store"

# -- benchmark: backups and tenant export (bench/entries/backup.py) ------------------------------
# `tenants` tenants t0000, t0001, ... of `items` memory files each, interleaved in the heap as if
# written over time. Item n of a tenant has the same key, value and timestamps whatever the number
# of tenants, so one tenant's export is byte-identical from a small store and from a large one.
# The content (five md5 digests of tenant and item, about 175 bytes) compresses about 2x, like text.
BENCH_TENANT_LOAD_ITEMS = """
INSERT INTO store (prefix, key, value, created_at, updated_at)
SELECT 't' || lpad((i %% %(tenants)s::int)::text, 4, '0') || '.memories',
       '/notes/n' || lpad((i / %(tenants)s::int)::text, 6, '0') || '.md',
       jsonb_build_object('content', 'note ' || (i / %(tenants)s::int) || ':'
                                     || (SELECT string_agg(' ' || md5((i %% %(tenants)s::int) || '/' || (i / %(tenants)s::int) || '/' || k), '')
                                           FROM generate_series(1, 5) AS k),
                          'encoding', 'utf-8'),
       timestamptz '2026-01-01 00:00:00+00' + (i / %(tenants)s::int) * interval '1 second',
       timestamptz '2026-01-01 00:00:00+00' + (i / %(tenants)s::int) * interval '1 second'
  FROM generate_series(0, %(tenants)s::int * %(items)s::int - 1) AS i
"""

# Each tenant's `threads` checkpoint threads of `checkpoints` checkpoints, one blob and one write
# per checkpoint (about 300 bytes each); interleaved across tenants like the items.
_BENCH_CHECKPOINT_ROWS = """
  FROM generate_series(0, %(checkpoints)s::int - 1) AS c,
       generate_series(0, %(threads)s::int - 1) AS th,
       LATERAL (SELECT 't' || lpad(t::text, 4, '0') AS tenant FROM generate_series(0, %(tenants)s::int - 1) AS t) AS tenants,
       LATERAL (SELECT md5(tenants.tenant || '/' || th)::uuid::text AS thread_id) AS thread
 ORDER BY c, th, tenants.tenant
"""

BENCH_TENANT_LOAD_CHECKPOINTS = f"""
INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
SELECT thread.thread_id, '', lpad(c::text, 8, '0'), CASE WHEN c > 0 THEN lpad((c - 1)::text, 8, '0') END, NULL,
       jsonb_build_object('v', 1, 'id', lpad(c::text, 8, '0'),
                          'ts', to_char(timestamp '2026-01-01' + c * interval '1 minute', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'),
                          'channel_versions', jsonb_build_object('messages', lpad(c::text, 8, '0')),
                          'versions_seen', '{{}}'::jsonb),
       jsonb_build_object('assistant_id', tenants.tenant, 'source', 'loop', 'step', c)
{_BENCH_CHECKPOINT_ROWS}"""

BENCH_TENANT_LOAD_BLOBS = f"""
INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
SELECT thread.thread_id, '', 'messages', lpad(c::text, 8, '0'), 'msgpack',
       convert_to(repeat('message ' || c || ' of ' || thread.thread_id || ' ', 6), 'UTF8')
{_BENCH_CHECKPOINT_ROWS}"""

BENCH_TENANT_LOAD_WRITES = f"""
INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path)
SELECT thread.thread_id, '', lpad(c::text, 8, '0'), md5(thread.thread_id || c)::uuid::text, 0, 'messages', 'msgpack',
       convert_to(repeat('write ' || c || ' of ' || thread.thread_id || ' ', 6), 'UTF8'), ''
{_BENCH_CHECKPOINT_ROWS}"""

BENCH_VACUUM_ANALYZE = "VACUUM (ANALYZE)"

# -- benchmark: idle threads (bench/entries/prune.py) -------------------------------------------
# `threads` threads of `per_thread` checkpoints each, one blob and one write per checkpoint; every
# thread i with i %% 10 < 3 (30%%) last ran 60 days ago, the rest within the hour. Deterministic.
_BENCH_PRUNE_SERIES = """
  FROM generate_series(0, %(threads)s::int - 1) AS i, generate_series(0, %(per_thread)s::int - 1) AS c,
       LATERAL (SELECT 'thread-' || lpad(i::text, 7, '0') AS thread_id,
                       lpad(c::text, 8, '0') || '-0000-6000-8000-000000000000' AS checkpoint_id,
                       lpad((c + 1)::text, 32, '0') || '.0.5' AS version,
                       to_char((CASE WHEN i %% 10 < 3 THEN now() - interval '60 days' ELSE now() - interval '1 hour' END
                                + c * interval '1 second') AT TIME ZONE 'UTC',
                               'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') AS ts) AS k
"""

BENCH_PRUNE_LOAD = (
    """
INSERT INTO memory_threads (thread_id, tenant)
SELECT 'thread-' || lpad(i::text, 7, '0'), 'tenant-' || (i %% 100) FROM generate_series(0, %(threads)s::int - 1) AS i
""",
    """
INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
SELECT k.thread_id, '', k.checkpoint_id,
       CASE WHEN c > 0 THEN lpad((c - 1)::text, 8, '0') || '-0000-6000-8000-000000000000' END,
       jsonb_build_object('v', 4, 'id', k.checkpoint_id, 'ts', k.ts, 'channel_values', '{}'::jsonb,
                          'channel_versions', jsonb_build_object('messages', k.version), 'versions_seen', '{}'::jsonb),
       jsonb_build_object('source', 'loop', 'step', c, 'assistant_id', 'tenant-' || (i %% 100))
"""
    + _BENCH_PRUNE_SERIES,
    """
INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
SELECT k.thread_id, '', 'messages', k.version, 'msgpack', decode(repeat(md5(k.thread_id), 4), 'hex')
"""
    + _BENCH_PRUNE_SERIES,
    """
INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob)
SELECT k.thread_id, '', k.checkpoint_id, 'task', 0, 'messages', 'msgpack', decode(md5(k.checkpoint_id), 'hex')
"""
    + _BENCH_PRUNE_SERIES,
)

BENCH_PRUNE_ANALYZE = "VACUUM (ANALYZE) memory_threads, checkpoints, checkpoint_blobs, checkpoint_writes"

# A side's own copy of loaded data. FILE_COPY checkpoints before and after copying, so a side starts
# with no dirty buffers and no checkpoint under way; the default (WAL_LOG) writes the whole copy to
# the WAL, and the checkpoints that volume sets off then run during the next timed side.
BENCH_CREATE_DATABASE_FROM = "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY"

# What a user of the plain saver has to select idle threads with: no timestamp column, so the
# newest `ts` per thread over the whole table.
BENCH_PRUNE_BASELINE_SELECT = """
SELECT thread_id FROM checkpoints GROUP BY thread_id HAVING max(checkpoint->>'ts') < %(cutoff)s
"""

# The floor of any row-level deletion of idle threads: their rows' ids known in advance (not timed),
# one bare DELETE per table, in one transaction.
BENCH_PRUNE_FLOOR_DELETES = tuple(
    f"DELETE FROM {table} WHERE thread_id = ANY(%(threads)s::text[])"
    for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints", "memory_threads")
)

BENCH_PRUNE_COUNTS = """
SELECT (SELECT count(*) FROM checkpoints) AS checkpoints, (SELECT count(DISTINCT thread_id) FROM checkpoints) AS threads,
       (SELECT count(*) FROM checkpoint_blobs) AS blobs, (SELECT count(*) FROM checkpoint_writes) AS writes
"""

# -- benchmark: Store API (bench/entries/store_api.py) -------------------------------------------
# Where the server keeps its data (postmaster.pid there names the process whose CPU is counted).
BENCH_DATA_DIRECTORY = "SHOW data_directory"
