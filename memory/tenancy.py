"""Tenants: validating ids, resolving them from a run, and building their namespaces (here only)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from memory.errors import InvalidTenantId, TenantError, TenantNotResolved

CONFIG_KEY_RUNTIME = "__pregel_runtime"
"""Where LangGraph keeps the run's `Runtime` (and its `context`) in `config["configurable"]`."""

MAX_TENANT_ID_LENGTH = 128
TENANT_ID_ALPHABET = "letters, digits and - _ @ + : ~"
_TENANT_ID_RE = re.compile(r"[A-Za-z0-9\-_@+:~]+")
MEMORY_SUFFIX = "memories"


def validate_tenant_id(value: object, key: str = "assistant_id") -> str:
    """Return `value` when it is a safe namespace label, else raise `InvalidTenantId` saying why."""
    if not isinstance(value, str):
        raise InvalidTenantId(f"{key} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidTenantId(f"{key} must not be empty")
    if len(value) > MAX_TENANT_ID_LENGTH:
        raise InvalidTenantId(f"{key} is {len(value)} characters long; the limit is {MAX_TENANT_ID_LENGTH}")
    if not _TENANT_ID_RE.fullmatch(value):
        bad = next(ch for ch in value if not _TENANT_ID_RE.fullmatch(ch))
        raise InvalidTenantId(f"{key} {value!r} contains {bad!r}; use only {TENANT_ID_ALPHABET}")
    return value


def tenant_namespace(
    tenant_id: str, extra_scope: Sequence[str] = (), suffix: str = MEMORY_SUFFIX
) -> tuple[str, ...]:
    """The one place a memory namespace is built: `(<tenant>, *<extra scope values>, "memories")`."""
    labels = [validate_tenant_id(tenant_id)]
    for value in extra_scope:
        if validate_tenant_id(value, "scope value") == suffix:
            raise InvalidTenantId(
                f"scope value {value!r} equals the namespace suffix {suffix!r}: its namespace would nest inside "
                "another scope's; use another value"
            )
        labels.append(value)
    return (*labels, suffix)


def _lookup(source: Any, key: str) -> Any:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)


def resolve_scope_value(key: str, config: Mapping[str, Any] | None, context: Any = None) -> str:
    """Find `key` in metadata, then configurable, then the runtime context; fail closed."""
    config = config or {}
    for source in (config.get("metadata"), config.get("configurable"), context):
        value = _lookup(source, key)
        if value is not None:
            return validate_tenant_id(value, key)
    raise TenantNotResolved(
        f'no {key} for this run: pass config={{"metadata": {{"{key}": ...}}}} '
        f'(or configurable/context); nothing was read or written'
    )


def _run_config() -> Any:
    """LangChain's context variable holding the current run's config. Imported on first use: loading
    langchain_core costs about a second, which the CLI's job and admin commands never need."""
    from langchain_core.runnables.config import var_child_runnable_config

    return var_child_runnable_config


def resolve_run_tenant(config: Mapping[str, Any] | None = None, key: str = "assistant_id") -> str:
    """The tenant of a checkpointer call: its config (metadata, configurable, the runtime context),
    else the ambient run or `bind_tenant` block; with none, `TenantNotResolved`."""
    ambient = _run_config().get()
    for candidate in (config, ambient):
        if not candidate:
            continue
        runtime = (candidate.get("configurable") or {}).get(CONFIG_KEY_RUNTIME)
        try:
            return resolve_scope_value(key, candidate, getattr(runtime, "context", None))
        except TenantNotResolved:
            continue
    return resolve_scope_value(key, None)


class TenantResolver:
    """Turns the current run into the namespace of its tenant's memory."""

    def __init__(self, scope: Sequence[str] = ("assistant_id",), suffix: str = MEMORY_SUFFIX) -> None:
        if not scope or scope[0] != "assistant_id":
            raise ValueError('scope must start with "assistant_id"')
        self.scope = tuple(scope)
        self.suffix = suffix

    def namespace_for(self, config: Mapping[str, Any] | None, context: Any = None) -> tuple[str, ...]:
        values = [resolve_scope_value(key, config, context) for key in self.scope]
        return tenant_namespace(values[0], values[1:], self.suffix)

    def tenant_prefix(self, tenant_id: str) -> tuple[str, ...]:
        """The namespace prefix holding every scope of one tenant (for tenant-wide tooling)."""
        return (validate_tenant_id(tenant_id),)

    def current_namespace(self, runtime: Any = None) -> tuple[str, ...]:
        """Resolve from the active LangGraph run (or a `bind_tenant` block)."""
        config = _run_config().get()
        context = getattr(runtime, "context", None)
        return self.namespace_for(config, context)


@contextmanager
def bind_tenant(assistant_id: str, **extra_scope: str) -> Iterator[None]:
    """Run backend calls outside an agent as one tenant (scripts, CLI tooling, tests)."""
    metadata = {"assistant_id": validate_tenant_id(assistant_id)}
    metadata.update({key: validate_tenant_id(value, key) for key, value in extra_scope.items()})
    run_config = _run_config()
    token = run_config.set({"metadata": metadata, "configurable": {}})
    try:
        yield
    finally:
        run_config.reset(token)


# -- namespaces from outside (the Store API) -----------------------------------------------------


class InvalidNamespace(TenantError, ValueError):
    """The namespace is not valid."""


def validate_namespace(labels: object, key: str = "namespace", *, tenant_first: bool = True) -> tuple[str, ...]:
    """A namespace sent by a client: a list of non-empty labels without '.', the first a tenant id.

    LangGraph joins labels with '.', so a '.' in a label would make two namespaces one. With
    `tenant_first=False` (a search or listing prefix) the list may be empty and the first label is
    not held to the tenant id alphabet (it only has to match a tenant to find anything).
    """
    if not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) for label in labels):
        raise InvalidNamespace(f"{key} must be a list of strings, e.g. [\"acme\", \"memories\"]")
    if tenant_first and not labels:
        raise InvalidNamespace(f"{key} must not be empty: its first label is the tenant, e.g. [\"acme\", \"memories\"]")
    for label in labels:
        if not label or "." in label or "\x00" in label:
            raise InvalidNamespace(
                f"{key} label {label!r} is not valid: labels must be non-empty, without '.' or NUL characters"
            )
    if tenant_first:
        try:
            validate_tenant_id(labels[0], f"{key}[0] (the tenant)")
        except InvalidTenantId as exc:
            raise InvalidNamespace(str(exc)) from None
    return tuple(labels)
