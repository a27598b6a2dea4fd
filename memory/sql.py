"""Every SQL statement of the service, by name."""

DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = %(name)s"

SERVER_VERSION = "SELECT current_setting('server_version_num')::int AS version_num"

# Compare-and-swap of one memory item: applies only when the row still holds the value read.
SWAP_ITEM_VALUE = """
UPDATE store
   SET value = %(new_value)s,
       updated_at = now(),
       expires_at = CASE WHEN ttl_minutes IS NULL THEN expires_at
                         ELSE now() + make_interval(mins => ttl_minutes) END
 WHERE prefix = %(prefix)s
   AND key = %(key)s
   AND value = %(old_value)s
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
