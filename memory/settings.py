"""`MemorySettings`: config/memory.toml, then MEMORY_CONFIG, then the environment, then overrides."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from memory.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("config") / "memory.toml"
"""Read from the working directory when present (the repository's defaults)."""

SECTIONS = ("database", "namespace", "prompt", "retention", "checkpoints", "schedule", "backup")
"""TOML tables whose keys become `<table>_<key>` settings fields."""


class RetentionRule(BaseModel):
    """A TTL rule: the most specific rule (tenant, then longest path) wins."""

    model_config = ConfigDict(extra="forbid")

    path: str = "/memories/"
    tenant: str | None = None
    ttl_days: float = Field(ge=0)


class MemorySettings(BaseSettings):
    """Every setting of the service, flat: the TOML table `[database] url` is `database_url`."""

    model_config = SettingsConfigDict(
        env_prefix="MEMORY_", extra="forbid", populate_by_name=True, validate_default=True
    )

    database_url: str = Field(
        "", validation_alias=AliasChoices("database_url", "MEMORY_DATABASE_URL", "DATABASE_URL")
    )
    database_pool_min_size: int = Field(1, ge=0)
    database_pool_max_size: int = Field(20, ge=1)
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("deepagents-memory")))

    namespace_scope: list[str] = ["assistant_id"]
    namespace_suffix: str = "memories"

    prompt_conventions: str = ""

    retention_default_ttl_days: float = Field(0, ge=0)
    retention_rules: list[RetentionRule] = []

    checkpoints_delete_threads_idle_days: float = Field(30, ge=0)
    checkpoints_keep_latest: int = Field(20, ge=1)

    schedule_ttl_cleanup: str = "*/15 * * * *"
    schedule_prune_checkpoints: str = "0 3 * * *"
    schedule_backup: str = "0 2 * * *"

    backup_dir: Path = Path("backups")
    backup_keep: int = Field(14, ge=1)

    @field_validator("namespace_scope")
    @classmethod
    def _scope_starts_with_assistant(cls, scope: list[str]) -> list[str]:
        if not scope or scope[0] != "assistant_id" or len(set(scope)) != len(scope):
            raise ValueError('must start with "assistant_id" and name each key once, e.g. ["assistant_id", "user_id"]')
        return scope

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
        return (init_settings, env_settings, TomlFilesSource(settings_cls, files))

    @classmethod
    def load(cls, **overrides: Any) -> MemorySettings:
        """Build the settings, turning any validation failure into one `ConfigError` line."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None


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
            problems.append(f"{label}: unknown setting")
        else:
            suffix = f" at {detail}" if detail else ""
            problems.append(f"{label}{suffix}: {error['msg']} (got {error.get('input')!r})")
    return "invalid configuration: " + "; ".join(problems)
