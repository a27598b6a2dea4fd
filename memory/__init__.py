"""deepagents-memory: tenant-isolated long-term memory for Deep Agents on PostgreSQL."""

from memory.backend import TenantMemoryBackend
from memory.errors import (
    ConfigError,
    DatabaseUnavailable,
    InvalidTenantId,
    MemoryServiceError,
    TenantNotResolved,
)
from memory.prompt import MEMORY_CONVENTIONS
from memory.service import MemoryService
from memory.settings import MemorySettings
from memory.tenancy import bind_tenant, tenant_namespace, validate_tenant_id

__all__ = [
    "MEMORY_CONVENTIONS",
    "ConfigError",
    "DatabaseUnavailable",
    "InvalidTenantId",
    "MemoryService",
    "MemoryServiceError",
    "MemorySettings",
    "TenantMemoryBackend",
    "TenantNotResolved",
    "bind_tenant",
    "tenant_namespace",
    "validate_tenant_id",
]
