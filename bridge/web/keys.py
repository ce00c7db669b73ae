"""Typed application keys: everything the HTTP handlers need, set by the composition root."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from bridge.bootstrap import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
