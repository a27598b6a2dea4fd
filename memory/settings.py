"""`MemorySettings`: config/memory.toml, then MEMORY_CONFIG, then the environment, then overrides."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from memory.errors import ConfigError
from memory.quotas import QuotaPolicy
from memory.retention import RetentionPolicy, Rule

DEFAULT_CONFIG_PATH = Path("config") / "memory.toml"
"""Read from the working directory when present (the repository's defaults)."""

SECTIONS = ("database", "namespace", "prompt", "retention", "checkpoints", "schedule", "backup", "index", "serve", "quota", "api")
"""TOML tables whose keys become `<table>_<key>` settings fields."""


SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""`[database] schema`: kept to plain identifiers, so it needs no quoting in search_path."""


class RetentionRule(BaseModel):
    """A TTL rule: the most specific rule (tenant, then longest path) wins."""

    model_config = ConfigDict(extra="forbid")

    path: str = "/memories/"
    tenant: str | None = None
    ttl_days: float = Field(ge=0)


class QuotaRule(BaseModel):
    """Limits of one tenant; a limit left out is the `[quota]` default (0 = unlimited)."""

    model_config = ConfigDict(extra="forbid")

    tenant: str
    max_file_bytes: int | None = Field(None, ge=0)
    max_tenant_bytes: int | None = Field(None, ge=0)
    max_tenant_files: int | None = Field(None, ge=0)


class MemorySettings(BaseSettings):
    """Every setting of the service, flat: the TOML table `[database] url` is `database_url`."""

    model_config = SettingsConfigDict(
        env_prefix="MEMORY_", extra="forbid", populate_by_name=True, validate_default=True
    )

    database_url: str = ""
    database_pool_min_size: int = Field(1, ge=0)
    database_pool_max_size: int = Field(20, ge=1)
    database_schema: str = "public"
    database_prepare_threshold: int | None = Field(0, ge=0)
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("deepagents-memory")))

    namespace_scope: list[str] = ["assistant_id"]
    namespace_suffix: str = "memories"

    prompt_conventions: str = ""

    retention_default_ttl_days: float = Field(0, ge=0)
    retention_rules: list[RetentionRule] = []
    retention_legal_hold: list[str] = []
    retention_refresh_on_read: bool = True
    retention_batch_size: int = Field(10_000, ge=1, le=100_000)

    checkpoints_delete_threads_idle_days: float = Field(30, ge=0)
    checkpoints_keep_latest: int = Field(20, ge=1)
    checkpoints_full_pass_days: float = Field(7, ge=0)

    schedule_ttl_cleanup: str = "*/15 * * * *"
    schedule_prune_checkpoints: str = "0 3 * * *"
    schedule_backup: str = "0 2 * * *"

    backup_dir: Path = Path("backups")
    backup_keep: int = Field(14, ge=1)

    serve_host: str = "127.0.0.1"
    serve_port: int = Field(9464, ge=0, le=65535)
    serve_tenant_labels: bool = False

    quota_max_file_bytes: int = Field(0, ge=0)
    quota_max_tenant_bytes: int = Field(0, ge=0)
    quota_max_tenant_files: int = Field(0, ge=0)
    quota_rules: list[QuotaRule] = []

    api_auth: Literal["keys", "jwt"] = "keys"
    api_jwt_secret: str = ""
    api_jwt_public_key_file: str = ""
    api_jwt_algorithms: list[str] = ["HS256"]
    api_jwt_tenant_claim: str = "tenant"
    api_jwt_admin_claim: str = ""
    api_jwt_audience: str = ""
    api_jwt_issuer: str = ""
    api_key_cache_s: float = Field(0, ge=0, le=3600)
    api_read_timeout_s: float = Field(10, gt=0, le=3600)
    api_keep_alive_s: int = Field(5, ge=1, le=3600)
    api_max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    api_max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    api_max_page: int = Field(1000, ge=1, le=100_000)
    api_shutdown_timeout_s: float = Field(30, ge=0, le=3600)

    index_dims: int = Field(0, ge=0)
    index_embed: str = ""
    index_fields: list[str] = ["content"]

    @field_validator("namespace_scope")
    @classmethod
    def _scope_starts_with_assistant(cls, scope: list[str]) -> list[str]:
        if not scope or scope[0] != "assistant_id" or len(set(scope)) != len(scope):
            raise ValueError('must start with "assistant_id" and name each key once, e.g. ["assistant_id", "user_id"]')
        return scope

    @field_validator("database_schema")
    @classmethod
    def _plain_schema_name(cls, schema: str) -> str:
        if not SCHEMA_NAME.fullmatch(schema) or schema.startswith("pg_"):
            raise ValueError('must be a plain lowercase identifier such as "memory" (letters, digits, _)')
        return schema

    @field_validator("database_prepare_threshold", mode="before")
    @classmethod
    def _none_disables_prepare(cls, value: Any) -> Any:
        """TOML has no null: "none" (or "off") turns prepared statements off, as PgBouncer needs."""
        if isinstance(value, str) and value.strip().lower() in ("none", "null", "off", ""):
            return None
        return value

    @field_validator("schedule_ttl_cleanup", "schedule_prune_checkpoints", "schedule_backup")
    @classmethod
    def _crontab(cls, value: str) -> str:
        """Five crontab fields (minute hour day month weekday), or empty to disable the job."""
        if value.strip():
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(value, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f'must be 5 crontab fields such as "*/15 * * * *", or "" to disable ({exc})') from None
        return value

    @model_validator(mode="after")
    def _valid_retention_policy(self) -> MemorySettings:
        """Refuse an invalid policy at load (overlapping rules, bad paths or tenants) with one line."""
        self.retention_policy()
        return self

    @model_validator(mode="after")
    def _valid_quota_policy(self) -> MemorySettings:
        self.quota_policy()
        return self

    def quota_policy(self) -> QuotaPolicy:
        """The `[quota]` settings: default limits and per-tenant overrides."""
        return QuotaPolicy.build(
            {
                "max_file_bytes": self.quota_max_file_bytes,
                "max_tenant_bytes": self.quota_max_tenant_bytes,
                "max_tenant_files": self.quota_max_tenant_files,
            },
            [rule.model_dump() for rule in self.quota_rules],
        )

    def retention_policy(self) -> RetentionPolicy:
        """The `[retention]` settings as the immutable policy the backend and the cleanup job take."""
        return RetentionPolicy.build(
            default_ttl_days=self.retention_default_ttl_days,
            rules=[Rule(ttl_days=r.ttl_days, path=r.path, tenant=r.tenant) for r in self.retention_rules],
            legal_hold=self.retention_legal_hold,
            refresh_on_read=self.retention_refresh_on_read,
        )

    @field_validator("api_jwt_public_key_file")
    @classmethod
    def _jwt_has_a_key(cls, path: str, info: ValidationInfo) -> str:
        """`auth = "jwt"` needs a secret or a public key file (checked here: it is declared after both)."""
        if info.data.get("api_auth") == "jwt" and not (info.data.get("api_jwt_secret") or path):
            raise ValueError('[api] auth = "jwt" needs jwt_secret (MEMORY_API_JWT_SECRET) or jwt_public_key_file')
        return path

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, url: str) -> str:
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be empty (embedded server) or start with postgresql://")
        return url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = [DEFAULT_CONFIG_PATH]
        if extra := os.environ.get("MEMORY_CONFIG"):
            files.append(Path(extra))
        return (init_settings, env_settings, PlainDatabaseUrlSource(settings_cls), TomlFilesSource(settings_cls, files))

    @classmethod
    def load(cls, **overrides: Any) -> MemorySettings:
        """Build the settings, turning any validation failure into one `ConfigError` line."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None


class PlainDatabaseUrlSource(PydanticBaseSettingsSource):
    """The conventional `DATABASE_URL`, below `MEMORY_DATABASE_URL` and above the TOML files."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        url = os.environ.get("DATABASE_URL")
        return {"database_url": url} if url else {}


class TomlFilesSource(PydanticBaseSettingsSource):
    """Reads TOML files in order, later files winning, flattening `[table] key` to `table_key`."""

    def __init__(self, settings_cls: type[BaseSettings], paths: list[Path]) -> None:
        super().__init__(settings_cls)
        self.paths = paths

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for index, path in enumerate(self.paths):
            if not path.exists():
                if index == 0:
                    continue
                raise ConfigError(f"MEMORY_CONFIG points at {path}, which does not exist")
            values.update(flatten_toml(read_toml(path), path))
        return values


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def flatten_toml(document: dict[str, Any], path: Path) -> dict[str, Any]:
    """`{"database": {"url": x}}` -> `{"database_url": x}`; top-level scalars stay as they are."""
    flat: dict[str, Any] = {}
    for name, value in document.items():
        if isinstance(value, dict):
            if name not in SECTIONS:
                raise ConfigError(f"{path}: unknown table [{name}]; known tables: {', '.join(SECTIONS)}")
            for key, inner in value.items():
                flat[f"{name}_{key}"] = inner
        else:
            flat[name] = value
    return flat


def setting_label(field_name: str) -> str:
    """`retention_default_ttl_days` -> `[retention] default_ttl_days (MEMORY_RETENTION_DEFAULT_TTL_DAYS)`."""
    env = f"MEMORY_{field_name.upper()}"
    for section in SECTIONS:
        if field_name.startswith(section + "_"):
            return f"[{section}] {field_name[len(section) + 1:]} ({env})"
    return f"{field_name} ({env})"


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the key and what it expects."""
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        label = setting_label(location[0]) if location else "settings"
        detail = ".".join(location[1:])
        if error["type"] == "extra_forbidden":
            problems.append(f"{label} at {detail}: unknown key" if detail else f"{label}: unknown setting")
        else:
            suffix = f" at {detail}" if detail else ""
            problems.append(f"{label}{suffix}: {error['msg']} (got {error.get('input')!r})")
    return "invalid configuration: " + "; ".join(problems)
