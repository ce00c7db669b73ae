"""Order events as the billing platform sends them (CONTRACT.md §2), validated.

One pydantic model per event type. Field checks come from :mod:`bridge.domain.validation`,
so the webhook and the panel client agree on what is acceptable.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from bridge.domain import validation

EventType = Literal["service.create", "domain.add", "ssl.issue", "database.create", "cronjob.add"]

_STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

# A password is taken exactly as sent: trimmed, it would no longer be the customer's.
Password = Annotated[str, StringConstraints(strip_whitespace=False), Field(repr=False)]


class Account(BaseModel):
    model_config = _STRICT

    username: str
    password: Password

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        return validation.account_username(value, field="username")

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        return validation.account_password(value, field="password")


class Database(BaseModel):
    model_config = _STRICT

    name: str
    user: str
    password: Password

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        return validation.database_password(value, field="password")


class CronJob(BaseModel):
    model_config = _STRICT

    minute: str
    hour: str
    day: str
    month: str
    weekday: str
    command: str

    @field_validator("minute", "hour", "day", "month", "weekday")
    @classmethod
    def _schedule(cls, value: str, info: ValidationInfo) -> str:
        assert info.field_name is not None
        return validation.cron_field(value, info.field_name)

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        return validation.cron_command(value, field="command")

    @property
    def line(self) -> str:
        """The crontab line as the panel stores it."""
        return f"{self.minute} {self.hour} {self.day} {self.month} {self.weekday} {self.command}"


class OrderData(BaseModel):
    """The ``data`` of every event type; which fields are required depends on the type."""

    model_config = _STRICT

    service_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
    panel: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    account: Account
    domain: str | None = None
    php_version: str = "8.2"
    path: str = "public_html"
    ssl: bool = True
    databases: list[Database] = Field(default_factory=list, max_length=50)
    cron_jobs: list[CronJob] = Field(default_factory=list, max_length=50)
    callback_url: Annotated[str, Field(max_length=2048)] | None = None
    # The webhook-id of an earlier order of the service that this one replaces (the billing
    # platform sent it again, changed, after it failed): "retry all failed" leaves that one be.
    replaces: Annotated[str, Field(min_length=1, max_length=255)] | None = None

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return None if value is None else validation.domain_name(value, field="domain")

    @field_validator("php_version")
    @classmethod
    def _php(cls, value: str) -> str:
        return validation.php_version(value, field="php_version")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return validation.document_path(value, field="path")

    @field_validator("replaces")
    @classmethod
    def _replaces(cls, value: str | None) -> str | None:
        if value is not None and not (value.isascii() and value.isprintable() and " " not in value):
            raise ValueError("replaces: must be the webhook-id of an earlier order (printable ASCII, no spaces)")
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        return None if value is None else validation.callback_url(value, field="callback_url")

    @model_validator(mode="after")
    def _names_fit_the_account(self) -> OrderData:
        # Names are limited once the panel prefixes them with "<account>_".
        account = self.account.username
        for i, db in enumerate(self.databases):
            validation.database_name(db.name, account, field=f"databases.{i}.name")
            validation.database_user(db.user, account, field=f"databases.{i}.user")
        named: dict[str, int] = {}
        users: dict[str, int] = {}
        for i, db in enumerate(self.databases):
            if (first := named.setdefault(db.name, i)) != i:
                raise ValueError(f"databases.{i}.name: {db.name!r} is already the name of databases.{first}")
            if (first := users.setdefault(db.user, i)) != i:
                # The panel makes each user with its database, and makes the database before it
                # finds the user taken: a second one would be left without its user.
                raise ValueError(
                    f"databases.{i}.user: {db.user!r} is already the user of databases.{first}; "
                    "each database needs a user of its own"
                )
        lines = [cron.line for cron in self.cron_jobs]
        if len(set(lines)) != len(lines):
            raise ValueError("cron_jobs: each cron job may appear only once")
        return self


class OrderEvent(BaseModel):
    """A validated order event; :meth:`check_type_requirements` enforces per-type fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: EventType
    data: OrderData

    @model_validator(mode="after")
    def _required_for_type(self) -> OrderEvent:
        data = self.data
        if self.type in ("service.create", "domain.add", "ssl.issue") and data.domain is None:
            raise ValueError(f"data.domain: required for {self.type}")
        if self.type == "database.create" and len(data.databases) != 1:
            raise ValueError("data.databases: database.create takes exactly one database")
        if self.type == "cronjob.add" and len(data.cron_jobs) != 1:
            raise ValueError("data.cron_jobs: cronjob.add takes exactly one cron job")
        return self


def parse_event(body: Any) -> OrderEvent:
    """Validate a decoded JSON body; raises pydantic.ValidationError."""
    return OrderEvent.model_validate(body)
