"""API errors: JSON `{"detail": ...}` with the status codes `langgraph_sdk` maps to its exceptions."""

from __future__ import annotations

import logging

import psycopg
from langgraph.store.base import InvalidNamespaceError
from psycopg_pool import PoolTimeout

from memory.errors import MemoryServiceError
from memory.pgstore import InvalidSearch
from memory.quotas import QuotaExceeded

logger = logging.getLogger(__name__)


class ApiError(MemoryServiceError):
    """The request was refused."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def unauthorized(detail: str = "missing or invalid credentials: send a live key in x-api-key") -> ApiError:
    return ApiError(401, detail)


def forbidden(detail: str) -> ApiError:
    return ApiError(403, detail)


def unprocessable(detail: str) -> ApiError:
    return ApiError(422, detail)


def conflict(detail: str) -> ApiError:
    return ApiError(409, detail)


def unavailable(detail: str) -> ApiError:
    return ApiError(503, detail)


def quota_status(exc: BaseException) -> ApiError | None:
    """A write the database refused for a tenant quota: 429 naming the limit and the usage; else None."""
    refused = QuotaExceeded.from_error(exc)
    return None if refused is None else ApiError(429, f"{refused}; nothing was written")


def refusal(exc: Exception, method: str, path: str) -> ApiError | None:
    """The answer to an exception a request raised; None for a bug (a 500 and a traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidNamespaceError):
        return unprocessable(f"invalid namespace: {exc}")
    if isinstance(exc, InvalidSearch):
        return unprocessable(str(exc))
    if not isinstance(exc, (psycopg.Error, PoolTimeout)):
        return None
    if (refused := quota_status(exc)) is not None:
        return refused
    if isinstance(exc, psycopg.DataError):
        return unprocessable(f"the database refused the value: {' '.join(str(exc).split())}")
    logger.warning("database error on %s %s: %s", method, path, exc)
    return unavailable("database unavailable; retry later")
