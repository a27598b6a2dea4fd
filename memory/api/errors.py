"""API errors: JSON `{"detail": ...}` with the status codes `langgraph_sdk` maps to its exceptions."""

from __future__ import annotations

from memory.errors import MemoryServiceError


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
