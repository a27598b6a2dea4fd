"""`PipelinedAsyncPostgresStore` answers every batch exactly as `AsyncPostgresStore` does."""

from __future__ import annotations

import asyncio

from langgraph.store.base import GetOp, ListNamespacesOp, PutOp, SearchOp
from langgraph.store.postgres import AsyncPostgresStore

from memory.db import aopen_pool
from memory.pgstore import PipelinedAsyncPostgresStore

TTL = {"refresh_on_read": True, "omit_expired": True}


def _reads(root: str) -> list:
    return [
        GetOp((root, "a"), "k1"),
        GetOp((root, "a"), "missing"),
        GetOp((root, "b"), "k1", refresh_ttl=False),
        GetOp((root, "a"), "k2"),
        SearchOp((root,), limit=10),
        SearchOp((root, "a"), filter={"n": 2}, limit=5),
        SearchOp(("nobody",), limit=10),
        ListNamespacesOp(match_conditions=None, max_depth=None, limit=100, offset=0),
        GetOp((root, "c", "d"), "k3"),
    ]


def _seed(root: str) -> list:
    return [
        PutOp((root, "a"), "k1", {"n": 1, "content": "one"}),
        PutOp((root, "a"), "k2", {"n": 2, "content": "two"}, ttl=60),
        PutOp((root, "b"), "k1", {"n": 3, "content": "three"}),
        PutOp((root, "c", "d"), "k3", {"n": 4, "content": "four"}),
    ]


def _plain(result):
    """Results without timestamps (and TTL refreshes), comparable across two stores and roots."""
    if isinstance(result, list):
        return [_plain(item) for item in result]
    if hasattr(result, "dict"):
        return {k: v for k, v in result.dict().items() if k not in ("created_at", "updated_at")}
    return result


def test_every_kind_of_read_and_a_write_in_one_batch_answer_as_upstream(database_url):
    async def scenario():
        async with await aopen_pool(database_url, 1, 4) as pool:
            upstream = AsyncPostgresStore(pool, ttl=TTL)
            pipelined = PipelinedAsyncPostgresStore(pool, ttl=TTL)
            await upstream.abatch(_seed("theirs"))
            await pipelined.abatch(_seed("ours"))
            answers = {}
            for root, store in (("theirs", upstream), ("ours", pipelined)):
                # A get of a key written in the same batch sees the state before the batch, as upstream.
                batch = [*_reads(root), PutOp((root, "a"), "new", {"n": 5}), GetOp((root, "a"), "new")]
                answers[root] = await store.abatch(batch)
                assert await store.aget((root, "a"), "new") is not None
            return answers

    answers = asyncio.run(scenario())
    theirs, ours = answers["theirs"], answers["ours"]
    assert len(ours) == len(theirs) == 11
    namespaces_ours = [ns for ns in ours[7] if ns[0] == "ours"]
    namespaces_theirs = [ns for ns in theirs[7] if ns[0] == "theirs"]
    assert [ns[1:] for ns in namespaces_ours] == [ns[1:] for ns in namespaces_theirs] == [("a",), ("b",), ("c", "d")]
    for index, (mine, upstream) in enumerate(zip(ours, theirs, strict=True)):
        if index != 7:  # the same answers, but for the root label
            assert repr(_plain(mine)).replace("'ours'", "'root'") == repr(_plain(upstream)).replace("'theirs'", "'root'"), index
    assert ours[0].value == {"n": 1, "content": "one"} and ours[1] is None and ours[10] is None
    assert [item.key for item in ours[5]] == ["k2"] and ours[6] == []
