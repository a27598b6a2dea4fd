"""Live API keys remembered in the server, trusted only while it hears every revocation.

A revocation (`memory keys revoke`, `memory restore`) sends a NOTIFY on `sql.API_KEYS_CHANNEL`
in the statement that revokes, delivered when it commits. The server keeps one connection of its
own LISTENing there, and serves keys from memory only while that listener is proven to work:

- every `HEARTBEAT_S` it sends a ping through the pool; the cache is used only after the first
  ping came back on the listener, and is dropped when a ping does not come back within
  `HEARTBEAT_S` (a silently dead connection; PgBouncer in transaction mode, where LISTEN does not
  work, never gets that far) or when the listener's connection fails;
- any other notification empties the cache;
- a lookup that raced a notification is not cached (the generation changed while it ran);
- an entry lives at most `max_age_s` however quiet the channel (a key changed by hand in SQL).

While not listening, every request asks the database, as with the cache off. Keys served from
memory have their last use written off the request path, at most once a minute each.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import psycopg
from psycopg_pool import AsyncConnectionPool

from memory import sql
from memory.apikeys import Principal

logger = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
RETRY_S = 1.0
MAX_ENTRIES = 10_000
TOUCH_EVERY_S = 30.0
APPLICATION_NAME = "memory-api-key-listener"
PING = "ping:"


class ListenerLost(Exception):
    """The heartbeat did not come back on the listener."""


class KeyCache:
    """sha256 of a secret -> its live `Principal`, while the listener hears the channel."""

    def __init__(self, pool: AsyncConnectionPool, url: str, max_age_s: float, *, retry_s: float = RETRY_S) -> None:
        self.pool = pool
        self.url = url
        self.max_age_s = max_age_s
        self.retry_s = retry_s
        self.live = False
        self.hits = 0
        self.listens = 0
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._generation = 0
        self._used: set[str] = set()
        self._touched_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._entries) if self.live else 0

    # -- requests ---------------------------------------------------------------------------

    def get(self, key_hash: str) -> Principal | None:
        if not self.live:
            return None
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if time.monotonic() >= entry[1]:
            del self._entries[key_hash]
            return None
        self.hits += 1
        if entry[0].key_id:
            self._used.add(entry[0].key_id)
        return entry[0]

    def generation(self) -> int:
        return self._generation

    def put(self, key_hash: str, principal: Principal, generation: int) -> None:
        """Remember a key the database just found live, unless a notification came meanwhile."""
        if not self.live or generation != self._generation:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key_hash] = (principal, time.monotonic() + self.max_age_s)

    def invalidate(self) -> None:
        self._generation += 1
        self._entries.clear()

    # -- the listener -----------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="memory-api-key-listener")

    async def stop(self) -> None:
        self._lost()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._touch()

    def _lost(self) -> None:
        self.live = False
        self.invalidate()

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError, ListenerLost) as exc:
                if self.live:
                    logger.warning("API key cache off (every request asks the database): %s", " ".join(str(exc).split()))
            finally:
                self._lost()
            await asyncio.sleep(self.retry_s)

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, application_name=APPLICATION_NAME
        ) as conn:
            await conn.execute(sql.API_KEYS_LISTEN)
            while True:
                ping = PING + secrets.token_hex(8)
                await self._notify(ping)
                heard = False
                async for note in conn.notifies(timeout=HEARTBEAT_S):
                    if note.payload == ping:
                        heard = True
                        if not self.live:
                            self.invalidate()
                            self.live = True
                            self.listens += 1
                    elif not note.payload.startswith(PING):
                        self.invalidate()
                if not heard:
                    raise ListenerLost(f"a heartbeat was not heard within {HEARTBEAT_S}s on the listener")
                if time.monotonic() - self._touched_at >= TOUCH_EVERY_S:
                    await self._touch()

    async def _notify(self, payload: str) -> None:
        async with self.pool.connection(timeout=HEARTBEAT_S) as conn:
            await conn.execute(sql.API_KEYS_NOTIFY, {"payload": payload})

    async def _touch(self) -> None:
        """Stamp the last use of the keys served from memory since the last stamp."""
        self._touched_at = time.monotonic()
        used, self._used = self._used, set()
        if not used:
            return
        try:
            async with self.pool.connection(timeout=HEARTBEAT_S) as conn:
                await conn.execute(sql.API_KEYS_TOUCH, {"ids": sorted(used)})
        except (psycopg.Error, TimeoutError) as exc:
            logger.warning("API keys: last use not recorded: %s", " ".join(str(exc).split()))
