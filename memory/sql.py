"""Every SQL statement of the service, by name."""

DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = %(name)s"

SERVER_VERSION = "SELECT current_setting('server_version_num')::int AS version_num"

# Compare-and-swap of one memory item: applies only when the row still holds the value read
# and has not expired meanwhile (an edit never revives an expired item). `ttl_minutes` is the
# retention policy's TTL for the item now (NULL: no expiry), as a write would set it.
SWAP_ITEM_VALUE = """
UPDATE store
   SET value = %(new_value)s,
       updated_at = now(),
       ttl_minutes = %(ttl_minutes)s::float8,
       expires_at = now() + make_interval(secs => %(ttl_minutes)s::float8 * 60)
 WHERE prefix = %(prefix)s
   AND key = %(key)s
   AND value = %(old_value)s
   AND (expires_at IS NULL OR expires_at > now())
"""

# Files and bytes of memory per tenant (first namespace label), over every namespace ending in the suffix.
MEMORY_USAGE_BY_TENANT = """
SELECT split_part(prefix, '.', 1) AS tenant,
       count(*) AS files,
       coalesce(sum(octet_length(value->>'content')), 0)::bigint AS bytes
  FROM store
 WHERE prefix LIKE %(suffix_like)s
 GROUP BY 1
 ORDER BY 1
"""

# -- push-down listing (memory/pushdown.py) ---------------------------------------------
# Each query scopes rows exactly as PostgresStore.search does (the namespace and its descendants,
# LIKE metacharacters escaped), never returns expired rows, and sends rows in search order
# (updated_at DESC; prefix, key break ties). `scope` is a key prefix: the listed directory.
# `low`/`high` bound the keys wanted when keys sort by code point (then the primary key serves
# the prefix as an index range); `high` is NULL otherwise. Rows with string content come back
# without it (`value - 'content'`) plus its UTF-8 size.

# Whether store keys sort by code point (C-like collations), making key prefixes index ranges.
PUSHDOWN_KEYS_SORT_BY_CODE_POINT = """
SELECT CASE
         WHEN k.collname IN ('C', 'POSIX', 'ucs_basic', 'pg_c_utf8') THEN true
         WHEN k.collname <> 'default' THEN false
         ELSE coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') IN ('c', 'b')
              AND coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'datcollate')
                  IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8')
       END AS by_code_point
  FROM pg_attribute AS a
  JOIN pg_collation AS k ON k.oid = a.attcollation
  JOIN pg_database AS d ON d.datname = current_database()
 WHERE a.attrelid = 'store'::regclass AND a.attname = 'key'
"""

# ls: files directly under `scope`, then one row per immediate subdirectory name.
PUSHDOWN_LS = r"""
WITH scoped AS (
    SELECT prefix, key, value, updated_at, substr(key, char_length(%(scope)s) + 1) AS rest
      FROM store
     WHERE (prefix = %(namespace)s OR prefix LIKE %(namespace_like)s ESCAPE '\')
       AND key >= %(low)s AND (%(high)s::text IS NULL OR key < %(high)s)
       AND starts_with(key, %(scope)s)
       AND (expires_at IS NULL OR expires_at > now())
)
SELECT key, NULL AS subdir, updated_at, prefix,
       CASE WHEN jsonb_typeof(value->'content') = 'string' THEN value - 'content' ELSE value END AS value,
       CASE WHEN jsonb_typeof(value->'content') = 'string'
            THEN octet_length(convert_to(value->>'content', 'UTF8')) END AS size
  FROM scoped
 WHERE strpos(rest, '/') = 0
UNION ALL
SELECT DISTINCT NULL, split_part(rest, '/', 1), NULL::timestamptz, NULL, NULL::jsonb, NULL::int
  FROM scoped
 WHERE strpos(rest, '/') > 0
 ORDER BY subdir NULLS FIRST, updated_at DESC, prefix, key
"""

# glob: the exact key `exact` (a file given as the path), and keys under `scope` ending in
# `suffix` (or in '/' or '/.', which the matcher normalizes away).
PUSHDOWN_GLOB = r"""
SELECT key,
       CASE WHEN jsonb_typeof(value->'content') = 'string' THEN value - 'content' ELSE value END AS value,
       CASE WHEN jsonb_typeof(value->'content') = 'string'
            THEN octet_length(convert_to(value->>'content', 'UTF8')) END AS size
  FROM store
 WHERE (prefix = %(namespace)s OR prefix LIKE %(namespace_like)s ESCAPE '\')
   AND (expires_at IS NULL OR expires_at > now())
   AND key >= %(low)s AND (%(high)s::text IS NULL OR key < %(high)s)
   AND (key = %(exact)s
        OR (starts_with(key, %(scope)s)
            AND (right(key, char_length(%(suffix)s)) = %(suffix)s OR right(key, 1) = '/' OR right(key, 2) = '/.')))
 ORDER BY updated_at DESC, prefix, key
"""

# grep: as glob, and only rows whose text content holds `pattern` (skipping base64) unless
# content cannot be judged in SQL (legacy list content, descendant namespaces sharing keys).
PUSHDOWN_GREP = r"""
SELECT key, value
  FROM store
 WHERE (prefix = %(namespace)s OR prefix LIKE %(namespace_like)s ESCAPE '\')
   AND (expires_at IS NULL OR expires_at > now())
   AND key >= %(low)s AND (%(high)s::text IS NULL OR key < %(high)s)
   AND (key = %(exact)s
        OR (starts_with(key, %(scope)s)
            AND (right(key, char_length(%(suffix)s)) = %(suffix)s OR right(key, 1) = '/' OR right(key, 2) = '/.')
            AND (%(match_all)s
                 OR EXISTS (SELECT 1 FROM store AS nested WHERE nested.prefix LIKE %(namespace_like)s ESCAPE '\')
                 OR jsonb_typeof(value->'content') NOT IN ('string', 'null')
                 OR (strpos(value->>'content', %(pattern)s) > 0
                     AND (value->>'encoding') IS DISTINCT FROM 'base64'))))
 ORDER BY updated_at DESC, prefix, key
"""

# -- schema migrations (memory.migrations) -----------------------------------------------------

SCHEMA_EXISTS = "SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s"

# Formatted with a validated plain identifier (memory.settings.SCHEMA_NAME), never with raw input.
CREATE_SCHEMA = 'CREATE SCHEMA IF NOT EXISTS "{schema}"'

# One migrator per database at a time: a transaction-level lock held by an open transaction on a
# connection of its own (see memory.migrations.migration_lock).
TRY_MIGRATION_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended('memory:migrations', 0)) AS locked"
NO_IDLE_TIMEOUT = "SET LOCAL idle_in_transaction_session_timeout = 0"

SEARCH_PATH = "SELECT current_setting('search_path') AS search_path"

PGVECTOR_AVAILABLE = "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"

# Dimensions of the existing store_vectors.embedding column (pgvector keeps them in atttypmod), if any.
STORE_VECTOR_DIMS = """
SELECT a.atttypmod AS dims
  FROM pg_attribute a
 WHERE a.attrelid = to_regclass('store_vectors')
   AND a.attname = 'embedding'
   AND NOT a.attisdropped
"""

# An index left INVALID by an interrupted CREATE INDEX CONCURRENTLY (IF NOT EXISTS would keep it).
INVALID_INDEX = """
SELECT 1
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
 WHERE c.relname = %(name)s
   AND c.relnamespace = current_schema()::regnamespace
   AND NOT i.indisvalid
"""

# -- retention: TTL cleanup (jobs/ttl_cleanup.py) -----------------------------------------
# A run walks the store in batches, one statement (so one transaction) per batch, and nothing
# is locked ahead: each batch is a DELETE whose WHERE is the whole criterion, so a row a writer
# renewed meanwhile no longer matches (READ COMMITTED re-checks an updated row) and stays.
# `tenant` (NULL: every tenant) narrows to one tenant; tenants in `held` (legal hold) are never
# touched; the tenant is a namespace's first label. A batch deletes its items' vectors in the
# same statement and returns one row: per tenant [items, by_expiry, vectors] (`per_tenant`),
# plus, for the index walk, how many rows it took and where the next batch starts (`after_*`).
# A dry run runs the same walk with SELECT in place of DELETE.
#
# Two ways to walk, the job picks one per run:
# - heap: ranges of heap blocks [lo, hi) (a TID range scan reads just those blocks), the
#   whole table once - the same pages `DELETE ... WHERE expires_at < now()` reads, in slices;
#   used when many rows go (or when the policy expires anything: only a full pass finds rows
#   past a policy TTL);
# - index: along idx_store_expires_at, `batch_size` rows at a time in (expires_at, prefix, key)
#   order; used when few rows have expired, so a run costs what expired, not the table.

# (Each batch is planned with its values: with no tenant and nobody held, both tests fold away.)
_TTL_SCOPE = """
   AND (%(tenant)s::text IS NULL OR split_part(s.prefix, '.', 1) = %(tenant)s::text)
   AND (cardinality(%(held)s::text[]) = 0 OR split_part(s.prefix, '.', 1) <> ALL (%(held)s::text[]))"""

# Expired by the row's own expires_at (set on write from the policy, any namespace).
_TTL_EXPIRED = "s.expires_at <= %(now)s"

# Past the policy: a row of a memory namespace (ending in `suffix`), whose first matching rule
# (arrays ordered most specific first, the default last) gives a TTL, last written (or, with
# refresh on read, last read: expires_at minus ttl_minutes) longer ago than that. This is how a
# policy change reaches rows written before it, or written with no expiry. A rule of 0 days
# (NULL seconds) keeps the row: the comparison with NULL is not true.
_TTL_PAST_POLICY = """(right(s.prefix, char_length(%(suffix)s::text) + 1) = '.' || %(suffix)s::text
        AND CASE WHEN s.expires_at IS NOT NULL AND s.ttl_minutes IS NOT NULL
                 THEN s.expires_at - make_interval(mins => s.ttl_minutes)
                 ELSE s.updated_at END
            <= %(now)s - make_interval(secs => (
                SELECT r.ttl_seconds
                  FROM unnest(%(rule_tenants)s::text[], %(rule_key_prefixes)s::text[], %(rule_ttl_seconds)s::float8[])
                       WITH ORDINALITY AS r(tenant, key_prefix, ttl_seconds, position)
                 WHERE (r.tenant IS NULL OR r.tenant = split_part(s.prefix, '.', 1))
                   AND starts_with(s.key, r.key_prefix)
                 ORDER BY r.position
                 LIMIT 1)))"""

_TTL_HEAP_RANGE = "s.ctid >= %(lo)s::tid AND s.ctid < %(hi)s::tid"

# The index walk's batch: the next rows along the expires_at index (keyset, so rows a batch
# left - renewed meanwhile, or of a held tenant - are passed, not taken again).
_TTL_INDEX_BATCH = f"""
batch AS (
    SELECT s.ctid AS row_id, s.expires_at, s.prefix, s.key
      FROM store s
     WHERE {_TTL_EXPIRED}
       AND s.expires_at >= %(after_expires_at)s
       AND (s.expires_at, s.prefix, s.key) > (%(after_expires_at)s, %(after_prefix)s::text, %(after_key)s::text){_TTL_SCOPE}
     ORDER BY s.expires_at, s.prefix, s.key
     LIMIT %(batch_size)s
),"""

_TTL_DELETE_VECTORS = """
vectors AS (
    DELETE FROM store_vectors v USING items i WHERE v.prefix = i.prefix AND v.key = i.key RETURNING v.prefix
)"""

_TTL_COUNT_VECTORS = """
vectors AS (
    SELECT v.prefix FROM store_vectors v JOIN items i ON v.prefix = i.prefix AND v.key = i.key
)"""

_TTL_NO_VECTORS = """
vectors AS (
    SELECT NULL::text AS prefix WHERE false
)"""

_TTL_PER_TENANT = """
SELECT (SELECT coalesce(jsonb_object_agg(t.tenant, jsonb_build_array(t.items, t.by_expiry, coalesce(v.vectors, 0))), '{}')
          FROM (SELECT split_part(prefix, '.', 1) AS tenant, count(*) AS items,
                       count(*) FILTER (WHERE by_expiry) AS by_expiry
                  FROM items GROUP BY 1) AS t
          LEFT JOIN (SELECT split_part(prefix, '.', 1) AS tenant, count(*) AS vectors FROM vectors GROUP BY 1) AS v
               USING (tenant)) AS per_tenant"""

_TTL_INDEX_POSITION = """,
       (SELECT count(*) FROM batch) AS taken,
       b.expires_at AS after_expires_at, b.prefix AS after_prefix, b.key AS after_key
  FROM (SELECT NULL) AS one
  LEFT JOIN (SELECT expires_at, prefix, key FROM batch ORDER BY expires_at DESC, prefix DESC, key DESC LIMIT 1) AS b
       ON true
"""


_TTL_HEAP_COUNTS = """
SELECT prefix, count(*) AS items, count(*) FILTER (WHERE by_expiry) AS by_expiry, 0 AS vectors FROM items GROUP BY prefix"""

# Without a policy every row a batch takes is expired by its own expires_at: by_expiry = items.
_TTL_HEAP_EXPIRY_COUNTS = """
SELECT prefix, count(*) AS items, count(*) AS by_expiry, 0 AS vectors FROM items GROUP BY prefix"""

_TTL_HEAP_VECTOR_COUNTS = """
 UNION ALL
SELECT prefix, 0, 0, count(*) FROM vectors GROUP BY prefix"""


def _ttl_batch(walk: str, *, policy: bool, dry_run: bool, vectors: bool) -> str:
    """One batch statement from the fragments above (built once, at import)."""
    criterion = f"({_TTL_EXPIRED} OR {_TTL_PAST_POLICY})" if policy else _TTL_EXPIRED
    if walk == "heap":
        head, where = "WITH", f"{_TTL_HEAP_RANGE}\n       AND {criterion}{_TTL_SCOPE}"
    else:
        head, where = "WITH" + _TTL_INDEX_BATCH, f"s.ctid = ANY(ARRAY(SELECT row_id FROM batch))\n       AND {criterion}{_TTL_SCOPE}"
    # What the counts need, no more (RETURNING materializes every deleted row): the prefix (its
    # tenant), whether the row's own expiry took it (the heap walk without a policy takes no
    # other), the key only to find the row's vectors.
    returning = "s.prefix"
    if policy or walk == "index":
        returning += f", coalesce({_TTL_EXPIRED}, false) AS by_expiry"
    if vectors:
        returning += ", s.key"
    if dry_run:
        items = f"\nitems AS (\n    SELECT {returning} FROM store s\n     WHERE {where}\n)"
    else:
        items = f"\nitems AS (\n    DELETE FROM store s\n     WHERE {where}\n    RETURNING {returning}\n)"
    if walk == "heap":  # rows of (prefix, items, by_expiry, vectors): a namespace's rows share a tenant
        counts = _TTL_HEAP_COUNTS if policy else _TTL_HEAP_EXPIRY_COUNTS
        if not vectors:
            return head + items + counts + "\n"
        vector_part = _TTL_COUNT_VECTORS if dry_run else _TTL_DELETE_VECTORS
        return head + items + "," + vector_part + counts + _TTL_HEAP_VECTOR_COUNTS + "\n"
    vector_part = (_TTL_COUNT_VECTORS if dry_run else _TTL_DELETE_VECTORS) if vectors else _TTL_NO_VECTORS
    return head + items + "," + vector_part + _TTL_PER_TENANT + _TTL_INDEX_POSITION


# By walk ("heap", "index"), policy expires anything, dry run, store_vectors present: the batch
# statement. The index walk never applies the policy (that needs the heap walk's full pass).
TTL_BATCH = {
    (walk, policy, dry_run, vectors): _ttl_batch(walk, policy=policy, dry_run=dry_run, vectors=vectors)
    for walk, policy in (("heap", False), ("heap", True), ("index", False))
    for dry_run in (False, True)
    for vectors in (False, True)
}

# What a run needs to pick its walk: the heap's size in blocks now (the heap walk's end) and the
# rows per block the statistics expect; then how many rows have expired, counted along the
# index up to `cap` (only whether there are at least that many matters).
TTL_TABLE_SIZE = """
SELECT pg_relation_size('store') / current_setting('block_size')::int AS blocks,
       coalesce((SELECT reltuples / nullif(relpages, 0) FROM pg_class WHERE oid = 'store'::regclass), 0) AS rows_per_block
"""
TTL_EXPIRED_UP_TO = "SELECT count(*) AS expired FROM (SELECT 1 FROM store s WHERE s.expires_at <= %(now)s LIMIT %(cap)s) AS e"

DATABASE_NOW = "SELECT now() AS now"

STORE_VECTORS_PRESENT = "SELECT to_regclass('store_vectors') IS NOT NULL AS present"

# -- job runs (jobs/runs.py) ----------------------------------------------------------------
# Each job's lock is a transaction-level advisory lock (JOB_TRY_XACT_LOCK, `lock_name` like
# 'memory:ttl_cleanup') held by an open transaction of its own for the whole run.
JOB_RUN_START = """
INSERT INTO memory_job_runs (job, started_at, status, dry_run, host)
VALUES (%(job)s, %(started_at)s, 'running', %(dry_run)s, %(host)s)
RETURNING id
"""

JOB_RUN_FINISH = """
UPDATE memory_job_runs
   SET finished_at = %(finished_at)s,
       status = %(status)s,
       counts = %(counts)s,
       tenant_counts = %(tenant_counts)s,
       error = %(error)s
 WHERE id = %(id)s
"""

# Runs left 'running' by a process that died; only called while holding the job's lock.
JOB_RUNS_ABANDON = """
UPDATE memory_job_runs
   SET status = 'failed', finished_at = now(), error = %(error)s
 WHERE job = %(job)s AND status = 'running'
RETURNING id
"""

JOB_RUNS_HISTORY = """
SELECT id, job, started_at, finished_at, status, dry_run, host, counts, tenant_counts, error
  FROM memory_job_runs
 WHERE (%(job)s::text IS NULL OR job = %(job)s::text)
 ORDER BY started_at DESC, id DESC
 LIMIT %(limit)s
"""

JOB_LAST_SUCCESS = """
SELECT job, max(finished_at) AS finished_at
  FROM memory_job_runs
 WHERE status = 'succeeded' AND NOT dry_run
 GROUP BY job
"""


# -- backups (memory/backup.py) ---------------------------------------------------------------
# Tables of the service that a backup holds, those present in the current schema.
BACKUP_TABLES_PRESENT = """
SELECT c.relname AS name
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND c.relname = ANY(%(tables)s)
"""
BACKUP_CURRENT_SCHEMA = "SELECT current_schema() AS schema"
BACKUP_SNAPSHOT = "SELECT pg_export_snapshot() AS snapshot, now() AS now, current_setting('server_version') AS server_version"
# {table} is a psycopg.sql.Identifier.
BACKUP_COUNT_ROWS = "SELECT count(*) AS n FROM {table}"
# An order-independent checksum of a table's rows (tests and `verify`).
BACKUP_TABLE_CHECKSUM = "SELECT count(*) AS n, coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') AS md5 FROM {table} t"
BACKUP_TARGET_HAS_ROWS = """
SELECT EXISTS (SELECT 1 FROM {table} LIMIT 1) AS has_rows
"""
ERASURES_PRESENT = "SELECT to_regclass('memory_tenant_erasures') IS NOT NULL AS present"
ERASURES_ALL = "SELECT id, tenant, erased_at, counts FROM memory_tenant_erasures ORDER BY erased_at, id"
# Inside the restore transaction (rendered client-side into the psql script).
RESTORE_SEARCH_PATH = "SELECT pg_catalog.set_config('search_path', %(path)s, true)"
RESTORE_CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {schema}"
RESTORE_CREATE_VECTOR = "CREATE EXTENSION IF NOT EXISTS vector"
RESTORE_DROP_TABLE = "DROP TABLE IF EXISTS {table} CASCADE"
RESTORE_KEEP_ERASURE = """
INSERT INTO memory_tenant_erasures (tenant, erased_at, counts)
SELECT %(tenant)s, %(erased_at)s::timestamptz, %(counts)s::jsonb
 WHERE NOT EXISTS (
    SELECT 1 FROM memory_tenant_erasures WHERE tenant = %(tenant)s AND erased_at = %(erased_at)s::timestamptz
 )
"""

# -- tenants (memory/tenants.py) ---------------------------------------------------------------
# A tenant's store rows: prefix = <tenant> || '.' || ...; %(like)s is the escaped tenant || '.%'.
# Their "bytes" are content bytes (UTF-8), as in `memory_usage()`; quotas count whole values.
_TENANT_ITEMS = r"prefix LIKE %(like)s ESCAPE '\'"
# A tenant's checkpoint threads: those `memory_threads` says it owns (never a guess from metadata).
_TENANT_THREADS = "SELECT thread_id FROM memory_threads WHERE tenant = %(tenant)s"
# Before thread ownership (a restored old backup, before its migration): the metadata was all there was.
_TENANT_THREADS_BY_METADATA = "SELECT DISTINCT thread_id FROM checkpoints WHERE metadata->>'assistant_id' = %(tenant)s"

TENANT_LIST = """
WITH items AS (
    SELECT split_part(prefix, '.', 1) AS tenant, count(*) AS items,
           sum(octet_length(value->>'content')) AS bytes, max(updated_at) AS last_write
      FROM store GROUP BY 1
), threads AS (
    SELECT t.tenant, count(DISTINCT t.thread_id) AS threads, count(c.thread_id) AS checkpoints,
           max(c.checkpoint->>'ts') AS last_checkpoint
      FROM memory_threads t LEFT JOIN checkpoints c ON c.thread_id = t.thread_id
     WHERE t.tenant IS NOT NULL GROUP BY 1
)
SELECT coalesce(i.tenant, t.tenant) AS tenant, coalesce(i.items, 0) AS items, coalesce(i.bytes, 0) AS bytes,
       coalesce(t.threads, 0) AS threads, coalesce(t.checkpoints, 0) AS checkpoints, i.last_write, t.last_checkpoint
  FROM items i FULL JOIN threads t ON t.tenant = i.tenant
 ORDER BY coalesce(i.tenant, t.tenant) COLLATE "C"
"""
TENANT_ITEM_STATS = f"""
SELECT count(*) AS items, coalesce(sum(octet_length(value->>'content')), 0) AS bytes, max(updated_at) AS last_write
  FROM store WHERE {_TENANT_ITEMS}
"""
TENANT_THREAD_STATS = """
SELECT count(DISTINCT t.thread_id) AS threads, count(c.thread_id) AS checkpoints,
       max(c.checkpoint->>'ts') AS last_checkpoint
  FROM memory_threads t LEFT JOIN checkpoints c ON c.thread_id = t.thread_id
 WHERE t.tenant = %(tenant)s
"""
TENANT_VECTORS_PRESENT = "SELECT to_regclass('store_vectors') IS NOT NULL AS present"

TENANT_EXPORT_ITEMS = f"""
SELECT prefix, key, value::text AS value, created_at, updated_at, expires_at, ttl_minutes
  FROM store WHERE {_TENANT_ITEMS} ORDER BY prefix, key
"""
TENANT_EXPORT_VECTORS = f"""
SELECT prefix, key, field_name, embedding::text AS embedding, created_at, updated_at
  FROM store_vectors WHERE {_TENANT_ITEMS} ORDER BY prefix, key, field_name
"""
TENANT_EXPORT_CHECKPOINTS = f"""
SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint::text AS checkpoint,
       metadata::text AS metadata
  FROM checkpoints WHERE thread_id IN ({_TENANT_THREADS}) ORDER BY thread_id, checkpoint_ns, checkpoint_id
"""
TENANT_EXPORT_BLOBS = f"""
SELECT thread_id, checkpoint_ns, channel, version, type, blob
  FROM checkpoint_blobs WHERE thread_id IN ({_TENANT_THREADS}) ORDER BY thread_id, checkpoint_ns, channel, version
"""
TENANT_EXPORT_WRITES = f"""
SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path
  FROM checkpoint_writes WHERE thread_id IN ({_TENANT_THREADS})
 ORDER BY thread_id, checkpoint_ns, checkpoint_id, task_id, idx
"""

# Erasure, in this order, in one transaction (vectors first: counted, though the FK cascades; the
# threads' owner rows last).
TENANT_THREAD_IDS = _TENANT_THREADS
TENANT_DELETE_VECTORS = f"DELETE FROM store_vectors WHERE {_TENANT_ITEMS}"
TENANT_DELETE_ITEMS = f"DELETE FROM store WHERE {_TENANT_ITEMS}"
TENANT_DELETE_WRITES = "DELETE FROM checkpoint_writes WHERE thread_id = ANY(%(threads)s)"
TENANT_DELETE_BLOBS = "DELETE FROM checkpoint_blobs WHERE thread_id = ANY(%(threads)s)"
TENANT_DELETE_CHECKPOINTS = "DELETE FROM checkpoints WHERE thread_id = ANY(%(threads)s)"
TENANT_DELETE_THREADS = "DELETE FROM memory_threads WHERE thread_id = ANY(%(threads)s)"
# The same erasure, for replay inside a restore script: the owned threads' rows and owner rows in one
# statement, or by metadata for a backup older than ownership.
TENANT_ERASE_OWNED_THREADS = """
WITH owned AS (SELECT thread_id FROM memory_threads WHERE tenant = %(tenant)s),
     writes AS (DELETE FROM checkpoint_writes WHERE thread_id IN (SELECT thread_id FROM owned)),
     blobs AS (DELETE FROM checkpoint_blobs WHERE thread_id IN (SELECT thread_id FROM owned)),
     checkpoints AS (DELETE FROM checkpoints WHERE thread_id IN (SELECT thread_id FROM owned))
DELETE FROM memory_threads WHERE tenant = %(tenant)s
"""
TENANT_ERASE_WRITES = f"DELETE FROM checkpoint_writes WHERE thread_id IN ({_TENANT_THREADS_BY_METADATA})"
TENANT_ERASE_BLOBS = f"DELETE FROM checkpoint_blobs WHERE thread_id IN ({_TENANT_THREADS_BY_METADATA})"
TENANT_ERASE_CHECKPOINTS = f"DELETE FROM checkpoints WHERE thread_id IN ({_TENANT_THREADS_BY_METADATA})"
TENANT_RECORD_ERASURE = """
INSERT INTO memory_tenant_erasures (tenant, counts) VALUES (%(tenant)s, %(counts)s)
RETURNING id, tenant, erased_at, counts
"""

# Import. Merge keeps the newer item; checkpoints are immutable, so existing ones stay.
TENANT_IMPORT_ITEM = """
INSERT INTO store AS s (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes)
VALUES (%(prefix)s, %(key)s, %(value)s::jsonb, %(created_at)s, %(updated_at)s, %(expires_at)s, %(ttl_minutes)s)
ON CONFLICT (prefix, key) DO UPDATE
   SET value = EXCLUDED.value, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
       expires_at = EXCLUDED.expires_at, ttl_minutes = EXCLUDED.ttl_minutes
 WHERE s.updated_at < EXCLUDED.updated_at
RETURNING (xmax = 0) AS inserted
"""
TENANT_IMPORT_DROP_VECTORS = "DELETE FROM store_vectors WHERE prefix = %(prefix)s AND key = %(key)s"
TENANT_IMPORT_VECTOR = """
INSERT INTO store_vectors (prefix, key, field_name, embedding, created_at, updated_at)
VALUES (%(prefix)s, %(key)s, %(field_name)s, %(embedding)s::vector, %(created_at)s, %(updated_at)s)
ON CONFLICT (prefix, key, field_name) DO UPDATE
   SET embedding = EXCLUDED.embedding, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at
"""
TENANT_IMPORT_CHECKPOINT = """
INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
VALUES (%(thread_id)s, %(checkpoint_ns)s, %(checkpoint_id)s, %(parent_checkpoint_id)s, %(type)s,
        %(checkpoint)s::jsonb, %(metadata)s::jsonb)
ON CONFLICT DO NOTHING
"""
TENANT_IMPORT_BLOB = """
INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
VALUES (%(thread_id)s, %(checkpoint_ns)s, %(channel)s, %(version)s, %(type)s, %(blob)s)
ON CONFLICT DO NOTHING
"""
TENANT_IMPORT_WRITE = """
INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path)
VALUES (%(thread_id)s, %(checkpoint_ns)s, %(checkpoint_id)s, %(task_id)s, %(idx)s, %(channel)s, %(type)s,
        %(blob)s, %(task_path)s)
ON CONFLICT DO NOTHING
"""
TENANT_ALEMBIC_REVISION = "SELECT version_num FROM alembic_version"
# Import: the owners of a bundle's (remapped) thread ids here, then claiming the unowned ones.
TENANT_THREAD_OWNERS = """
SELECT thread_id, tenant FROM memory_threads WHERE thread_id = ANY(%(threads)s)
"""
TENANT_CLAIM_THREADS = """
INSERT INTO memory_threads (thread_id, tenant)
SELECT unnest(%(threads)s::text[]), %(tenant)s
ON CONFLICT (thread_id) DO NOTHING
"""

# First statement of an export's transaction: one consistent view of the tenant.
TENANT_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"


# -- checkpoint pruning (jobs/checkpoint_pruning.py) --------------------------------------------
# Times compare as text: LangGraph writes `ts` as UTC isoformat(), and so does the job's cutoff.
# `threads` (NULL: every thread) limits the trim and orphan passes to the threads an incremental
# run looks at; `tenant` (NULL: every tenant) to one tenant's threads.

# Which tenant a thread belongs to: these fragments are the only place that says so. A thread's
# tenant is its owner in `memory_threads`; unattributed threads (no owner) are never touched.
_PRUNE_OWNED = "JOIN memory_threads o ON o.thread_id = c.thread_id AND o.tenant IS NOT NULL"
_PRUNE_ROW_TENANT = "o.tenant"
_PRUNE_IN_TENANT = "(%(tenant)s::text IS NULL OR o.tenant = %(tenant)s)"
_PRUNE_IN_THREADS = "(%(threads)s::text[] IS NULL OR c.thread_id = ANY(%(threads)s::text[]))"

# Idle threads: threads with old rows (the ts index), then per thread: none at or after the cutoff.
# `floor` (NULL: none) narrows the old rows to those at or after it: an incremental run looks
# only at what became old since the last run's cutoff (the older end was dealt with then).
# Grouped by thread before the owner is joined: each thread has one owner row.
PRUNE_IDLE_THREADS = f"""
SELECT c.thread_id, ARRAY[{_PRUNE_ROW_TENANT}] AS tenants
  FROM (SELECT thread_id FROM checkpoints
         WHERE (checkpoint->>'ts') < %(cutoff)s
           AND (%(floor)s::text IS NULL OR (checkpoint->>'ts') >= %(floor)s::text)
         GROUP BY thread_id) AS c {_PRUNE_OWNED}
  LEFT JOIN LATERAL (SELECT 1 AS live FROM checkpoints n
                      WHERE n.thread_id = c.thread_id AND (n.checkpoint->>'ts') >= %(cutoff)s
                      LIMIT 1) AS l ON true
 WHERE l.live IS NULL AND {_PRUNE_IN_TENANT}
 ORDER BY c.thread_id
"""
# (The LATERAL probe is a per-thread index lookup; written as NOT EXISTS the planner may hash the
# whole table's newer rows instead, reading every checkpoint.)
# A full pass (no floor) reads every checkpoint once instead, in heap order: the newest `ts` per
# thread. Probing each thread with old rows reads its rows at random, which grows faster than the
# table (measured: 2x the checkpoints, 7x the time), and in a full pass most threads have old rows.
# Only `thread_id` and `ts` go into the aggregate (OFFSET 0 keeps the planner from sorting whole rows).
PRUNE_IDLE_THREADS_FULL = f"""
SELECT c.thread_id, ARRAY[{_PRUNE_ROW_TENANT}] AS tenants
  FROM (SELECT r.thread_id
          FROM (SELECT thread_id, checkpoint->>'ts' AS ts FROM checkpoints OFFSET 0) AS r
         GROUP BY r.thread_id
        HAVING max(r.ts) < %(cutoff)s) AS c {_PRUNE_OWNED}
 WHERE {_PRUNE_IN_TENANT}
 ORDER BY c.thread_id
"""
# The full find's hash of threads in memory, for its own transaction only.
PRUNE_FIND_MEMORY = "SELECT set_config('work_mem', %(work_mem)s, true)"
# A batch of idle threads (with their tenants) in one statement: they go whole from the three
# tables, with their owner rows. Each checkpoint deleted (or, dry, counted) says whether it is at
# or after the cutoff: `live` lists the threads a run wrote to since they were selected, and the
# caller rolls such a batch back and makes it again without them (so no second probe per thread).
# One row per tenant: the threads, the rows per table deleted (or that would be), the live threads.
_PRUNE_IDLE_BATCH = """
WITH batch AS (SELECT b.thread_id, b.tenant FROM unnest(%(threads)s::text[], %(tenants)s::text[]) AS b(thread_id, tenant)),"""
_PRUNE_IDLE_DELETE = """
checkpoints AS (DELETE FROM checkpoints x WHERE x.thread_id = ANY(%(threads)s::text[])
                RETURNING x.thread_id, (x.checkpoint->>'ts') >= %(cutoff)s AS live),
writes AS (DELETE FROM checkpoint_writes x WHERE x.thread_id = ANY(%(threads)s::text[]) RETURNING x.thread_id),
blobs AS (DELETE FROM checkpoint_blobs x WHERE x.thread_id = ANY(%(threads)s::text[]) RETURNING x.thread_id),
owners AS (DELETE FROM memory_threads x WHERE x.thread_id = ANY(%(threads)s::text[]))"""
_PRUNE_IDLE_COUNT = """
checkpoints AS (SELECT x.thread_id, (x.checkpoint->>'ts') >= %(cutoff)s AS live
                  FROM checkpoints x WHERE x.thread_id = ANY(%(threads)s::text[])),
writes AS (SELECT x.thread_id FROM checkpoint_writes x WHERE x.thread_id = ANY(%(threads)s::text[])),
blobs AS (SELECT x.thread_id FROM checkpoint_blobs x WHERE x.thread_id = ANY(%(threads)s::text[]))"""
_PRUNE_IDLE_REPORT = """
SELECT b.tenant, array_agg(b.thread_id) AS threads, count(*) AS idle_threads,
       coalesce(sum(c.n), 0)::bigint AS checkpoints, coalesce(sum(w.n), 0)::bigint AS writes,
       coalesce(sum(bl.n), 0)::bigint AS blobs, coalesce(array_agg(b.thread_id) FILTER (WHERE c.live), '{}') AS live
  FROM batch b
  LEFT JOIN (SELECT thread_id, count(*) AS n, bool_or(live) AS live FROM checkpoints GROUP BY 1) AS c USING (thread_id)
  LEFT JOIN (SELECT thread_id, count(*) AS n FROM writes GROUP BY 1) AS w USING (thread_id)
  LEFT JOIN (SELECT thread_id, count(*) AS n FROM blobs GROUP BY 1) AS bl USING (thread_id)
 GROUP BY b.tenant
"""
PRUNE_DELETE_IDLE = _PRUNE_IDLE_BATCH + _PRUNE_IDLE_DELETE + _PRUNE_IDLE_REPORT
PRUNE_COUNT_IDLE = _PRUNE_IDLE_BATCH + _PRUNE_IDLE_COUNT + _PRUNE_IDLE_REPORT

# An incremental run's threads: those with a checkpoint written at or after the mark (the ts index).
PRUNE_CHANGED_THREADS = f"""
SELECT DISTINCT c.thread_id FROM checkpoints c {_PRUNE_OWNED} WHERE (c.checkpoint->>'ts') >= %(mark)s AND {_PRUNE_IN_TENANT}
"""
PRUNE_MARK = "SELECT mark, full_pass_at FROM memory_job_watermarks WHERE job = %(job)s"
PRUNE_SET_MARK = """
INSERT INTO memory_job_watermarks (job, mark, full_pass_at, updated_at) VALUES (%(job)s, %(mark)s, %(full_pass_at)s, now())
ON CONFLICT (job) DO UPDATE
   SET mark = excluded.mark, full_pass_at = coalesce(excluded.full_pass_at, memory_job_watermarks.full_pass_at),
       updated_at = excluded.updated_at
"""

# History trimming: threads with a namespace holding more than `keep` checkpoints.
PRUNE_LONG_THREADS = f"""
SELECT t.thread_id, t.tenants
  FROM (SELECT c.thread_id, c.checkpoint_ns, count(*) AS n, array_agg(DISTINCT {_PRUNE_ROW_TENANT}) AS tenants
          FROM checkpoints c {_PRUNE_OWNED}
         WHERE {_PRUNE_IN_TENANT} AND {_PRUNE_IN_THREADS}
         GROUP BY c.thread_id, c.checkpoint_ns) AS t
 WHERE t.n > %(keep)s
 ORDER BY t.thread_id
"""
# One thread's snapshot (REPEATABLE READ): what the trim plan is computed from. `stored` are the
# channels with a value at the checkpoint itself (inline, non-null); blobs come separately.
PRUNE_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
# A run holding one of the thread's rows makes the trim give up on it (retried, then next run).
PRUNE_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '2s'"
PRUNE_THREAD_CHECKPOINTS = """
SELECT checkpoint_ns, checkpoint_id, parent_checkpoint_id,
       coalesce((checkpoint->>'v')::int, 0) AS v,
       coalesce(checkpoint->'channel_versions', '{}'::jsonb) AS versions,
       ARRAY(SELECT key FROM jsonb_each(coalesce(checkpoint->'channel_values', '{}'::jsonb))
              WHERE value <> 'null'::jsonb) AS inline,
       ARRAY(SELECT key FROM jsonb_each(coalesce(checkpoint->'channel_values', '{}'::jsonb))
              WHERE value = 'true'::jsonb) AS markers,
       ARRAY(SELECT jsonb_object_keys(CASE WHEN jsonb_typeof(metadata->'counters_since_delta_snapshot') = 'object'
                                           THEN metadata->'counters_since_delta_snapshot' ELSE '{}'::jsonb END))
           AS delta_counters
  FROM checkpoints WHERE thread_id = %(thread_id)s
"""
PRUNE_THREAD_BLOBS = """
SELECT checkpoint_ns, channel, version, type FROM checkpoint_blobs WHERE thread_id = %(thread_id)s
"""
PRUNE_TRIM_WRITES = """
DELETE FROM checkpoint_writes
 WHERE thread_id = %(thread_id)s AND checkpoint_ns = %(ns)s AND checkpoint_id = ANY(%(ids)s)
"""
PRUNE_COUNT_TRIM_WRITES = """
SELECT count(*) AS n FROM checkpoint_writes
 WHERE thread_id = %(thread_id)s AND checkpoint_ns = %(ns)s AND checkpoint_id = ANY(%(ids)s)
"""
PRUNE_TRIM_CHECKPOINTS = """
DELETE FROM checkpoints
 WHERE thread_id = %(thread_id)s AND checkpoint_ns = %(ns)s AND checkpoint_id = ANY(%(ids)s)
"""
PRUNE_TRIM_BLOBS = """
DELETE FROM checkpoint_blobs b
 USING unnest(%(channels)s::text[], %(versions)s::text[]) AS g(channel, version)
 WHERE b.thread_id = %(thread_id)s AND b.checkpoint_ns = %(ns)s
   AND b.channel = g.channel AND b.version = g.version
"""
# A kept checkpoint whose parent is gone becomes the thread's root (as PostgresSaver.prune does).
PRUNE_TRIM_PARENTS = """
UPDATE checkpoints SET parent_checkpoint_id = NULL
 WHERE thread_id = %(thread_id)s AND checkpoint_ns = %(ns)s AND parent_checkpoint_id = ANY(%(ids)s)
"""

# Orphans: writes of a checkpoint that is gone, and blobs no checkpoint references, only where
# the thread has moved past them (a newer checkpoint / a newer version of the channel): a run
# saves writes and blobs before their checkpoint commits, and those are not orphans.
PRUNE_ORPHAN_WRITES = f"""
WITH newest AS (
    SELECT c.thread_id, c.checkpoint_ns, max(c.checkpoint_id) AS checkpoint_id,
           array_agg(DISTINCT {_PRUNE_ROW_TENANT}) AS tenants
      FROM checkpoints c {_PRUNE_OWNED}
     WHERE {_PRUNE_IN_TENANT} AND {_PRUNE_IN_THREADS}
     GROUP BY c.thread_id, c.checkpoint_ns
)
SELECT w.thread_id, w.checkpoint_ns, w.checkpoint_id, count(*) AS n, min(n.tenants) AS tenants
  FROM checkpoint_writes w
  JOIN newest n ON n.thread_id = w.thread_id AND n.checkpoint_ns = w.checkpoint_ns
 WHERE w.checkpoint_id < n.checkpoint_id
   AND (%(threads)s::text[] IS NULL OR w.thread_id = ANY(%(threads)s::text[]))
   AND NOT EXISTS (SELECT 1 FROM checkpoints c
                    WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns
                      AND c.checkpoint_id = w.checkpoint_id)
 GROUP BY w.thread_id, w.checkpoint_ns, w.checkpoint_id
"""
PRUNE_ORPHAN_BLOBS = f"""
WITH refs AS (
    SELECT c.thread_id, c.checkpoint_ns, v.key AS channel, v.value AS version, {_PRUNE_ROW_TENANT} AS tenant
      FROM checkpoints c {_PRUNE_OWNED}
     CROSS JOIN LATERAL jsonb_each_text(coalesce(c.checkpoint->'channel_versions', '{{}}'::jsonb)) AS v
     WHERE {_PRUNE_IN_TENANT} AND {_PRUNE_IN_THREADS}
), newest AS (
    SELECT thread_id, checkpoint_ns, channel, max(version) AS version, array_agg(DISTINCT tenant) AS tenants
      FROM refs GROUP BY thread_id, checkpoint_ns, channel
)
SELECT b.thread_id, b.checkpoint_ns, b.channel, b.version, n.tenants
  FROM checkpoint_blobs b
  JOIN newest n ON n.thread_id = b.thread_id AND n.checkpoint_ns = b.checkpoint_ns AND n.channel = b.channel
 WHERE b.version < n.version
   AND (%(threads)s::text[] IS NULL OR b.thread_id = ANY(%(threads)s::text[]))
   AND NOT EXISTS (SELECT 1 FROM refs r
                    WHERE r.thread_id = b.thread_id AND r.checkpoint_ns = b.checkpoint_ns
                      AND r.channel = b.channel AND r.version = b.version)
"""
PRUNE_DELETE_ORPHAN_WRITES = """
WITH gone AS (
    DELETE FROM checkpoint_writes w
     USING unnest(%(threads)s::text[], %(namespaces)s::text[], %(ids)s::text[]) AS g(thread_id, checkpoint_ns, checkpoint_id)
     WHERE w.thread_id = g.thread_id AND w.checkpoint_ns = g.checkpoint_ns AND w.checkpoint_id = g.checkpoint_id
       AND NOT EXISTS (SELECT 1 FROM checkpoints c
                        WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns
                          AND c.checkpoint_id = w.checkpoint_id)
    RETURNING w.thread_id
)
SELECT thread_id, count(*) AS n FROM gone GROUP BY thread_id
"""
PRUNE_DELETE_ORPHAN_BLOBS = """
WITH gone AS (
    DELETE FROM checkpoint_blobs b
     USING unnest(%(threads)s::text[], %(namespaces)s::text[], %(channels)s::text[], %(versions)s::text[])
           AS g(thread_id, checkpoint_ns, channel, version)
     WHERE b.thread_id = g.thread_id AND b.checkpoint_ns = g.checkpoint_ns
       AND b.channel = g.channel AND b.version = g.version
       AND NOT EXISTS (SELECT 1 FROM checkpoints c
                        WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
                          AND c.checkpoint->'channel_versions'->>b.channel = b.version)
    RETURNING b.thread_id
)
SELECT thread_id, count(*) AS n FROM gone GROUP BY thread_id
"""


# -- thread ownership (memory/ownership.py, the thread_ownership migration) -----------------------
# `memory_threads` names the owning tenant of each checkpoint thread (NULL: unattributed). Rows of a
# thread id without an owner row are refused to everyone (the functions below) until assigned.

# The migration: a thread every checkpoint of which names one valid tenant goes to it; anything
# else (no tenant, several, an invalid id, rows only in blobs/writes) stays unattributed.
OWNERSHIP_BACKFILL = r"""
INSERT INTO memory_threads (thread_id, tenant)
SELECT thread_id,
       CASE WHEN count(DISTINCT tenant) = 1 AND bool_and(tenant IS NOT NULL)
                 AND min(tenant) ~ '^[A-Za-z0-9_@+:~-]{1,128}$'
            THEN min(tenant) END
  FROM (SELECT thread_id, metadata->>'assistant_id' AS tenant FROM checkpoints
        UNION ALL SELECT thread_id, NULL FROM checkpoint_blobs
                   WHERE thread_id NOT IN (SELECT thread_id FROM checkpoints)
        UNION ALL SELECT thread_id, NULL FROM checkpoint_writes
                   WHERE thread_id NOT IN (SELECT thread_id FROM checkpoints)) AS rows
 GROUP BY thread_id
ON CONFLICT (thread_id) DO NOTHING
"""

# The owner of one thread (`owned` false: no owner row; with `written`, rows written around the saver).
OWNERSHIP_OWNER = """
SELECT (SELECT tenant FROM memory_threads WHERE thread_id = %(thread_id)s) AS tenant,
       EXISTS (SELECT 1 FROM memory_threads WHERE thread_id = %(thread_id)s) AS owned,
       EXISTS (SELECT 1 FROM checkpoints WHERE thread_id = %(thread_id)s) AS written
"""

# `list()` without a thread, and every list: only the tenant's threads (appended to the saver's WHERE).
OWNERSHIP_LIST_SCOPE = "thread_id IN (SELECT thread_id FROM memory_threads WHERE tenant = %s)"

# Admin: threads nobody owns (an owner row without a tenant, or checkpoints written without going
# through the saver), and giving one an owner (only such a thread).
OWNERSHIP_UNATTRIBUTED = """
WITH unowned AS (
    SELECT thread_id, created_at FROM memory_threads WHERE tenant IS NULL
    UNION
    SELECT DISTINCT c.thread_id, NULL::timestamptz FROM checkpoints c
     WHERE NOT EXISTS (SELECT 1 FROM memory_threads t WHERE t.thread_id = c.thread_id)
)
SELECT u.thread_id, u.created_at, count(c.checkpoint_id) AS checkpoints,
       array_remove(array_agg(DISTINCT c.metadata->>'assistant_id'), NULL) AS named_tenants
  FROM unowned u LEFT JOIN checkpoints c ON c.thread_id = u.thread_id
 GROUP BY u.thread_id, u.created_at
 ORDER BY u.thread_id
"""
OWNERSHIP_ASSIGN = """
WITH unowned AS (
    UPDATE memory_threads SET tenant = %(tenant)s WHERE thread_id = %(thread_id)s AND tenant IS NULL
    RETURNING thread_id
), adopted AS (
    INSERT INTO memory_threads (thread_id, tenant)
    SELECT %(thread_id)s, %(tenant)s
     WHERE EXISTS (SELECT 1 FROM checkpoints WHERE thread_id = %(thread_id)s)
    ON CONFLICT (thread_id) DO NOTHING
    RETURNING thread_id
)
SELECT thread_id FROM unowned UNION ALL SELECT thread_id FROM adopted
"""
# Deleting one thread: its rows in the three tables and its owner row, in one statement.
OWNERSHIP_DELETE_THREAD = """
WITH writes AS (DELETE FROM checkpoint_writes WHERE thread_id = %(thread_id)s),
     blobs AS (DELETE FROM checkpoint_blobs WHERE thread_id = %(thread_id)s),
     checkpoints AS (DELETE FROM checkpoints WHERE thread_id = %(thread_id)s)
DELETE FROM memory_threads WHERE thread_id = %(thread_id)s
"""
# After an upgrade: the ids of threads nobody owns (asked only once the ownership revision ran).
OWNERSHIP_PRESENT = "SELECT to_regclass('memory_threads') IS NOT NULL AS present"
OWNERSHIP_UNATTRIBUTED_IDS = "SELECT thread_id FROM memory_threads WHERE tenant IS NULL ORDER BY thread_id"
OWNERSHIP_DROP_FUNCTIONS = (
    "DROP FUNCTION IF EXISTS memory_claim_thread(text, text)",
    "DROP FUNCTION IF EXISTS memory_check_thread(text, text)",
)

# -- thread ownership: what the saver queues before its own statements ---------------------------
# Created by the thread_ownership revision and again by every upgrade (CREATE OR REPLACE), so a
# database restored from a dump of the tables alone has them too. Both raise SQLSTATE MT001 (detail
# 'owned' or 'unattributed'); a concurrent claim's row is seen by the function's own later statement
# (READ COMMITTED: a new snapshot per statement). A thread id with rows but no owner row was written
# around the saver: refused as unattributed, never adopted.
OWNERSHIP_CLAIM_FUNCTION = """
CREATE OR REPLACE FUNCTION memory_claim_thread(p_thread_id text, p_tenant text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    owner text;
BEGIN
    INSERT INTO memory_threads (thread_id, tenant) VALUES (p_thread_id, p_tenant)
    ON CONFLICT (thread_id) DO NOTHING;
    IF FOUND THEN
        IF EXISTS (SELECT 1 FROM checkpoints WHERE thread_id = p_thread_id) THEN
            RAISE EXCEPTION 'thread has rows but no owner' USING ERRCODE = 'MT001', DETAIL = 'unattributed';
        END IF;
        RETURN;
    END IF;
    SELECT tenant INTO owner FROM memory_threads WHERE thread_id = p_thread_id;
    IF owner IS DISTINCT FROM p_tenant THEN
        RAISE EXCEPTION 'thread belongs to another tenant'
            USING ERRCODE = 'MT001', DETAIL = CASE WHEN owner IS NULL THEN 'unattributed' ELSE 'owned' END;
    END IF;
END
$$
"""
OWNERSHIP_CHECK_FUNCTION = """
CREATE OR REPLACE FUNCTION memory_check_thread(p_thread_id text, p_tenant text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    owner text;
BEGIN
    SELECT tenant INTO owner FROM memory_threads WHERE thread_id = p_thread_id;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM checkpoints WHERE thread_id = p_thread_id) THEN
            RAISE EXCEPTION 'thread has rows but no owner' USING ERRCODE = 'MT001', DETAIL = 'unattributed';
        END IF;
    ELSIF owner IS DISTINCT FROM p_tenant THEN
        RAISE EXCEPTION 'thread belongs to another tenant'
            USING ERRCODE = 'MT001', DETAIL = CASE WHEN owner IS NULL THEN 'unattributed' ELSE 'owned' END;
    END IF;
END
$$
"""
OWNERSHIP_CHECK_OR_RAISE = "SELECT memory_check_thread(%(thread_id)s, %(tenant)s)"
OWNERSHIP_CLAIM_OR_RAISE = "SELECT memory_claim_thread(%(thread_id)s, %(tenant)s)"


# -- memory tools: vectors in step, TTL refresh on listing, quotas (issue 13) ----------------------

# SWAP_ITEM_VALUE with the item's vectors replaced in the same statement (stores with an index):
# only when the swap applies, the item's `store_vectors` rows become exactly `fields` with their
# `embeddings` (pgvector text literals, computed before the statement from the new value).
SWAP_ITEM_VALUE_AND_VECTORS = f"""
WITH swapped AS ({SWAP_ITEM_VALUE.strip()}
RETURNING prefix, key
), stale AS (
    DELETE FROM store_vectors v USING swapped s
     WHERE v.prefix = s.prefix AND v.key = s.key AND v.field_name <> ALL (%(fields)s::text[])
), fresh AS (
    INSERT INTO store_vectors (prefix, key, field_name, embedding, created_at, updated_at)
    SELECT s.prefix, s.key, f.field_name, f.embedding::vector, now(), now()
      FROM swapped s, unnest(%(fields)s::text[], %(embeddings)s::text[]) AS f(field_name, embedding)
    ON CONFLICT (prefix, key, field_name) DO UPDATE
       SET embedding = EXCLUDED.embedding, updated_at = now()
)
SELECT count(*) AS swapped FROM swapped
"""

# Listing with refresh on read (memory/pushdown.py): plain StoreBackend lists through
# store.search over the whole namespace, which restarts the TTL of every row it returns; this is
# that refresh in one statement, run in the listing's transaction: the same rows (the namespace
# and its descendants, live, with a TTL), the same expression as PostgresStore's.
PUSHDOWN_REFRESH_TTL = r"""
UPDATE store
   SET expires_at = now() + (ttl_minutes || ' minutes')::interval
 WHERE (prefix = %(namespace)s OR prefix LIKE %(namespace_like)s ESCAPE '\')
   AND ttl_minutes IS NOT NULL
   AND (expires_at IS NULL OR expires_at > now())
"""

# Per-tenant quotas (memory/quotas.py), enforced by triggers on `store`: every writer (the tools,
# the HTTP Store API through PostgresStore, import, psql) is counted and limited alike. A tenant
# is a store prefix's first label; every namespace of the tenant counts. `memory_tenant_usage`
# holds each tenant's files and bytes, kept by the triggers in the writing statement: the usage
# row's lock (taken by the upsert) makes a tenant's writers take turns, so racing writers cannot
# overshoot a limit. Limits: `memory_quota_limits`, the tenant's row, else the '*' row; 0 = none.
# A statement that would take a tenant over a limit fails with SQLSTATE QUOTA_SQLSTATE and a JSON
# DETAIL (memory.quotas reads it); a change that does not grow usage is never refused.
QUOTA_SQLSTATE = "MQ001"

# An item's bytes: a file's content (UTF-8) plus the rest of its JSON value (metadata); any other
# value, its JSON text.
QUOTA_CREATE_ITEM_BYTES = """
CREATE OR REPLACE FUNCTION memory_item_bytes(value jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(value->'content') = 'string'
                THEN octet_length(value->>'content') + octet_length((value - 'content')::text)
                ELSE octet_length(value::text) END::bigint
$$
"""

# Adds a tenant's change to its usage and refuses it when it grows past a limit. `largest` is the
# size of the largest item the change writes (NULL: it grows none), `item` that item's key.
QUOTA_CREATE_ADD = f"""
CREATE OR REPLACE FUNCTION memory_quota_add(tenant text, files bigint, bytes bigint, largest bigint, item text)
RETURNS void LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    used record;
    lim record;
    exceeded text;
BEGIN
    INSERT INTO memory_tenant_usage AS u (tenant, files, bytes)
    VALUES (memory_quota_add.tenant, memory_quota_add.files, memory_quota_add.bytes)
    ON CONFLICT ON CONSTRAINT pk_memory_tenant_usage
    DO UPDATE SET files = u.files + EXCLUDED.files, bytes = u.bytes + EXCLUDED.bytes
    RETURNING u.files, u.bytes INTO used;
    IF memory_quota_add.files <= 0 AND memory_quota_add.bytes <= 0 AND largest IS NULL THEN
        RETURN;
    END IF;
    SELECT l.max_file_bytes, l.max_tenant_bytes, l.max_tenant_files INTO lim
      FROM memory_quota_limits l
     WHERE l.tenant IN (memory_quota_add.tenant, '*')
     ORDER BY l.tenant = '*'
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF lim.max_file_bytes > 0 AND largest > lim.max_file_bytes THEN
        exceeded := 'max_file_bytes';
    ELSIF lim.max_tenant_files > 0 AND memory_quota_add.files > 0 AND used.files > lim.max_tenant_files THEN
        exceeded := 'max_tenant_files';
    ELSIF lim.max_tenant_bytes > 0 AND memory_quota_add.bytes > 0 AND used.bytes > lim.max_tenant_bytes THEN
        exceeded := 'max_tenant_bytes';
    ELSE
        RETURN;
    END IF;
    RAISE EXCEPTION 'memory quota: tenant % would exceed %', memory_quota_add.tenant, exceeded
        USING ERRCODE = '{QUOTA_SQLSTATE}',
              DETAIL = json_build_object(
                  'tenant', memory_quota_add.tenant, 'limit', exceeded,
                  'max_file_bytes', lim.max_file_bytes, 'max_tenant_bytes', lim.max_tenant_bytes,
                  'max_tenant_files', lim.max_tenant_files,
                  'files', used.files - memory_quota_add.files, 'bytes', used.bytes - memory_quota_add.bytes,
                  'files_after', used.files, 'bytes_after', used.bytes,
                  'item', item, 'item_bytes', largest)::text,
              HINT = 'delete or shrink memory files of the tenant, or raise its [quota] limits';
END
$$
"""

# Statement-level for inserts and deletes (one usage update per tenant per statement, COPY and
# bulk imports included); row-level for updates, only when the value changes (a TTL refresh
# that sets expires_at alone never fires it).
QUOTA_CREATE_ON_INSERT = """
CREATE OR REPLACE FUNCTION memory_quota_on_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE r record;
BEGIN
    FOR r IN
        SELECT split_part(n.prefix, '.', 1) AS tenant, count(*) AS files, sum(b.bytes)::bigint AS bytes,
               max(b.bytes) AS largest, (array_agg(n.key ORDER BY b.bytes DESC))[1] AS item
          FROM quota_new_rows n CROSS JOIN LATERAL (SELECT memory_item_bytes(n.value) AS bytes) b
         GROUP BY 1 ORDER BY 1
    LOOP
        PERFORM memory_quota_add(r.tenant, r.files, r.bytes, r.largest, r.item);
    END LOOP;
    RETURN NULL;
END
$$
"""

QUOTA_CREATE_ON_DELETE = """
CREATE OR REPLACE FUNCTION memory_quota_on_delete() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE r record;
BEGIN
    FOR r IN
        SELECT split_part(o.prefix, '.', 1) AS tenant, count(*) AS files, sum(memory_item_bytes(o.value))::bigint AS bytes
          FROM quota_old_rows o GROUP BY 1 ORDER BY 1
    LOOP
        PERFORM memory_quota_add(r.tenant, -r.files, -r.bytes, NULL, NULL);
    END LOOP;
    RETURN NULL;
END
$$
"""

QUOTA_CREATE_ON_UPDATE = """
CREATE OR REPLACE FUNCTION memory_quota_on_update() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    old_bytes bigint := memory_item_bytes(OLD.value);
    new_bytes bigint := memory_item_bytes(NEW.value);
BEGIN
    IF split_part(OLD.prefix, '.', 1) <> split_part(NEW.prefix, '.', 1) THEN
        PERFORM memory_quota_add(split_part(OLD.prefix, '.', 1), -1, -old_bytes, NULL, NULL);
        PERFORM memory_quota_add(split_part(NEW.prefix, '.', 1), 1, new_bytes, new_bytes, NEW.key);
    ELSE
        PERFORM memory_quota_add(split_part(NEW.prefix, '.', 1), 0, new_bytes - old_bytes,
                                 CASE WHEN new_bytes > old_bytes THEN new_bytes END, NEW.key);
    END IF;
    RETURN NULL;
END
$$
"""

QUOTA_FUNCTIONS = (
    QUOTA_CREATE_ITEM_BYTES, QUOTA_CREATE_ADD, QUOTA_CREATE_ON_INSERT, QUOTA_CREATE_ON_DELETE, QUOTA_CREATE_ON_UPDATE,
)
"""Idempotent (CREATE OR REPLACE): the migration, and a restore's prelude (memory/backup.py)."""

QUOTA_CREATE_TRIGGERS = (
    """CREATE TRIGGER memory_quota_insert AFTER INSERT ON store
       REFERENCING NEW TABLE AS quota_new_rows FOR EACH STATEMENT EXECUTE FUNCTION memory_quota_on_insert()""",
    """CREATE TRIGGER memory_quota_delete AFTER DELETE ON store
       REFERENCING OLD TABLE AS quota_old_rows FOR EACH STATEMENT EXECUTE FUNCTION memory_quota_on_delete()""",
    """CREATE TRIGGER memory_quota_update AFTER UPDATE OF prefix, value ON store
       FOR EACH ROW WHEN (OLD.value IS DISTINCT FROM NEW.value OR OLD.prefix IS DISTINCT FROM NEW.prefix)
       EXECUTE FUNCTION memory_quota_on_update()""",
)

QUOTA_DROP = (
    "DROP TRIGGER IF EXISTS memory_quota_insert ON store",
    "DROP TRIGGER IF EXISTS memory_quota_delete ON store",
    "DROP TRIGGER IF EXISTS memory_quota_update ON store",
    "DROP FUNCTION IF EXISTS memory_quota_on_insert()",
    "DROP FUNCTION IF EXISTS memory_quota_on_delete()",
    "DROP FUNCTION IF EXISTS memory_quota_on_update()",
    "DROP FUNCTION IF EXISTS memory_quota_add(text, bigint, bigint, bigint, text)",
    "DROP FUNCTION IF EXISTS memory_item_bytes(jsonb)",
)

# Usage from the rows themselves (the migration, and `recount` after a restore that loaded rows
# with the triggers off); under a SHARE lock so no write slips between the count and the swap.
QUOTA_LOCK_STORE = "LOCK TABLE store IN SHARE MODE"
QUOTA_RECOUNT = """
WITH counted AS (
    SELECT split_part(prefix, '.', 1) AS tenant, count(*) AS files, coalesce(sum(memory_item_bytes(value)), 0)::bigint AS bytes
      FROM store GROUP BY 1
), cleared AS (
    DELETE FROM memory_tenant_usage WHERE tenant NOT IN (SELECT tenant FROM counted)
)
INSERT INTO memory_tenant_usage (tenant, files, bytes)
SELECT tenant, files, bytes FROM counted
ON CONFLICT ON CONSTRAINT pk_memory_tenant_usage DO UPDATE SET files = EXCLUDED.files, bytes = EXCLUDED.bytes
"""

# Only tenants with a TTL'd row are worth a refresh: without this index a listing's refresh would
# visit every row of the namespace to find none (the common case: no TTLs).
QUOTA_TTL_PREFIX_INDEX = """CREATE INDEX CONCURRENTLY IF NOT EXISTS memory_store_ttl_prefix_idx
ON store (prefix text_pattern_ops) WHERE ttl_minutes IS NOT NULL"""

# A search under one tenant (a one-label namespace prefix, what every tenant key's search is) pages
# its items newest first. Upstream's namespace condition for such a prefix (STORE_SEARCH_NAMESPACE)
# means exactly "the first label is the tenant" (labels hold no '.'); said as STORE_SEARCH_TENANT,
# this index serves it in order, so a page reads its own rows, not a sort of all the tenant's items.
STORE_TENANT_RECENT_INDEX = """CREATE INDEX CONCURRENTLY IF NOT EXISTS memory_store_tenant_recent_idx
ON store (split_part(prefix, '.', 1), updated_at DESC)"""
# Whether that index is there and valid: without it (code deployed before `memory db upgrade`, or a
# build interrupted) the tenant condition would read the whole table, so searches keep upstream's.
STORE_TENANT_INDEX_READY = """
SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('memory_store_tenant_recent_idx') AND indisvalid) AS ready
"""
STORE_SEARCH_NAMESPACE = r"(store.prefix = %s OR store.prefix LIKE %s ESCAPE '\')"
STORE_SEARCH_TENANT = "split_part(store.prefix, '.', 1) = %s"

# Gets of one namespace (memory.pgstore.PlainGets): upstream says each as one statement holding an
# UPDATE (`WITH updated AS (UPDATE store ...)`, the TTL refresh), which doubles a get's cost in
# PostgreSQL even when no row has a TTL. Here the read is a plain SELECT that also says whether the
# row has a TTL; the refresh (upstream's expression) is sent only for rows that have one.
STORE_GET_ITEMS = """
SELECT key, value, created_at, updated_at, ttl_minutes FROM store WHERE prefix = %s AND key = ANY(%s)
"""
STORE_REFRESH_TTL = """
UPDATE store SET expires_at = NOW() + (ttl_minutes || ' minutes')::interval
WHERE prefix = %s AND key = ANY(%s) AND ttl_minutes IS NOT NULL
"""
STORE_NOT_EXPIRED = " AND (expires_at IS NULL OR expires_at > NOW())"
"""Appended to both when the store omits expired rows (upstream's `omit_expired`): an expired row
is neither read nor revived."""

QUOTA_LIMITS_PRESENT = "SELECT to_regclass('memory_quota_limits') IS NOT NULL AS present"
QUOTA_LIMITS_ALL = """
SELECT tenant, max_file_bytes, max_tenant_bytes, max_tenant_files FROM memory_quota_limits ORDER BY tenant
"""
QUOTA_LIMITS_CLEAR = "DELETE FROM memory_quota_limits"
QUOTA_LIMITS_SET = """
INSERT INTO memory_quota_limits (tenant, max_file_bytes, max_tenant_bytes, max_tenant_files)
SELECT * FROM unnest(%(tenants)s::text[], %(max_file_bytes)s::bigint[], %(max_tenant_bytes)s::bigint[],
                     %(max_tenant_files)s::bigint[])
"""

# One tenant's usage and effective limits (zeros when none).
QUOTA_TENANT = """
SELECT coalesce(u.files, 0) AS files, coalesce(u.bytes, 0) AS bytes,
       coalesce(l.max_file_bytes, 0) AS max_file_bytes, coalesce(l.max_tenant_bytes, 0) AS max_tenant_bytes,
       coalesce(l.max_tenant_files, 0) AS max_tenant_files
  FROM (SELECT %(tenant)s::text AS tenant) t
  LEFT JOIN memory_tenant_usage u ON u.tenant = t.tenant
  LEFT JOIN LATERAL (SELECT * FROM memory_quota_limits l WHERE l.tenant IN (t.tenant, '*')
                      ORDER BY l.tenant = '*' LIMIT 1) l ON true
"""

# Tenants using more than `ratio` of a tenant-wide limit, by limit (for /metrics).
QUOTA_NEAR_LIMITS = """
SELECT u.tenant, lim.name AS limit_name
  FROM memory_tenant_usage u
 CROSS JOIN LATERAL (SELECT * FROM memory_quota_limits l WHERE l.tenant IN (u.tenant, '*')
                      ORDER BY l.tenant = '*' LIMIT 1) l
 CROSS JOIN LATERAL (VALUES ('max_tenant_files', u.files, l.max_tenant_files),
                            ('max_tenant_bytes', u.bytes, l.max_tenant_bytes)) AS lim(name, used, maximum)
 WHERE lim.maximum > 0 AND lim.used > %(ratio)s * lim.maximum
 ORDER BY u.tenant COLLATE "C", lim.name
"""

# -- API keys and the Store API (memory/apikeys.py, memory/api/) --------------------------------
# A key is stored as the sha256 of its secret; the secret is printed once by `memory keys create`.
API_KEY_INSERT = """
INSERT INTO memory_api_keys (id, tenant, name, admin, key_hash)
VALUES (%(id)s, %(tenant)s, %(name)s, %(admin)s, %(key_hash)s)
RETURNING id, tenant, name, admin, created_at, last_used_at, revoked_at
"""
API_KEY_LIST = """
SELECT id, tenant, name, admin, created_at, last_used_at, revoked_at
  FROM memory_api_keys
 ORDER BY created_at, id
"""
# Revocation tells every `memory serve` at commit (NOTIFY on API_KEYS_CHANNEL, in the revoking
# statement itself), so their key caches (memory/api/keycache.py) drop the key at once.
API_KEYS_CHANNEL = "memory_api_keys"
API_KEY_REVOKE = f"""
WITH revoked AS (
    UPDATE memory_api_keys SET revoked_at = coalesce(revoked_at, now())
     WHERE id = %(id)s
    RETURNING id, tenant, name, admin, created_at, last_used_at, revoked_at
)
SELECT revoked.*, pg_notify('{API_KEYS_CHANNEL}', revoked.id) FROM revoked
"""
# The key cache's listener (a connection of its own) and its heartbeat (sent through the pool,
# heard on the listener: proof that notifications reach this server).
API_KEYS_LISTEN = f"LISTEN {API_KEYS_CHANNEL}"
API_KEYS_NOTIFY = f"SELECT pg_notify('{API_KEYS_CHANNEL}', %(payload)s)"
# Last use of keys served from the cache, written in one statement off the request path.
API_KEYS_TOUCH = """
UPDATE memory_api_keys SET last_used_at = now()
 WHERE id = ANY(%(ids)s) AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
"""
# One round trip per request: the live key of this hash, and its last use stamped at most once a
# minute (a write per request would make every API read a write).
API_KEY_AUTHENTICATE = """
WITH k AS (
    SELECT id, tenant, admin, last_used_at FROM memory_api_keys
     WHERE key_hash = %(key_hash)s AND revoked_at IS NULL
), touched AS (
    UPDATE memory_api_keys AS m SET last_used_at = now()
      FROM k
     WHERE m.id = k.id AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')
)
SELECT id, tenant, admin FROM k
"""
# `/ready`: the schema revision, on a pooled connection.
API_SCHEMA_REVISION = "SELECT version_num FROM alembic_version"

# -- erasure ledger and single-tenant restore (memory/erasure.py, memory/tenant_restore.py) ------
# "A tenant exists": it holds memory items or owns checkpoint threads.
ERASURE_TENANT_EXISTS = f"""
SELECT EXISTS (SELECT 1 FROM store WHERE {_TENANT_ITEMS})
    OR EXISTS (SELECT 1 FROM memory_threads WHERE tenant = %(tenant)s) AS present
"""
ERASURE_LEDGER_PRESENT = "SELECT to_regclass('memory_tenant_erasures') IS NOT NULL AS present"
ERASURE_LEDGER = """
SELECT tenant, erased_at, counts FROM memory_tenant_erasures
 WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s::text
 ORDER BY erased_at, id
"""
ERASURE_LEDGER_COUNT = "SELECT count(*) AS n FROM memory_tenant_erasures"

# Scratch databases of single-tenant restores ({name} is a psycopg.sql.Identifier). A restore holds
# the advisory lock (SCRATCH_LOCK_SPACE, key) while its scratch `memory_scratch_<key>` exists; a
# scratch whose lock nobody holds (its restore died, kill -9 included) is dropped by the next one.
SCRATCH_LOCK = "SELECT pg_try_advisory_lock(%(space)s::int, %(key)s::int) AS locked"
SCRATCH_UNLOCK = "SELECT pg_advisory_unlock(%(space)s::int, %(key)s::int) AS released"
SCRATCH_DATABASES = r"SELECT datname FROM pg_database WHERE datname LIKE 'memory\_scratch\_%' ORDER BY datname"
SCRATCH_HELD = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND objsubid = 2 AND granted
       AND classid = %(space)s::int::oid AND objid = %(key)s::int::oid
) AS held
"""
SCRATCH_CREATE = "CREATE DATABASE {name} TEMPLATE template0"
SCRATCH_DROP = "DROP DATABASE IF EXISTS {name} WITH (FORCE)"


# -- job batches (jobs/runs.py: batch_settings) -------------------------------------------------
# For the batches of a real run: commits need not wait for the disk (a crash loses at most the
# last batches, which the next run deletes again; the run's own record is committed with the
# session's setting afterwards, which flushes every batch before it), and a row a writer holds
# makes the batch give up after `lock_timeout`, before any deadlock check could pick the writer.
JOB_BATCH_SETTINGS = "SELECT current_setting('synchronous_commit') AS synchronous_commit, current_setting('lock_timeout') AS lock_timeout"
JOB_SET_BATCH_SETTINGS = """
SELECT set_config('synchronous_commit', %(synchronous_commit)s, false), set_config('lock_timeout', %(lock_timeout)s, false)
"""


# -- job locks and ticks (jobs/runs.py) -----------------------------------------------------------

JOB_TRY_XACT_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended(%(lock_name)s, 0)) AS acquired"
"""Held by an open transaction on a connection of its own: released when it ends or the connection drops."""

JOB_TICK_CLAIM = """
INSERT INTO memory_job_ticks (job, tick, host) VALUES (%(job)s, %(tick)s, %(host)s)
ON CONFLICT (job, tick) DO NOTHING
RETURNING true AS claimed
"""

JOB_TICK_RELEASE = "DELETE FROM memory_job_ticks WHERE job = %(job)s AND tick = %(tick)s AND host = %(host)s"
