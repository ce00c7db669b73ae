"""Everything ``/admin`` and ``/openapi.json`` add to the HTTP application."""

from __future__ import annotations

from aiohttp import web

from bridge.admin.api import add_api_routes
from bridge.admin.auth import ADMIN_AUTH, AdminAuth
from bridge.admin.openapi import serve_openapi
from bridge.admin.pages import add_page_routes
from bridge.web.keys import RUNTIME


def add_admin_routes(app: web.Application) -> None:
    """The admin API, the admin web page and the OpenAPI document, with their shared auth state."""
    app[ADMIN_AUTH] = AdminAuth(list(app[RUNTIME].settings.admin_tokens))
    add_api_routes(app)
    add_page_routes(app)
    app.router.add_get("/openapi.json", serve_openapi)
