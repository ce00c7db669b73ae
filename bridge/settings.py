"""The bridge's configuration: an optional TOML file named by BRIDGE_CONFIG,
overridden by BRIDGE_* environment variables.

A missing or malformed setting, or a key of the TOML file that names no setting,
stops the process at start with one line naming it (see :func:`load_settings`).
An unknown BRIDGE_* variable cannot be told from one meant for another program, so
it is only reported (:func:`unknown_environment_variables`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bridge.panel.config import PanelServer

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./bridge.db"

CommaList = Annotated[list[str], NoDecode]

# BRIDGE_* variables read outside Settings; none of them can go in the TOML file.
ENVIRONMENT_ONLY = {
    "BRIDGE_CONFIG": "names the TOML file itself",
    "BRIDGE_ADMIN_TOKEN": "read by the `bridge jobs --url` client",
    "BRIDGE_PANEL_TEST_ACCOUNTS": "read by `bridge config check`",
}


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every setting a user can see. Names here are BRIDGE_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", extra="forbid", frozen=True)
    # False in a subclass whose values are only those passed and the defaults (the demo's).
    reads_environment: ClassVar[bool] = True

    database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str = ""
    amqp_prefix: str = "bridge"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # `bridge worker` has no other HTTP server; 0 picks a free port (logged).
    worker_metrics_port: int = Field(default=8081, ge=0, le=65535)
    webhook_secrets: CommaList = Field(default_factory=list)
    callback_secret: str = ""
    callback_allowed_origins: CommaList = Field(default_factory=list)
    admin_tokens: CommaList = Field(default_factory=list)
    secret_key: CommaList = Field(default_factory=list)
    panels: list[PanelServer] = Field(default_factory=list)
    retry_delay_scale: float = Field(default=1.0, ge=0.0)
    worker_prefetch: int = Field(default=16, ge=1, le=1000)
    lease_s: float = Field(default=60.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    requeue_after_s: float = Field(default=300.0, gt=0)
    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("webhook_secrets", "callback_allowed_origins", "admin_tokens", "secret_key", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("must start with postgresql+asyncpg:// or sqlite+aiosqlite://")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("amqp", "amqps"):
            raise ValueError("must be an amqp:// or amqps:// URL, or empty for the in-process queue")
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _webhook_secrets(cls, value: list[str]) -> list[str]:
        from bridge.webhooks.signature import check_secret

        for secret in value:
            check_secret(secret)
        return value

    @field_validator("callback_secret")
    @classmethod
    def _callback_secret(cls, value: str) -> str:
        # A secret that cannot sign would stop every callback at its first delivery, unrecorded.
        from bridge.webhooks.signature import check_signing_secret

        if value:
            check_signing_secret(value)
        return value

    @field_validator("callback_allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        from bridge.callbacks.origins import normalise_origin

        return [normalise_origin(origin) for origin in value]

    @field_validator("secret_key")
    @classmethod
    def _fernet_keys(cls, value: list[str]) -> list[str]:
        from bridge.store.crypto import check_fernet_key

        for key in value:
            check_fernet_key(key)
        return value

    @model_validator(mode="after")
    def _unique_panel_names(self) -> Settings:
        names = [panel.name for panel in self.panels]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"panel names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @property
    def embedded(self) -> bool:
        return not self.amqp_url

    def panel(self, name: str) -> PanelServer | None:
        return next((panel for panel in self.panels if panel.name == name), None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if not cls.reads_environment:
            return (init_settings,)
        config_file = os.environ.get("BRIDGE_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file:
            sources.append(StrictTomlSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


class StrictTomlSource(TomlConfigSettingsSource):
    """The TOML file, refusing a key that names no setting (a misspelt one would be dropped)."""

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        super().__init__(settings_cls, toml_file=toml_file)
        for key in self.toml_data:
            if key.lower() not in settings_cls.model_fields:
                raise SettingsError(f"BRIDGE_CONFIG: unknown key {key!r} in {toml_file}: {_why_unknown(key)}")


def _why_unknown(key: str) -> str:
    variable = "BRIDGE_" + key.upper().removeprefix("BRIDGE_")
    if variable in ENVIRONMENT_ONLY:
        return f"{variable} is an environment variable only ({ENVIRONMENT_ONLY[variable]})"
    return "no setting of that name (a key is a setting's BRIDGE_* name without the prefix, e.g. http_port)"


def unknown_environment_variables(environ: Mapping[str, str]) -> list[str]:
    """BRIDGE_* variables no part of the bridge reads: most likely misspelt settings."""
    known = {f"BRIDGE_{name.upper()}" for name in Settings.model_fields} | ENVIRONMENT_ONLY.keys()
    return sorted(name for name in environ if name.upper().startswith("BRIDGE_") and name.upper() not in known)


def scale_out_problems(settings: Settings) -> list[tuple[str, str]]:
    """Why ``bridge serve`` and ``bridge worker``, which run as separate processes, cannot
    start with these settings: the in-process queue reaches no other process, and SQLite is
    one process's database. (setting, problem) pairs."""
    from bridge.store.database import is_sqlite

    problems = []
    if settings.embedded:
        problems.append(
            (
                "BRIDGE_AMQP_URL",
                "empty (the in-process queue, which no other process can reach): "
                "`bridge serve` and `bridge worker` need RabbitMQ; only `bridge run` works without it",
            )
        )
    if is_sqlite(settings.database_url):
        problems.append(
            (
                "BRIDGE_DATABASE_URL",
                "SQLite is one process's database: "
                "`bridge serve` and `bridge worker` need PostgreSQL; only `bridge run` works on SQLite",
            )
        )
    return problems


class SettingsError(Exception):
    """Configuration the bridge cannot start with; ``str()`` is one line per problem."""


def describe_validation_error(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        name = "BRIDGE_" + "_".join(str(part) for part in problem["loc"][:1]).upper()
        rest = ".".join(str(part) for part in problem["loc"][1:])
        where = f"{name}[{rest}]" if rest else name
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the file and the environment; raises SettingsError naming each bad setting."""
    config_file = os.environ.get("BRIDGE_CONFIG")
    if config_file and not Path(config_file).is_file():
        raise SettingsError(f"BRIDGE_CONFIG: file {config_file!r} does not exist")
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
    except ValueError as error:  # malformed TOML or JSON in a variable
        raise SettingsError(describe_source_error(error)) from None


_SOURCE_FIELD = re.compile(r'field "(\w+)" from source "(\w+)"')


def describe_source_error(error: ValueError) -> str:
    """One line naming the variable whose JSON, or the file whose TOML, could not be parsed."""
    found = _SOURCE_FIELD.search(str(error))
    if found is None:  # the TOML file itself is malformed
        return f"BRIDGE_CONFIG: not valid TOML: {error}"
    name = "BRIDGE_" + found[1].upper()
    where = name if found[2] == "EnvSettingsSource" else f"{name} (from BRIDGE_CONFIG)"
    return f"{where}: not valid JSON: {error.__cause__ or error}"
