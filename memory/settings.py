"""`MemorySettings`: one TOML file, then the environment, then overrides.

The file is `MEMORY_CONFIG` when set, else `./config/memory.toml` when present, else
`memory.toml` in the user config dir (platformdirs) when present; with none, the code's defaults,
which equal the shipped `config/memory.toml` (a test compares them). `config_file()` says which
file is read and `setting_sources()` where each value came from (`memory config show`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError

from memory.errors import ConfigError
from memory.quotas import QuotaPolicy
from memory.retention import RetentionPolicy, Rule

APP_NAME = "deepagents-memory"
ENV_PREFIX = "MEMORY_"
CONFIG_ENV = "MEMORY_CONFIG"
DEFAULT_CONFIG_PATH = Path("config") / "memory.toml"
"""Read from the working directory when present and MEMORY_CONFIG is not set."""

OTHER_VARIABLES = {
    CONFIG_ENV: "the settings file to read",
    "MEMORY_PG_BIN": "a directory holding pg_dump / pg_restore / psql (memory.pgtools)",
    "MEMORY_TEST_PG15_URL": "the PostgreSQL 15 server of the test suite (tests/conftest.py)",
    "MEMORY_TEST_PGBOUNCER": "the pgbouncer program of the test suite (tests/conftest.py)",
}
"""MEMORY_* variables the project reads that are not settings; every other unknown MEMORY_* is refused."""

OTHER_PREFIXES = ("MEMORY_TEST_", "MEMORY_BENCH_")
"""Prefixes left to the test suite and the benchmarks."""


def user_config_path() -> Path:
    """`memory.toml` in the user config dir (e.g. ~/.config/deepagents-memory/memory.toml)."""
    return Path(platformdirs.user_config_dir(APP_NAME)) / "memory.toml"


def config_file() -> Path | None:
    """The one settings file read: MEMORY_CONFIG, else ./config/memory.toml, else the user's; None: defaults."""
    if named := os.environ.get(CONFIG_ENV):
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV} points at {named}, which does not exist")
        return path.resolve()
    for candidate in (DEFAULT_CONFIG_PATH, user_config_path()):
        if candidate.is_file():
            return candidate.resolve()
    return None

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
    database_batches_in_flight: int = Field(1, ge=1)
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir(APP_NAME)))

    namespace_scope: list[str] = ["assistant_id"]
    namespace_suffix: str = "memories"

    prompt_conventions: str = ""

    retention_default_ttl_days: float = Field(0, ge=0)
    retention_rules: list[RetentionRule] = [RetentionRule(path="/memories/scratch/", ttl_days=7)]
    retention_legal_hold: list[str] = []
    retention_refresh_on_read: bool = True
    retention_batch_size: int = Field(10_000, ge=1, le=100_000)

    checkpoints_delete_threads_idle_days: float = Field(30, ge=0)
    checkpoints_keep_latest: int = Field(20, ge=1)
    checkpoints_full_pass_days: float = Field(7, ge=0)

    schedule_ttl_cleanup: str = "*/15 * * * *"
    schedule_prune_checkpoints: str = "0 3 * * *"
    schedule_backup: str = "0 2 * * *"

    backup_dir: Path | None = None
    """Empty: `backups/` under `data_dir`; a relative path is taken under `data_dir` too."""
    backup_keep: int = Field(14, ge=1)

    serve_host: str = "127.0.0.1"
    serve_port: int = Field(9464, ge=0, le=65535)
    serve_tenant_labels: bool = False
    serve_log_format: Literal["text", "json"] = "text"

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
    api_key_cache_s: float = Field(60, ge=0, le=3600)
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

    @field_validator("backup_dir", mode="before")
    @classmethod
    def _empty_backup_dir(cls, value: Any) -> Any:
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    @model_validator(mode="after")
    def _backups_under_the_data_dir(self) -> MemorySettings:
        """Backups land where the data is, whatever directory a command runs from."""
        data_dir = Path(self.data_dir).expanduser()
        if self.backup_dir is None:
            self.backup_dir = data_dir / "backups"
        elif not Path(self.backup_dir).expanduser().is_absolute():
            self.backup_dir = data_dir / self.backup_dir
        else:
            self.backup_dir = Path(self.backup_dir).expanduser()
        return self

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
        path = config_file()
        return (
            init_settings,
            MemoryEnvSource(settings_cls),
            PlainDatabaseUrlSource(settings_cls),
            TomlFilesSource(settings_cls, [path] if path else []),
        )

    @classmethod
    def load(cls, **overrides: Any) -> MemorySettings:
        """Build the settings, turning any validation failure into one `ConfigError` line."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None
        except SettingsError as exc:  # a source failed in a way it did not put into words itself
            cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else None
            raise cause or ConfigError(f"invalid configuration: {exc}") from None


def env_name(field_name: str) -> str:
    return f"{ENV_PREFIX}{field_name.upper()}"


def _is_string_list(field: Any) -> bool:
    return getattr(field, "annotation", None) == list[str]


class MemoryEnvSource(EnvSettingsSource):
    """MEMORY_* variables: unknown ones refused; list values as JSON or `a,b`."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        refuse_unknown_variables(settings_cls.model_fields)

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        text = value.strip() if isinstance(value, str) else value
        if _is_string_list(field) and isinstance(text, str) and not text.startswith("["):
            return [part.strip() for part in text.split(",") if part.strip()]
        try:
            return json.loads(text)
        except (TypeError, ValueError) as exc:
            example = '["a", "b"] or a,b' if _is_string_list(field) else '[{"path": "/memories/", "ttl_days": 7}]'
            raise ConfigError(f"{setting_label(field_name)}: not valid JSON ({exc}); give e.g. {example}") from None


def refuse_unknown_variables(fields: dict[str, Any], environ: dict[str, str] | None = None) -> None:
    """A MEMORY_* variable that is neither a setting nor in OTHER_VARIABLES is a typo: one line naming it."""
    environ = os.environ if environ is None else environ
    known = {env_name(name) for name in fields} | set(OTHER_VARIABLES)
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper.startswith(OTHER_PREFIXES):
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"unknown environment variable {name}: not a setting; {hint}"
            "`memory config show` lists every setting and its variable"
        )


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
        for path in self.paths:
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


# -- where each setting came from (`memory config show`) ----------------------------------------

PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)([^@]*)(@)")
SECRET_FIELDS = frozenset({"api_jwt_secret"})


def mask(field_name: str, value: Any) -> Any:
    """A value safe to print: the password of a URL and secrets replaced by `***`."""
    if isinstance(value, str) and value:
        if field_name in SECRET_FIELDS:
            return "***"
        return PASSWORD_IN_URL.sub(r"\1***\3", value)
    return value


def setting_sources(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Each field's origin: "override", "env MEMORY_X" (or DATABASE_URL), the file's path, or "default"."""
    path = config_file()
    in_file = flatten_toml(read_toml(path), path) if path else {}
    upper_env = {name.upper() for name in os.environ}
    sources = {}
    for name in MemorySettings.model_fields:
        if overrides and name in overrides:
            sources[name] = "override"
        elif env_name(name) in upper_env:
            sources[name] = f"env {env_name(name)}"
        elif name == "database_url" and os.environ.get("DATABASE_URL"):
            sources[name] = "env DATABASE_URL"
        elif name in in_file:
            sources[name] = str(path)
        else:
            sources[name] = "default"
    return sources


def effective_settings(settings: MemorySettings, sources: dict[str, str]) -> list[dict[str, Any]]:
    """`[{"setting": "[database] url", "env": "MEMORY_DATABASE_URL", "value": ..., "source": ...}]`, masked."""
    rows = []
    for name in MemorySettings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, list):
            value = [item.model_dump(exclude_none=True) if isinstance(item, BaseModel) else item for item in value]
        elif isinstance(value, Path):
            value = str(value)
        section, _, key = setting_label(name).partition(" (")[0].partition(" ")
        rows.append(
            {
                "setting": f"{section} {key}" if key else section,
                "env": env_name(name),
                "value": mask(name, value),
                "source": sources[name],
            }
        )
    return rows
