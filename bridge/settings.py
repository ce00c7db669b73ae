"""The bridge's configuration: an optional TOML file named by BRIDGE_CONFIG,
overridden by BRIDGE_* environment variables.

A missing or malformed setting stops the process at start with one line naming
the setting (see :func:`load_settings`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any
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


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every setting a user can see. Names here are BRIDGE_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", extra="ignore", frozen=True)

    database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str = ""
    amqp_prefix: str = "bridge"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
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
        config_file = os.environ.get("BRIDGE_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


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
