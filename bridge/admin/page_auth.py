"""Who is looking at an admin web page: signing in and out, the session cookie and
the CSRF check on every form POST (see :mod:`bridge.admin.sessions` for the design).

A request carrying ``Authorization: Bearer <token>`` is accepted without a cookie
and without a CSRF field: a browser never adds that header to a cross-site form.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp_jinja2
from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy

from bridge.admin.auth import ADMIN_AUTH, bearer_of
from bridge.admin.sessions import LOGIN_COOKIE, SESSION_COOKIE, csrf_matches, new_login_token
from bridge.domain.validation import is_unicode_text

ADMIN_PATH = "/admin"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


class PageAnswer(Exception):
    """Carries a finished page (401, 403, 429) out of a check to the handler that answers it."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True)
class Viewer:
    """A signed-in admin. ``csrf_token`` is None for bearer requests (no forms to protect)."""

    csrf_token: str | None
    nonce: str | None = None


def is_https(request: web.Request) -> bool:
    # A proxy's X-Forwarded-Proto only ever makes the cookie stricter, so it is safe to honour.
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_admin_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, path=ADMIN_PATH, httponly=True, samesite="Strict", secure=is_https(request), max_age=max_age
    )


def render(request: web.Request, template: str, context: dict[str, object], *, status: int = 200) -> web.Response:
    """An admin page with the security headers every admin page carries."""
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def message_page(
    request: web.Request, status: int, title: str, text: str, viewer: Viewer | None = None
) -> web.Response:
    return render(request, "message.html", {"title": title, "text": text, "viewer": viewer}, status=status)


def viewer_of(request: web.Request) -> Viewer | None:
    """The signed-in admin, from a bearer header or the session cookie; None otherwise."""
    auth = request.app[ADMIN_AUTH]
    given = bearer_of(request)
    if given is not None:
        return Viewer(csrf_token=None) if auth.check(request, given) is not None else None
    session = auth.sessions.verify(request.cookies.get(SESSION_COOKIE))
    return Viewer(session.csrf_token, session.nonce) if session is not None else None


def blocked_page(request: web.Request) -> web.Response | None:
    retry_after = request.app[ADMIN_AUTH].blocked_for(request)
    if retry_after is None:
        return None
    page = message_page(request, 429, "Too many attempts", "Too many failed sign-ins from this address. Wait a minute.")
    page.headers["Retry-After"] = str(retry_after)
    return page


async def require_viewer(request: web.Request) -> Viewer:
    """The viewer of a page, or raise the answer for a stranger (sign-in redirect, 401, 429)."""
    blocked = blocked_page(request)
    if blocked is not None:
        raise PageAnswer(blocked)
    viewer = viewer_of(request)
    if viewer is not None:
        return viewer
    if request.method == "GET" and bearer_of(request) is None:
        raise web.HTTPSeeOther(f"{ADMIN_PATH}/login")
    raise PageAnswer(message_page(request, 401, "Sign in", "Sign in with an admin token first."))


async def read_form(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | FileField]:
    """The fields of a form POST; a 400 page when its body cannot be read as the form it claims."""
    try:
        form = await request.post()
    except (ValueError, LookupError):  # an unknown charset, a multipart body without its boundary
        form = None
    # A charset such as UTF-7 can decode to lone surrogates, which no database or cipher takes.
    if form is None or not all(is_unicode_text(value) for value in form.values() if isinstance(value, str)):
        raise PageAnswer(
            message_page(request, 400, "Unreadable form", "The form could not be read (its encoding is broken).")
        )
    return form


async def require_form(request: web.Request) -> tuple[Viewer, dict[str, str]]:
    """The viewer and fields of a form POST whose CSRF field is right; 403 otherwise."""
    viewer = await require_viewer(request)
    form = {key: str(value) for key, value in (await read_form(request)).items()}
    if viewer.csrf_token is not None and not csrf_matches(viewer.csrf_token, form.get("csrf")):
        raise PageAnswer(
            message_page(
                request,
                403,
                "Form expired",
                "This form is out of date or did not come from this page (CSRF check). Reload and try again.",
                viewer,
            )
        )
    return viewer, form


async def login_page(request: web.Request) -> web.Response:
    if viewer_of(request) is not None:
        raise web.HTTPSeeOther(f"{ADMIN_PATH}/")
    return _login_form(request, status=200, problem=None)


def _login_form(request: web.Request, *, status: int, problem: str | None) -> web.Response:
    login_token = new_login_token()
    page = render(
        request, "login.html", {"login_token": login_token, "problem": problem, "viewer": None}, status=status
    )
    set_admin_cookie(page, request, LOGIN_COOKIE, login_token, max_age=3600)
    return page


async def login(request: web.Request) -> web.Response:
    blocked = blocked_page(request)
    if blocked is not None:
        return blocked
    form = await read_form(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    given = form.get("login_token")
    if not expected.isascii() or not csrf_matches(expected, given):
        return message_page(request, 403, "Form expired", "The sign-in form was out of date. Open it again.")
    token = request.app[ADMIN_AUTH].check(request, str(form.get("token") or "") or None)
    if token is None:
        return _login_form(request, status=401, problem="That is not a valid admin token.")
    cookie, _session = request.app[ADMIN_AUTH].sessions.issue(token)
    response = web.HTTPSeeOther(f"{ADMIN_PATH}/")
    set_admin_cookie(response, request, SESSION_COOKIE, cookie, max_age=request.app[ADMIN_AUTH].sessions.lifetime_s)
    response.del_cookie(LOGIN_COOKIE, path=ADMIN_PATH)
    raise response


async def logout(request: web.Request) -> web.Response:
    viewer, _form = await require_form(request)  # the route's page_handler answers PageAnswer
    session = request.app[ADMIN_AUTH].sessions.verify(request.cookies.get(SESSION_COOKIE))
    if session is not None and session.nonce == viewer.nonce:
        request.app[ADMIN_AUTH].sessions.revoke(session)
    response = web.HTTPSeeOther(f"{ADMIN_PATH}/login")
    response.del_cookie(SESSION_COOKIE, path=ADMIN_PATH)
    raise response
