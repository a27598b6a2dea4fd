"""One exception root for the service; each class's docstring is its default message."""

from __future__ import annotations


class MemoryServiceError(Exception):
    """The memory service failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(MemoryServiceError):
    """The configuration is invalid."""


class DatabaseUnavailable(MemoryServiceError):
    """The database could not be reached."""


class EmbeddedServerError(MemoryServiceError):
    """The embedded PostgreSQL server could not be started."""


class TenantError(MemoryServiceError):
    """The tenant is missing or invalid."""


class TenantNotResolved(TenantError):
    """No tenant for this run: set config["metadata"]["assistant_id"]; nothing was read or written."""


class InvalidTenantId(TenantError, ValueError):
    """The tenant id is not valid."""


class ThreadAccessDenied(TenantError):
    """This thread belongs to another tenant; nothing was read or written."""


class LegalHoldError(TenantError):
    """The tenant is under legal hold; nothing was deleted."""
