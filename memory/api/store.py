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
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from langgraph.store.postgres import AsyncPostgresStore
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from memory.api.auth import Authenticator
from memory.api.errors import ApiError, conflict, forbidden, unprocessable
from memory.quotas import QuotaExceeded
from memory.apikeys import Principal
from memory.retention import RetentionPolicy
from memory.tenancy import InvalidNamespace, validate_namespace

MAX_KEY_LENGTH = 1024


@dataclass
class StoreApi:
    """What the endpoints need: the store, the policy, who is calling, the largest page."""

    store: AsyncPostgresStore
    policy: RetentionPolicy
    auth: Authenticator
    max_page: int = 1000

    def routes(self) -> list[Route]:
        return [
            Route("/store/items", self._endpoint(self.put_item), methods=["PUT"]),
            Route("/store/items", self._endpoint(self.get_item), methods=["GET"]),
            Route("/store/items", self._endpoint(self.delete_item), methods=["DELETE"]),
            Route("/store/items/search", self._endpoint(self.search_items), methods=["POST"]),
            Route("/store/namespaces", self._endpoint(self.list_namespaces), methods=["POST"]),
        ]

    def _endpoint(self, handler: Callable[[Request, Principal], Awaitable[Response]]):
        async def endpoint(request: Request) -> Response:
            principal = await self.auth.principal(request.headers)
            return await handler(request, principal)

        endpoint.__name__ = handler.__name__
        return endpoint

    # -- endpoints --------------------------------------------------------------------------

    async def put_item(self, request: Request, who: Principal) -> Response:
        body = await _json_object(request)
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
        return Response(status_code=204)

    async def get_item(self, request: Request, who: Principal) -> Response:
        params = request.query_params
        if "namespace" not in params:
            raise unprocessable("namespace is required, as labels joined by '.', e.g. namespace=acme.memories")
        namespace = _namespace(params["namespace"].split("."), "namespace")
        key = _key(params.get("key"))
        refresh = _flag(params.get("refresh_ttl"), "refresh_ttl")
        if not who.owns(namespace):
            return json_response(None)  # as if there were no such item
        item = await self.store.aget(namespace, key, refresh_ttl=refresh)
        return json_response(item.dict() if item is not None else None)

    async def delete_item(self, request: Request, who: Principal) -> Response:
        body = await _json_object(request)
        namespace = _namespace(body.get("namespace"), "namespace")
        key = _key(body.get("key"))
        _require_owner(who, namespace)
        if namespace[0] in self.policy.legal_hold:
            raise conflict(f"tenant {namespace[0]!r} is under legal hold ([retention] legal_hold): nothing of it is deleted")
        await self.store.adelete(namespace, key)
        return Response(status_code=204)

    async def search_items(self, request: Request, who: Principal) -> Response:
        body = await _json_object(request)
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
            return json_response({"items": []})
        items = await self.store.asearch(
            scoped, query=query, filter=flt, limit=limit, offset=offset, refresh_ttl=refresh
        )
        return json_response({"items": [item.dict() for item in items]})

    async def list_namespaces(self, request: Request, who: Principal) -> Response:
        body = await _json_object(request)
        prefix = validate_namespace_or_422(body.get("prefix") or [], "prefix")
        suffix = validate_namespace_or_422(body.get("suffix") or [], "suffix")
        max_depth = body.get("max_depth")
        if max_depth is not None and (not _is_int(max_depth) or max_depth < 1):
            raise unprocessable("max_depth must be a positive integer or null")
        limit, offset = self._page(body, default_limit=100)
        scoped = scope_prefix(who, prefix)
        if scoped is None:
            return json_response({"namespaces": []})
        found = await self.store.alist_namespaces(
            prefix=scoped or None, suffix=suffix or None, max_depth=max_depth, limit=limit, offset=offset
        )
        return json_response({"namespaces": [list(namespace) for namespace in found]})

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


def quota_status(exc: BaseException) -> ApiError | None:
    """A write the database refused for a tenant quota: 429 naming the limit and the usage; else None."""
    refused = QuotaExceeded.from_error(exc)
    return None if refused is None else ApiError(429, f"{refused}; nothing was written")


# -- request parsing --------------------------------------------------------------------------


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
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


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")
