"""Semantic search over memory: the `[index]` settings become LangGraph's `PostgresIndexConfig`.

`[index] dims = 0` (the default) leaves the store without vectors. With `dims > 0`, `embed` names
the embedding model as "provider:model" (resolved by `langchain.embeddings.init_embeddings`), or
"fake" for a deterministic offline embedding (tests, demos); the store then embeds `fields` of each
item into `store_vectors`, which needs the pgvector extension on the server.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings

from memory import sql
from memory.db import describe_url
from memory.errors import ConfigError, MemoryServiceError

if TYPE_CHECKING:
    import psycopg
    from langgraph.store.postgres import PostgresIndexConfig

FAKE_EMBED = "fake"
"""`[index] embed = "fake"`: `HashingEmbeddings`, offline; texts sharing words get close vectors."""


class PgvectorMissing(MemoryServiceError):
    """The server has no pgvector extension; install pgvector there or set [index] dims = 0."""


def index_config(dims: int, embed: str, fields: list[str]) -> PostgresIndexConfig | None:
    """The store's `index` argument, or None when `dims` is 0 (no vectors)."""
    if dims == 0:
        return None
    return {"dims": dims, "embed": embeddings(embed, dims), "fields": list(fields)}


def embeddings(embed: str, dims: int) -> Embeddings:
    if not embed:
        raise ConfigError(
            "[index] dims is set but [index] embed is empty; name a model as "
            '"provider:model" (e.g. "openai:text-embedding-3-small") or set [index] dims = 0'
        )
    if embed == FAKE_EMBED:
        return HashingEmbeddings(dims)
    from langchain.embeddings import init_embeddings

    try:
        return init_embeddings(embed)
    except (ValueError, ImportError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"[index] embed = {embed!r}: {reason}") from exc


class HashingEmbeddings(Embeddings):
    """Bag-of-words feature hashing: no model, no network, the same text always the same vector.

    For tests and demos only: it matches shared words, not meaning.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        vector = [0.0] * self.size
        for word in re.findall(r"\w+", text.lower()) or [""]:
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "big") % self.size
            vector[bucket] += 1.0 if digest[4] & 1 else -1.0
        if not any(vector):
            vector[0] = 1.0  # pgvector's cosine distance is undefined for the zero vector
        norm = math.sqrt(sum(v * v for v in vector))
        return [v / norm for v in vector]


def require_pgvector(conn: psycopg.Connection, url: str) -> None:
    """Raise `PgvectorMissing` naming the server when pgvector cannot be created in this database."""
    if conn.execute(sql.PGVECTOR_AVAILABLE).fetchone() is None:
        where = describe_url(url).rsplit("/", 1)[0]
        raise PgvectorMissing(
            f"the server at {where} has no pgvector extension; "
            "install pgvector there or set [index] dims = 0 (MEMORY_INDEX_DIMS=0)"
        )
