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
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings
from langgraph.store.base import get_text_at_path

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


# -- keeping an item's vectors in step with its value ------------------------------------------


def item_texts(store: Any, value: dict[str, Any]) -> list[tuple[str, str]]:
    """`(field_name, text)` pairs the store embeds for `value`, named as `PostgresStore.put` names
    them (`content`, or `content.0`, `content.1`... for a list); empty when the store has no index."""
    config = getattr(store, "index_config", None)
    if not config:
        return []
    pairs: list[tuple[str, str]] = []
    for path, tokenized in config["__tokenized_fields"]:
        texts = get_text_at_path(value, tokenized)
        pairs.extend((f"{path}.{i}" if len(texts) > 1 else path, text) for i, text in enumerate(texts))
    return pairs


def _literal(vector: list[float]) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def vector_params(fields: list[str], vectors: list[list[float]]) -> dict[str, Any]:
    """`fields` and `embeddings` (pgvector text literals) for `sql.SWAP_ITEM_VALUE_AND_VECTORS`."""
    return {"fields": fields, "embeddings": [_literal(vector) for vector in vectors]}


def embed_value(store: Any, value: dict[str, Any]) -> dict[str, Any]:
    """Embed `value` with the store's own embeddings: the vector parameters of a swap."""
    pairs = item_texts(store, value)
    vectors = store.embeddings.embed_documents([text for _, text in pairs]) if pairs else []
    return vector_params([field for field, _ in pairs], vectors)


async def aembed_value(store: Any, value: dict[str, Any]) -> dict[str, Any]:
    """Async twin of `embed_value`."""
    pairs = item_texts(store, value)
    vectors = await store.embeddings.aembed_documents([text for _, text in pairs]) if pairs else []
    return vector_params([field for field, _ in pairs], vectors)
