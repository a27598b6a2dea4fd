"""deepagents-memory: tenant-isolated long-term memory for Deep Agents on PostgreSQL.

The names below are imported on first use, so `memory --help` and the CLI's light commands do not
pay for LangGraph and deep agents.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "MEMORY_CONVENTIONS": "memory.prompt",
    "ConfigError": "memory.errors",
    "DatabaseUnavailable": "memory.errors",
    "InvalidTenantId": "memory.errors",
    "MemoryService": "memory.service",
    "MemoryServiceError": "memory.errors",
    "MemorySettings": "memory.settings",
    "TenantMemoryBackend": "memory.backend",
    "TenantNotResolved": "memory.errors",
    "bind_tenant": "memory.tenancy",
    "tenant_namespace": "memory.tenancy",
    "validate_tenant_id": "memory.tenancy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:  # submodules (`from memory import backup`) are found by the import system
        raise AttributeError(f"module 'memory' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # pragma: no cover
    from memory.backend import TenantMemoryBackend
    from memory.errors import ConfigError, DatabaseUnavailable, InvalidTenantId, MemoryServiceError, TenantNotResolved
    from memory.prompt import MEMORY_CONVENTIONS
    from memory.service import MemoryService
    from memory.settings import MemorySettings
    from memory.tenancy import bind_tenant, tenant_namespace, validate_tenant_id
