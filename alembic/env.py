"""Alembic environment for deepagents-memory.

The connection comes from the caller: `memory.migrations` (the service's `setup()`, `memory db ...`,
the tests) passes an open one in `config.attributes["connection"]`, with the schema, the URL and the
vector index config beside it. Run as plain `alembic` from the repository root (e.g.
`alembic revision --autogenerate -m "..."`), it reads `MemorySettings` instead (`-x url=...` wins;
no URL starts the embedded server).

Autogenerate compares `memory.schema.metadata` only: LangGraph's tables (`store`, `checkpoints`,
...) are created by their own `setup()`, which the first revision calls.
"""

from __future__ import annotations

from alembic import context

from memory import migrations
from memory.schema import metadata

config = context.config


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=migrations.include_object,
        version_table_schema=config.attributes.get("schema", "public"),
        transaction_per_migration=True,  # revisions use autocommit blocks (CREATE INDEX CONCURRENTLY)
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_standalone() -> None:
    """`alembic ...` from a shell: settings (or `-x url=`) give the database."""
    from memory.embedded import EmbeddedPostgres
    from memory.settings import MemorySettings
    from memory.vectors import index_config

    settings = MemorySettings.load()
    url = context.get_x_argument(as_dictionary=True).get("url") or settings.database_url
    embedded = None
    if not url:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()
    config.attributes.update(
        database_url=url,
        schema=settings.database_schema,
        index=index_config(settings.index_dims, settings.index_embed, settings.index_fields),
    )
    try:
        with migrations.connect(url, settings.database_schema, settings.database_prepare_threshold) as connection:
            migrations.ensure_schema(connection, settings.database_schema)
            run_migrations(connection)
    finally:
        if embedded is not None:
            embedded.stop()


if context.is_offline_mode():
    raise migrations.MigrationError(
        "offline (--sql) mode is not supported: the first revision runs LangGraph's setup() "
        "against a live database; run `memory db upgrade` instead"
    )
elif (connection := config.attributes.get("connection")) is not None:
    run_migrations(connection)
else:
    run_standalone()
