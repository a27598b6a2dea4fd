"""The Store API, as `langgraph_sdk`'s `client.store` calls it, scoped to the caller's tenant.

    PUT    /store/items            {namespace, key, value, index?, ttl?}          -> 204
    GET    /store/items?namespace=a.b&key=k[&refresh_ttl=true|false]            -> item or null
    DELETE /store/items            {namespace, key}                               -> 204
    POST   /store/items/search     {namespace_prefix, filter?, limit, offset, query?, refresh_ttl?}
                                                                                  -> {"items": [...]}
    POST   /store/namespaces       {prefix?, suffix?, max_depth?, limit, offset}  -> {"namespaces": [...]}

A tenant's credentials reach the namespaces whose first label is the tenant: a write (put,
delete) elsewhere is 403; a read elsewhere finds nothing (null, no items, no namespaces), exactly
as if nothing were there, so a response never tells that another tenant exists. Searches and
listings without a prefix are confined to the caller's tenant. Admin credentials reach all.
Writes go through the official `AsyncPostgresStore` (its vector index stays in step) with the TTL
the retention policy gives, and deletes of a tenant under legal hold are refused (409).

`StoreApi` is a raw ASGI app: `memory.api.app` sends these five routes to it straight from its one
middleware, past Starlette's router, exception middleware, request and response objects (about a
tenth of the server's CPU per request); its refusals are the same JSON as the app's handlers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from langgraph.store.postgres import AsyncPostgresStore
from starlette.datastructures import Headers, QueryParams
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from memory.api.auth import Authenticator
from memory.api.errors import ApiError, conflict, forbidden, refusal, unprocessable
from memory.apikeys import Principal
from memory.retention import RetentionPolicy
from memory.tenancy import InvalidNamespace, validate_namespace

MAX_KEY_LENGTH = 1024
JSON_HEADERS = [(b"content-type", b"application/json")]

Handler = Callable[[Scope, Receive, Principal], Awaitable[bytes | None]]
"""An endpoint: the JSON body of a 200, or None for a 204."""


@dataclass
class StoreApi:
    """What the endpoints need: the store, the policy, who is calling, the largest page."""

    store: AsyncPostgresStore
    policy: RetentionPolicy
    auth: Authenticator
    max_page: int = 1000
    endpoints: dict[tuple[str, str], Handler] = field(init=False)
    """(method, path) -> handler: the exact requests `memory.api.app` sends here."""

    def __post_init__(self) -> None:
        self.endpoints = {
            ("PUT", "/store/items"): self.put_item,
            ("GET", "/store/items"): self.get_item,
            ("HEAD", "/store/items"): self.get_item,
            ("DELETE", "/store/items"): self.delete_item,
            ("POST", "/store/items/search"): self.search_items,
            ("POST", "/store/namespaces"): self.list_namespaces,
        }

    def routes(self) -> list[Route]:
        """The same paths for Starlette's router: what it alone answers (405, a trailing slash's redirect)."""
        return [
            Route("/store/items", self, methods=["PUT", "GET", "DELETE"]),
            Route("/store/items/search", self, methods=["POST"]),
            Route("/store/namespaces", self, methods=["POST"]),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.endpoints.get((scope["method"], scope["path"]))
        try:
            if handler is None:
                raise ApiError(405, "Method Not Allowed")
            who = await self.auth.principal(Headers(raw=scope["headers"]))
            body = await handler(scope, receive, who)
        except Exception as exc:
            refused = refusal(exc, scope["method"], scope["path"])
            if refused is None:
                raise
            await send_refusal(send, refused)
            return
        if body is None:
            await _send(send, 204, [], b"")
        else:
            await _send(send, 200, JSON_HEADERS, body)

    # -- endpoints --------------------------------------------------------------------------

    async def put_item(self, scope: Scope, receive: Receive, who: Principal) -> None:
        body = await _json_object(receive, exact=True)
        namespace = _namespace(body.get("namespace"), "namespace")
        key = _key(body.get("key"))
        value = body.get("value")
        if not isinstance(value, dict):
            raise unprocessable("value must be a JSON object")
        index = body.get("index")
        if not (index is None or index is False or (isinstance(index, list) and all(isinstance(f, str) for f in index))):
            raise unprocessable("index must be false, null or a list of field paths")
        ttl = _ttl(body.get("ttl"))
        _require_owner(who, namespace)
        await self.store.aput(namespace, key, value, index=index, ttl=self.ttl_for(namespace, key, ttl))

    async def get_item(self, scope: Scope, receive: Receive, who: Principal) -> bytes:
        params = QueryParams(scope["query_string"])
        if "namespace" not in params:
            raise unprocessable("namespace is required, as labels joined by '.', e.g. namespace=acme.memories")
        namespace = _namespace(params["namespace"].split("."), "namespace")
        key = _key(params.get("key"))
        refresh = _flag(params.get("refresh_ttl"), "refresh_ttl")
        if not who.owns(namespace):
            return orjson.dumps(None)  # as if there were no such item
        item = await self.store.aget(namespace, key, refresh_ttl=refresh)
        return _encode(item.dict() if item is not None else None)

    async def delete_item(self, scope: Scope, receive: Receive, who: Principal) -> None:
        body = await _json_object(receive)
        namespace = _namespace(body.get("namespace"), "namespace")
        key = _key(body.get("key"))
        _require_owner(who, namespace)
        if namespace[0] in self.policy.legal_hold:
            raise conflict(f"tenant {namespace[0]!r} is under legal hold ([retention] legal_hold): nothing of it is deleted")
        await self.store.adelete(namespace, key)

    async def search_items(self, scope: Scope, receive: Receive, who: Principal) -> bytes:
        body = await _json_object(receive)
        prefix = validate_namespace_or_422(body.get("namespace_prefix", []), "namespace_prefix")
        flt = body.get("filter")
        if flt is not None and not isinstance(flt, dict):
            raise unprocessable("filter must be a JSON object")
        query = body.get("query")
        if query is not None and not isinstance(query, str):
            raise unprocessable("query must be a string")
        limit, offset = self._page(body, default_limit=10)
        refresh = body.get("refresh_ttl")
        if refresh is not None and not isinstance(refresh, bool):
            raise unprocessable("refresh_ttl must be true, false or null")
        scoped = scope_prefix(who, prefix)
        if scoped is None:
            return orjson.dumps({"items": []})
        items = await self.store.asearch(
            scoped, query=query, filter=flt, limit=limit, offset=offset, refresh_ttl=refresh
        )
        return _encode({"items": [item.dict() for item in items]})

    async def list_namespaces(self, scope: Scope, receive: Receive, who: Principal) -> bytes:
        body = await _json_object(receive)
        prefix = validate_namespace_or_422(body.get("prefix") or [], "prefix")
        suffix = validate_namespace_or_422(body.get("suffix") or [], "suffix")
        max_depth = body.get("max_depth")
        if max_depth is not None and (not _is_int(max_depth) or max_depth < 1):
            raise unprocessable("max_depth must be a positive integer or null")
        limit, offset = self._page(body, default_limit=100)
        scoped = scope_prefix(who, prefix)
        if scoped is None:
            return orjson.dumps({"namespaces": []})
        found = await self.store.alist_namespaces(
            prefix=scoped or None, suffix=suffix or None, max_depth=max_depth, limit=limit, offset=offset
        )
        return orjson.dumps({"namespaces": [list(namespace) for namespace in found]})

    # -- policy -----------------------------------------------------------------------------

    def ttl_for(self, namespace: tuple[str, ...], key: str, requested: float | None) -> float | None:
        """Minutes the item lives: the client's TTL, capped by the retention policy's; none under legal hold."""
        if namespace[0] in self.policy.legal_hold:
            return None
        policy_ttl = self.policy.ttl_minutes_for(namespace, key)
        if requested is None:
            return policy_ttl
        return requested if policy_ttl is None else min(requested, policy_ttl)

    def _page(self, body: dict[str, Any], default_limit: int) -> tuple[int, int]:
        limit = body.get("limit", default_limit)
        offset = body.get("offset", 0)
        if not _is_int(limit) or limit < 0 or not _is_int(offset) or offset < 0:
            raise unprocessable("limit and offset must be integers >= 0")
        if limit + offset > self.max_page:
            raise unprocessable(f"limit + offset is {limit + offset}; the largest page is {self.max_page} ([api] max_page)")
        return limit, offset


# -- tenant scoping ---------------------------------------------------------------------------


def scope_prefix(who: Principal, prefix: tuple[str, ...]) -> tuple[str, ...] | None:
    """The prefix a read may use: the caller's tenant when empty; None (nothing) when another tenant's."""
    if who.admin:
        return prefix
    if not prefix:
        return (who.tenant,)
    return prefix if prefix[0] == who.tenant else None


def _require_owner(who: Principal, namespace: tuple[str, ...]) -> None:
    if not who.owns(namespace):
        raise forbidden(f"this key reaches only namespaces whose first label is its tenant {who.tenant!r}")


# -- request and response ---------------------------------------------------------------------


async def _body(receive: Receive) -> bytes:
    """The whole request body (as Starlette's `Request.body`)."""
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _encode(answer: Any) -> bytes:
    """JSON of an answer holding stored values: orjson, or the standard library for what orjson
    cannot say (an integer beyond 64 bits, which a put accepts and PostgreSQL keeps)."""
    try:
        return orjson.dumps(answer)
    except orjson.JSONEncodeError:
        return json.dumps(answer, default=str, separators=(",", ":")).encode()


async def _json_object(receive: Receive, *, exact: bool = False) -> dict[str, Any]:
    """The body as a JSON object. `exact` (a put's value): the standard library's parser, which keeps
    an integer beyond 64 bits as it was sent (orjson would make it a float)."""
    raw = await _body(receive)
    try:
        body = (json.loads(raw) if exact else orjson.loads(raw)) if raw else None
    except ValueError:  # orjson's and json's decode errors, bad UTF-8
        raise unprocessable("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise unprocessable("the request body must be a JSON object")
    return body


def _namespace(labels: Any, what: str) -> tuple[str, ...]:
    try:
        return validate_namespace(labels, what)
    except InvalidNamespace as exc:
        raise unprocessable(str(exc)) from None


def validate_namespace_or_422(labels: Any, what: str) -> tuple[str, ...]:
    try:
        return validate_namespace(labels, what, tenant_first=False)
    except InvalidNamespace as exc:
        raise unprocessable(str(exc)) from None


def _key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise unprocessable("key is required: a non-empty string")
    if len(key) > MAX_KEY_LENGTH or "\x00" in key:
        raise unprocessable(f"key must be at most {MAX_KEY_LENGTH} characters, without NUL")
    return key


def _ttl(ttl: Any) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
        raise unprocessable("ttl must be a number of minutes > 0, or null for the retention policy's")
    return float(ttl)


def _flag(value: str | None, what: str) -> bool | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise unprocessable(f"{what} must be true or false")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    length = [(b"content-length", str(len(body)).encode())] if status != 204 else []
    await send({"type": "http.response.start", "status": status, "headers": length + headers})
    await send({"type": "http.response.body", "body": body})


async def send_refusal(send: Send, refused: ApiError) -> None:
    """`{"detail": ...}` with the refusal's status (and, for a 401, the scheme to use)."""
    headers = JSON_HEADERS + ([(b"www-authenticate", b"x-api-key")] if refused.status == 401 else [])
    await _send(send, refused.status, headers, orjson.dumps({"detail": refused.detail}))
