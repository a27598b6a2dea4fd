"""Retention policies: how long each tenant's memory files live, by path, and who is under legal hold.

A policy is a default TTL plus rules by path prefix under `/memories/` and by tenant. For a file,
the most specific matching rule wins:

    tenant + longest path  >  tenant (shorter path)  >  longest path (any tenant)  >  default

`ttl_days = 0` keeps forever (a rule with 0 overrides a less specific rule that expires).
A tenant under legal hold is exempt from every deletion: its files get no expiry on write and
the cleanup job never deletes them. The policy is validated when built: an invalid one raises
`PolicyError` with one line naming the rule and what to do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memory.errors import ConfigError, InvalidTenantId, LegalHoldError
from memory.tenancy import validate_tenant_id

MEMORY_ROUTE = "/memories/"
"""The route the tenant backend is mounted on; rule paths are written under it."""

MINUTES_PER_DAY = 24 * 60


class PolicyError(ConfigError):
    """The retention policy is invalid."""


@dataclass(frozen=True)
class Rule:
    """Files under `path` (of `tenant`, or of every tenant when None) live `ttl_days` (0: forever)."""

    ttl_days: float
    path: str = MEMORY_ROUTE
    tenant: str | None = None

    @property
    def key_prefix(self) -> str:
        """The store key prefix the path covers: `/memories/scratch/` -> `/scratch/`."""
        return self.path[len(MEMORY_ROUTE) - 1 :]

    @property
    def specificity(self) -> tuple[bool, int]:
        """Higher wins: a tenant rule beats any tenant-less rule, then the longer path."""
        return (self.tenant is not None, len(self.path))

    def matches(self, tenant: str, key: str) -> bool:
        return (self.tenant is None or self.tenant == tenant) and key.startswith(self.key_prefix)

    def describe(self) -> str:
        who = f"tenant {self.tenant!r}" if self.tenant else "every tenant"
        return f"path {self.path!r} of {who}"


def _check_days(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PolicyError(
            f"invalid configuration: [retention] {where} is {value!r}; use a number of days >= 0 (0 keeps forever)"
        )
    if 0 < value * MINUTES_PER_DAY < 1:
        raise PolicyError(
            f"invalid configuration: [retention] {where} is {value!r}; the shortest TTL is one minute "
            f"({1 / MINUTES_PER_DAY:.6f} days), or 0 to keep forever"
        )
    return float(value)


def _check_path(path: Any, where: str) -> str:
    if (
        not isinstance(path, str)
        or not path.startswith(MEMORY_ROUTE)
        or not path.endswith("/")
        or "//" in path
        or any(part in {".", ".."} for part in path.split("/"))
        or any(ch in path for ch in "*?[]\\")
    ):
        raise PolicyError(
            f"invalid configuration: [retention] {where} is {path!r}; use a folder under {MEMORY_ROUTE} "
            f"ending in '/', without wildcards, e.g. '{MEMORY_ROUTE}scratch/'"
        )
    return path


def _check_tenant(tenant: Any, where: str) -> str:
    try:
        return validate_tenant_id(tenant, "tenant")
    except InvalidTenantId as exc:
        raise PolicyError(f"invalid configuration: [retention] {where}: {exc}") from None


@dataclass(frozen=True)
class RetentionPolicy:
    """What expires, when, and who is exempt. Build it once at the edge; it is immutable."""

    default_ttl_days: float = 0
    rules: tuple[Rule, ...] = ()
    legal_hold: frozenset[str] = field(default_factory=frozenset)
    refresh_on_read: bool = True

    def __post_init__(self) -> None:
        _check_days(self.default_ttl_days, "default_ttl_days")
        for index, rule in enumerate(self.rules):
            where = f"rules[{index}]"
            _check_days(rule.ttl_days, f"{where}.ttl_days")
            _check_path(rule.path, f"{where}.path")
            if rule.tenant is not None:
                _check_tenant(rule.tenant, f"{where}.tenant")
        for tenant in self.legal_hold:
            _check_tenant(tenant, "legal_hold")
        seen: dict[tuple[str | None, str], int] = {}
        for index, rule in enumerate(self.rules):
            scope = (rule.tenant, rule.path)
            if scope in seen and self.rules[seen[scope]].ttl_days != rule.ttl_days:
                first = self.rules[seen[scope]]
                raise PolicyError(
                    f"invalid configuration: [retention] rules[{seen[scope]}] and rules[{index}] both cover "
                    f"{rule.describe()} with different ttl_days ({first.ttl_days:g} and {rule.ttl_days:g}); keep one"
                )
            seen.setdefault(scope, index)

    @classmethod
    def build(
        cls,
        default_ttl_days: float = 0,
        rules: Iterable[Rule | dict[str, Any]] = (),
        legal_hold: Iterable[str] = (),
        refresh_on_read: bool = True,  # noqa: FBT001, FBT002
    ) -> RetentionPolicy:
        """A policy from plain values (dicts with `path`, `tenant`, `ttl_days` are accepted as rules)."""
        built: list[Rule] = []
        for index, rule in enumerate(rules):
            if isinstance(rule, dict):
                unknown = sorted(set(rule) - {"path", "tenant", "ttl_days"})
                if unknown:
                    raise PolicyError(
                        f"invalid configuration: [retention] rules[{index}] has unknown key {unknown[0]!r}; "
                        "a rule has path, tenant and ttl_days"
                    )
                if "ttl_days" not in rule:
                    raise PolicyError(f"invalid configuration: [retention] rules[{index}] needs ttl_days")
                rule = Rule(ttl_days=rule["ttl_days"], path=rule.get("path", MEMORY_ROUTE), tenant=rule.get("tenant"))
            built.append(rule)
        return cls(default_ttl_days, tuple(built), frozenset(legal_hold), bool(refresh_on_read))

    # -- matching -------------------------------------------------------------------------

    def rule_for(self, tenant: str, key: str) -> Rule | None:
        """The most specific rule covering store key `key` of `tenant`; None when only the default applies."""
        matching = [rule for rule in self.rules if rule.matches(tenant, key)]
        return max(matching, key=lambda rule: rule.specificity, default=None)

    def ttl_days_for(self, tenant: str, key: str) -> float | None:
        """Days a file lives after its last write (None: forever, including under legal hold)."""
        if tenant in self.legal_hold:
            return None
        rule = self.rule_for(tenant, key)
        days = rule.ttl_days if rule is not None else self.default_ttl_days
        return days or None

    def ttl_minutes_for(self, namespace: Sequence[str], key: str) -> float | None:
        """The `ttl` (minutes) to put an item with; the tenant is the namespace's first label."""
        days = self.ttl_days_for(namespace[0], key)
        return None if days is None else days * MINUTES_PER_DAY

    @property
    def expires_anything(self) -> bool:
        return bool(self.default_ttl_days) or any(rule.ttl_days for rule in self.rules)

    def ordered_rules(self) -> list[Rule]:
        """Every rule, most specific first, ending with the default as a rule over the whole route."""
        ordered = sorted(self.rules, key=lambda rule: rule.specificity, reverse=True)
        return [*ordered, Rule(ttl_days=self.default_ttl_days)]

    def sql_params(self) -> dict[str, Any]:
        """The policy as parallel arrays for the cleanup SQL (first matching rule wins)."""
        ordered = self.ordered_rules()
        return {
            "rule_tenants": [rule.tenant for rule in ordered],
            "rule_key_prefixes": [rule.key_prefix for rule in ordered],
            "rule_ttl_seconds": [float(rule.ttl_days) * 86400 if rule.ttl_days else None for rule in ordered],
            "held": sorted(self.legal_hold),
        }

    def store_ttl_config(self) -> dict[str, Any]:
        """LangGraph `TTLConfig`: expired rows are never returned, and a read never revives one."""
        return {"refresh_on_read": self.refresh_on_read, "omit_expired": True}


def refuse_held(tenant: str, legal_hold: Iterable[str], action: str) -> None:
    """Raise `LegalHoldError` when `tenant` is under legal hold: `action` would delete its data."""
    if tenant in frozenset(legal_hold):
        raise LegalHoldError(
            f"tenant {tenant!r} is under legal hold ([retention] legal_hold): {action} would delete its data; "
            "lift the hold first (remove the tenant from [retention] legal_hold / MEMORY_RETENTION_LEGAL_HOLD); "
            "nothing was changed"
        )
