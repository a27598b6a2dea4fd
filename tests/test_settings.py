"""Settings: one file (MEMORY_CONFIG, else ./config/memory.toml, else the user's), then the environment,
then explicit overrides."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from memory import ConfigError, MemorySettings
from memory.settings import SECTIONS

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = REPO / "config" / "memory.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The repository as working directory, and no MEMORY_* or DATABASE_URL from the caller."""
    monkeypatch.chdir(REPO)
    for name in list(os.environ):
        if name.startswith("MEMORY_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    return monkeypatch


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "extra.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(**overrides) -> str:
    with pytest.raises(ConfigError) as raised:
        MemorySettings.load(**overrides)
    message = str(raised.value)
    assert "\n" not in message, message
    return message


def test_repository_config_loads_every_key():
    settings = MemorySettings.load()
    document = tomllib.loads(DEFAULTS.read_text(encoding="utf-8"))
    assert set(document) <= set(SECTIONS)
    for table, values in document.items():
        for key, expected in values.items():
            actual = getattr(settings, f"{table}_{key}")
            if isinstance(actual, list) and actual and hasattr(actual[0], "model_dump"):
                actual = [rule.model_dump(exclude_unset=True) for rule in actual]
            elif (table, key) == ("backup", "dir"):
                assert expected == "" and actual == settings.data_dir / "backups"
                continue
            assert actual == expected, f"[{table}] {key}"
    assert settings.database_url == ""  # the embedded server by default
    assert settings.namespace_scope == ["assistant_id"]


def test_code_defaults_equal_the_shipped_file(tmp_path, clean_env):
    """Retention must not depend on the directory a command runs from: no file read = the shipped file."""
    clean_env.chdir(tmp_path)
    clean_env.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-user-config"))
    from memory.settings import config_file

    assert config_file() is None
    defaults = MemorySettings.load().model_dump()
    clean_env.setenv("MEMORY_CONFIG", str(DEFAULTS))
    assert MemorySettings.load().model_dump() == defaults


def test_the_file_read_is_memory_config_else_local_else_user(tmp_path, clean_env):
    from memory.settings import config_file

    user = tmp_path / "xdg"
    (user / "deepagents-memory").mkdir(parents=True)
    (user / "deepagents-memory" / "memory.toml").write_text("[backup]\nkeep = 3\n")
    clean_env.setenv("XDG_CONFIG_HOME", str(user))
    assert config_file() == DEFAULTS  # the repository as working directory
    clean_env.chdir(tmp_path)
    assert config_file() == user / "deepagents-memory" / "memory.toml"
    assert MemorySettings.load().backup_keep == 3
    clean_env.setenv("MEMORY_CONFIG", str(DEFAULTS))
    assert config_file() == DEFAULTS and MemorySettings.load().backup_keep == 14


def test_backups_go_under_the_data_dir_wherever_the_command_runs(tmp_path, clean_env):
    clean_env.chdir("/")
    clean_env.setenv("MEMORY_DATA_DIR", str(tmp_path / "data"))
    assert MemorySettings.load().backup_dir == tmp_path / "data" / "backups"
    clean_env.setenv("MEMORY_BACKUP_DIR", "nightly")
    assert MemorySettings.load().backup_dir == tmp_path / "data" / "nightly"
    clean_env.setenv("MEMORY_BACKUP_DIR", str(tmp_path / "elsewhere"))
    assert MemorySettings.load().backup_dir == tmp_path / "elsewhere"


def test_unknown_memory_variable_is_refused_naming_it(clean_env):
    clean_env.setenv("MEMORY_RETENTION_DEFAULT_TTL_DAYZ", "3")
    message = config_error()
    assert "MEMORY_RETENTION_DEFAULT_TTL_DAYZ" in message and "MEMORY_RETENTION_DEFAULT_TTL_DAYS" in message


def test_the_projects_own_variables_stay_allowed(clean_env):
    from memory.settings import OTHER_VARIABLES

    for name in [*OTHER_VARIABLES, "MEMORY_TEST_ANYTHING", "MEMORY_BENCH_SIZE"]:
        if name != "MEMORY_CONFIG":
            clean_env.setenv(name, "x")
    MemorySettings.load()


def test_list_settings_from_the_environment_accept_a_comma_list(clean_env):
    for value in ("acme,globex", "acme, globex", '["acme", "globex"]'):
        clean_env.setenv("MEMORY_RETENTION_LEGAL_HOLD", value)
        assert MemorySettings.load().retention_legal_hold == ["acme", "globex"]
    clean_env.setenv("MEMORY_RETENTION_RULES", "not json")
    assert "[retention] rules" in config_error()


def test_config_show_says_where_each_value_came_from_and_masks_passwords(tmp_path, clean_env):
    from memory.settings import effective_settings, setting_sources

    clean_env.setenv("MEMORY_CONFIG", str(write_toml(tmp_path, '[database]\nurl = "postgresql://u:s3cret@db:5432/x"\n')))
    clean_env.setenv("MEMORY_BACKUP_KEEP", "5")
    rows = {r["setting"]: r for r in effective_settings(MemorySettings.load(), setting_sources())}
    assert rows["[database] url"]["value"] == "postgresql://u:***@db:5432/x"
    assert rows["[database] url"]["source"] == str(tmp_path / "extra.toml")
    assert rows["[backup] keep"] == {"setting": "[backup] keep", "env": "MEMORY_BACKUP_KEEP", "value": 5, "source": "env MEMORY_BACKUP_KEEP"}
    assert rows["[serve] port"]["source"] == "default"
    assert "s3cret" not in repr(rows)


def test_config_show_from_anywhere_reports_the_same_with_memory_config(tmp_path):
    """`memory config show --json` from / and from the repository agree when MEMORY_CONFIG is set."""
    import json

    from helpers import memory_cli

    env = {"MEMORY_CONFIG": str(DEFAULTS), "MEMORY_DATA_DIR": str(tmp_path)}
    here = memory_cli("config", "show", "--json", **env)
    there = memory_cli("config", "show", "--json", cwd="/", **env)
    assert here.returncode == 0 and there.returncode == 0, here.stderr + there.stderr
    assert json.loads(here.stdout) == json.loads(there.stdout)
    assert json.loads(here.stdout)["file"] == str(DEFAULTS)


def test_memory_config_layers_over_the_defaults(tmp_path, clean_env):
    extra = write_toml(tmp_path, "[retention]\ndefault_ttl_days = 30\n\n[database]\npool_max_size = 5\n")
    clean_env.setenv("MEMORY_CONFIG", str(extra))
    settings = MemorySettings.load()
    assert settings.retention_default_ttl_days == 30
    assert settings.database_pool_max_size == 5
    assert settings.schedule_ttl_cleanup == "*/15 * * * *"  # untouched keys keep the repository's value
    assert [rule.path for rule in settings.retention_rules] == [
        rule["path"] for rule in tomllib.loads(DEFAULTS.read_text())["retention"]["rules"]
    ]

    clean_env.setenv("MEMORY_RETENTION_DEFAULT_TTL_DAYS", "9")
    assert MemorySettings.load().retention_default_ttl_days == 9  # the environment beats files
    assert MemorySettings.load(retention_default_ttl_days=3).retention_default_ttl_days == 3  # overrides beat all


def test_retention_rules_from_memory_config_replace_the_defaults(tmp_path, clean_env):
    extra = write_toml(tmp_path, '[[retention.rules]]\ntenant = "acme"\npath = "/memories/"\nttl_days = 365\n')
    clean_env.setenv("MEMORY_CONFIG", str(extra))
    (rule,) = MemorySettings.load().retention_rules
    assert (rule.tenant, rule.path, rule.ttl_days) == ("acme", "/memories/", 365)


@pytest.mark.parametrize("variable", ["MEMORY_DATABASE_URL", "DATABASE_URL"])
def test_database_url_from_environment(clean_env, variable):
    clean_env.setenv(variable, "postgresql://env@db:5432/app")
    assert MemorySettings.load().database_url == "postgresql://env@db:5432/app"


def test_memory_database_url_beats_plain_database_url(clean_env):
    """BUG in memory/settings.py: with both set, plain DATABASE_URL wins.

    `AliasChoices("database_url", "MEMORY_DATABASE_URL", "DATABASE_URL")` with case-insensitive env
    names makes the first alias, "database_url", match the DATABASE_URL variable, so
    MEMORY_DATABASE_URL is never looked at. A host exporting DATABASE_URL for its own app then
    sends the memory to the app's database. Fix: declare `database_url: str = ""` with no alias
    (the MEMORY_ prefix applies) and add a source after `env_settings` that returns
    `{"database_url": os.environ["DATABASE_URL"]}` when set.
    """
    clean_env.setenv("DATABASE_URL", "postgresql://plain@db:5432/app")
    clean_env.setenv("MEMORY_DATABASE_URL", "postgresql://ours@db:5432/memory")
    assert MemorySettings.load().database_url == "postgresql://ours@db:5432/memory", "MEMORY_DATABASE_URL must win"


@pytest.mark.parametrize("variable", ["MEMORY_DATABASE_URL", "DATABASE_URL"])
def test_environment_url_beats_the_config_file(tmp_path, clean_env, variable):
    clean_env.setenv("MEMORY_CONFIG", str(write_toml(tmp_path, '[database]\nurl = "postgresql://file@db:5432/x"\n')))
    assert MemorySettings.load().database_url == "postgresql://file@db:5432/x"
    clean_env.setenv(variable, "postgresql://env@db:5432/app")
    assert MemorySettings.load().database_url == "postgresql://env@db:5432/app"


def test_non_postgres_url_names_the_key(clean_env):
    clean_env.setenv("MEMORY_DATABASE_URL", "mysql://x@db/app")
    message = config_error()
    assert "[database] url" in message and "postgresql://" in message


def test_unknown_key_names_the_key(tmp_path, clean_env):
    clean_env.setenv("MEMORY_CONFIG", str(write_toml(tmp_path, "[retention]\ndefault_ttl_dayz = 1\n")))
    message = config_error()
    assert "[retention] default_ttl_dayz" in message and "unknown" in message


def test_unknown_table_names_the_table(tmp_path, clean_env):
    clean_env.setenv("MEMORY_CONFIG", str(write_toml(tmp_path, "[retension]\ndefault_ttl_days = 1\n")))
    message = config_error()
    assert "[retension]" in message and str(tmp_path) in message


@pytest.mark.parametrize("value", ['"soon"', "-1", "[1]"])
def test_wrong_type_in_file_names_the_key(tmp_path, clean_env, value):
    clean_env.setenv("MEMORY_CONFIG", str(write_toml(tmp_path, f"[retention]\ndefault_ttl_days = {value}\n")))
    assert "[retention] default_ttl_days" in config_error()


def test_wrong_type_in_environment_names_the_key(clean_env):
    clean_env.setenv("MEMORY_RETENTION_DEFAULT_TTL_DAYS", "soon")
    message = config_error()
    assert "[retention] default_ttl_days" in message and "MEMORY_RETENTION_DEFAULT_TTL_DAYS" in message


def test_bad_retention_rule_names_the_rule_field(tmp_path, clean_env):
    clean_env.setenv("MEMORY_CONFIG", str(write_toml(tmp_path, '[[retention.rules]]\npath = "/memories/"\nttl_days = -1\n')))
    message = config_error()
    assert "[retention] rules" in message and "ttl_days" in message


def test_namespace_scope_must_start_with_assistant_id():
    assert "[namespace] scope" in config_error(namespace_scope=["user_id"])


def test_invalid_toml_is_one_clear_line(tmp_path, clean_env):
    extra = write_toml(tmp_path, "[retention\n")
    clean_env.setenv("MEMORY_CONFIG", str(extra))
    message = config_error()
    assert str(extra) in message and "not valid TOML" in message


def test_missing_memory_config_file_is_a_clear_error(tmp_path, clean_env):
    missing = tmp_path / "nope.toml"
    clean_env.setenv("MEMORY_CONFIG", str(missing))
    message = config_error()
    assert message == f"MEMORY_CONFIG points at {missing}, which does not exist"
