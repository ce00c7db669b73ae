"""Where ``bridge jobs`` does its work: the database directly (the default), or a
running bridge's admin API (``--url``). Both answer with the same documents and
raise :class:`CommandFailed` with a one-line message."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from bridge.admin.params import failed_job_filter, job_filter
from bridge.settings import Settings
from bridge.store import admin_ops
from bridge.store.admin_errors import AdminError
from bridge.store.callback_rows import CallbackPolicy
from bridge.store.crypto import SecretBox, SecretsUnavailable
from bridge.store.database import create_engine
from bridge.store.errors import DATABASE_UNAVAILABLE


class CommandFailed(Exception):
    """The command could not do what was asked; ``str()`` is the one line to print."""


class Backend(Protocol):
    async def list_jobs(self, query: Mapping[str, str]) -> tuple[list[dict[str, Any]], str | None]: ...
    async def show(self, job_id: str) -> dict[str, Any]: ...
    async def retry(self, job_id: str, account: dict[str, str] | None) -> dict[str, Any]: ...
    async def retry_failed(self, query: Mapping[str, str]) -> dict[str, Any]: ...
    async def cancel(self, job_id: str) -> dict[str, Any]: ...
    async def close(self) -> None: ...


class DatabaseBackend:
    """Works on the bridge's database itself (settings from BRIDGE_* / BRIDGE_CONFIG).

    Wake-ups are committed to the outbox; a running bridge's relay publishes them
    within its poll interval (about a second).
    """

    def __init__(self, settings: Settings) -> None:
        self._engine = create_engine(settings.database_url, pool_size=2)
        self._box = SecretBox(settings.secret_key)
        self._policy = CallbackPolicy(settings.callback_allowed_origins, bool(settings.callback_secret))

    async def close(self) -> None:
        await self._engine.dispose()

    async def list_jobs(self, query: Mapping[str, str]) -> tuple[list[dict[str, Any]], str | None]:
        return await admin_ops.list_jobs(self._engine, **job_filter(query).as_kwargs())

    async def show(self, job_id: str) -> dict[str, Any]:
        return await admin_ops.get_job(self._engine, job_id)

    async def retry(self, job_id: str, account: dict[str, str] | None) -> dict[str, Any]:
        return await admin_ops.retry_job(self._engine, self._box, job_id, account)

    async def retry_failed(self, query: Mapping[str, str]) -> dict[str, Any]:
        return await admin_ops.retry_failed_jobs(self._engine, self._box, **failed_job_filter(query).as_match_kwargs())

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await admin_ops.cancel_job(self._engine, job_id, policy=self._policy)


class ApiBackend:
    """Works through a running bridge's admin API with a bearer token."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self._base = url.rstrip("/")
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"}, timeout=aiohttp.ClientTimeout(total=timeout_s)
        )

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self._session.request(method, f"{self._base}{path}", **kwargs) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                if response.status >= 400:
                    error = body.get("error") if isinstance(body, dict) else None
                    raise CommandFailed(f"{response.status}: {error or response.reason}")
                if not isinstance(body, dict):
                    raise CommandFailed(f"{response.status}: the answer was not a JSON object")
                return body
        except aiohttp.ClientError as exc:
            raise CommandFailed(f"cannot reach {self._base}: {exc.__class__.__name__}: {exc}") from None
        except TimeoutError:
            raise CommandFailed(f"{self._base} did not answer in time") from None

    async def list_jobs(self, query: Mapping[str, str]) -> tuple[list[dict[str, Any]], str | None]:
        body = await self._call("GET", "/admin/api/jobs", params=dict(query))
        return list(body["jobs"]), body.get("next_cursor")

    async def show(self, job_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/admin/api/jobs/{_path(job_id)}")

    async def retry(self, job_id: str, account: dict[str, str] | None) -> dict[str, Any]:
        body = {"account": account} if account else {}
        return await self._call("POST", f"/admin/api/jobs/{_path(job_id)}/retry", json=body)

    async def retry_failed(self, query: Mapping[str, str]) -> dict[str, Any]:
        return await self._call("POST", "/admin/api/jobs/retry-failed", params=dict(query))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/admin/api/jobs/{_path(job_id)}/cancel")


def _path(segment: str) -> str:
    return quote(segment, safe="")


@contextlib.asynccontextmanager
async def refusals_as_failures() -> AsyncIterator[None]:
    """The store's refusals and outages as :class:`CommandFailed` with the same words the API uses."""
    try:
        yield
    except AdminError as exc:
        raise CommandFailed(f"{exc.status}: {exc}") from None
    except SecretsUnavailable as exc:
        raise CommandFailed(str(exc)) from None
    except DATABASE_UNAVAILABLE as exc:
        raise CommandFailed(f"the database is unavailable ({exc.__class__.__name__})") from None
