"""The admin web page: signing in, the session cookie, CSRF, the job pages, masking."""

from __future__ import annotations

import re

from admin_helpers import AUTH, admin_bridge, failed_at_database, failed_job_of_its_own, order, run_state
from conftest import ADMIN_TOKEN
from engine_harness import ACCOUNT, Bridge
from orders import ACCOUNT_PASSWORD, DB_PASSWORD
from raw_http import raw_request
from sqlalchemy import select

from bridge.admin.sessions import LOGIN_COOKIE, SESSION_COOKIE, SessionSigner
from bridge.bootstrap import Role
from bridge.store import tables as t
from bridge.store.admin_queries import encode_cursor


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


async def sign_in(bridge: Bridge, token: str = ADMIN_TOKEN, **headers: str) -> tuple[int, str, list[str]]:
    page = await bridge.client.get("/admin/login")
    login_token = hidden(await page.text(), "login_token")
    response = await bridge.client.post(
        "/admin/login",
        data={"login_token": login_token, "token": token},
        headers=headers,
        allow_redirects=False,
    )
    return response.status, response.headers.get("Location", ""), response.headers.getall("Set-Cookie", [])


async def page(bridge: Bridge, path: str, **kw: object) -> tuple[int, str]:
    response = await bridge.client.get(path, allow_redirects=False, **kw)  # type: ignore[arg-type]
    return response.status, await response.text()


async def test_sign_in_sets_a_strict_session_cookie_that_is_not_the_token(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        status, _ = await page(bridge, "/admin/")
        assert status == 303
        status, location, cookies = await sign_in(bridge, "wrong")
        assert status == 401 and not any(c.startswith(SESSION_COOKIE) for c in cookies)
        status, location, cookies = await sign_in(bridge)
        assert (status, location) == (303, "/admin/")
        session = next(c for c in cookies if c.startswith(f"{SESSION_COOKIE}="))
        flags = [f.strip().lower() for f in session.split(";")]
        assert "httponly" in flags and "samesite=strict" in flags and "path=/admin" in flags
        assert "secure" not in flags  # plain http here
        value = session.split(";")[0].split("=", 1)[1]
        assert ADMIN_TOKEN not in value and value.startswith("v1.")
        status, html = await page(bridge, "/admin/")
        assert status == 200 and '<table id="jobs">' in html
        assert 'name="viewport"' in html
        # Behind TLS the cookie is Secure too.
        bridge.client.session.cookie_jar.clear()
        _, _, cookies = await sign_in(bridge, **{"X-Forwarded-Proto": "https"})
        assert any(c.startswith(SESSION_COOKIE) and "secure" in c.lower() for c in cookies)


async def test_sign_in_form_needs_its_own_token(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        response = await bridge.client.post("/admin/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
        assert response.status == 403 and SESSION_COOKIE not in str(response.headers.getall("Set-Cookie", []))


async def test_forged_or_expired_cookies_are_refused(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        other = SessionSigner(["another-token-entirely"])
        forged, _ = other.issue("another-token-entirely")
        mine = SessionSigner([ADMIN_TOKEN])
        expired, _ = mine.issue(ADMIN_TOKEN, now=0)
        valid, _ = mine.issue(ADMIN_TOKEN)
        tampered = valid[:-2] + ("AA" if not valid.endswith("AA") else "BB")
        for cookie in (forged, expired, tampered, "v1.9999999999.x.y", "v1." + "9" * 5000 + ".x.y", ADMIN_TOKEN):
            bridge.client.session.cookie_jar.clear()
            status, _ = await page(bridge, "/admin/", cookies={SESSION_COOKIE: cookie})
            assert status == 303, cookie
        # A session from another process (same token, no shared memory) is accepted.
        bridge.client.session.cookie_jar.clear()
        assert (await page(bridge, "/admin/", cookies={SESSION_COOKIE: valid}))[0] == 200


async def test_csrf_guards_every_form_post(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        job_id = await failed_at_database(bridge)
        await sign_in(bridge)
        status, html = await page(bridge, f"/admin/jobs/{job_id}")
        csrf = hidden(html, "csrf")
        comp_id = (await bridge.job(job_id))["compensations"][0]["id"]
        posts = [
            (f"/admin/jobs/{job_id}/retry", {}),
            (f"/admin/jobs/{job_id}/cancel", {}),
            (f"/admin/jobs/{job_id}/callbacks/resend", {}),
            # not_needed: the domain stays, and the retry below goes on after it.
            (f"/admin/compensations/{comp_id}/resolve", {"job_id": job_id, "status": "not_needed"}),
            ("/admin/jobs/retry-failed", {}),
            ("/admin/logout", {}),
        ]
        callbacks_before = len((await bridge.job(job_id))["callbacks"])
        for path, fields in posts:
            for token in (None, "", "wrong", csrf[:-1]):
                data = dict(fields, **({"csrf": token} if token is not None else {}))
                response = await bridge.client.post(path, data=data, allow_redirects=False)
                assert response.status == 403, (path, token)
        after = await bridge.job(job_id)
        assert after["status"] == "failed" and after["compensations"][0]["status"] == "pending"
        assert len(after["callbacks"]) == callbacks_before
        assert (await page(bridge, "/admin/"))[0] == 200  # still signed in
        # With the right field the same forms work.
        path, fields = posts[3]
        response = await bridge.client.post(path, data={**fields, "csrf": csrf}, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == f"/admin/jobs/{job_id}?notice=resolved"
        assert (await bridge.job(job_id))["compensations"][0]["status"] == "not_needed"
        response = await bridge.client.post(f"/admin/jobs/{job_id}/retry", data={"csrf": csrf}, allow_redirects=False)
        assert response.status == 303
        await bridge.wait_for(job_id, "succeeded")
        # A refused action shows the job with the reason.
        response = await bridge.client.post(f"/admin/jobs/{job_id}/retry", data={"csrf": csrf}, allow_redirects=False)
        assert response.status == 409 and "only a failed job can be retried" in await response.text()


async def test_sign_out_ends_the_session(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        await sign_in(bridge)
        _, html = await page(bridge, "/admin/")
        cookie = bridge.client.session.cookie_jar.filter_cookies(bridge.client.make_url("/admin/"))[
            SESSION_COOKIE
        ].value
        response = await bridge.client.post("/admin/logout", data={"csrf": hidden(html, "csrf")}, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/admin/login"
        assert (await page(bridge, "/admin/"))[0] == 303
        bridge.client.session.cookie_jar.clear()
        assert (await page(bridge, "/admin/", cookies={SESSION_COOKIE: cookie}))[0] == 303  # revoked


async def test_bearer_header_works_without_cookie_or_csrf(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        job_id = await failed_at_database(bridge)
        assert (await page(bridge, "/admin/", headers=AUTH))[0] == 200
        assert (await page(bridge, "/admin/", headers={"Authorization": "Bearer nope"}))[0] == 401
        response = await bridge.client.post(f"/admin/jobs/{job_id}/retry", headers=AUTH, allow_redirects=False)
        assert response.status == 303
        await bridge.wait_for(job_id, "succeeded")
        response = await bridge.client.post(f"/admin/jobs/{job_id}/retry", allow_redirects=False)
        assert response.status == 401  # no cookie, no header


async def post_form(bridge: Bridge, path: str, **fields: str) -> tuple[int, str, str]:
    response = await bridge.client.post(path, data=fields, headers=AUTH, allow_redirects=False)
    return response.status, response.headers.get("Location", ""), await response.text()


async def test_actions_name_what_they_cannot_find(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        job_id = await failed_at_database(bridge, domain="other.example.com")
        [compensation] = (await bridge.job(job_id))["compensations"]
        for path in ("/admin/jobs/nope/retry", "/admin/jobs/nope/cancel", "/admin/jobs/nope/callbacks/resend"):
            status, _, html = await post_form(bridge, path, password="anything")
            assert status == 404 and "job nope not found" in html, path
        resolve = f"/admin/compensations/{compensation['id']}/resolve"
        status, _, html = await post_form(bridge, resolve, job_id="nope")
        assert status == 404 and "job nope not found" in html
        _, answer = await bridge.send(order(bridge, service_id="7002"))
        status, _, html = await post_form(bridge, resolve, job_id=answer["job_id"])
        assert status == 404 and f"is not part of job {answer['job_id']}" in html
        status, _, html = await post_form(bridge, resolve)
        assert status == 422 and "Missing job" in html
        assert (await bridge.job(job_id))["compensations"][0]["status"] == "pending"


async def test_retry_with_a_fresh_password_from_the_form(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        _, answer = await bridge.send(order(bridge, password=ACCOUNT_PASSWORD))  # not the panel's
        job_id = answer["job_id"]
        await bridge.wait_for(job_id, "failed")
        status, location, _ = await post_form(bridge, f"/admin/jobs/{job_id}/retry", password=ACCOUNT[1])
        assert (status, location) == (303, f"/admin/jobs/{job_id}?notice=retried")
        await bridge.wait_for(job_id, "succeeded")


async def test_job_page_shows_the_timeline_masked_and_escaped(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        bridge.sim.inject_fault("db_make", "error:<script>alert('x')</script> limit exceeded")
        _, answer = await bridge.send(order(bridge))
        job_id = answer["job_id"]
        await bridge.wait_for(job_id, "failed")
        status, html = await page(bridge, f"/admin/jobs/{job_id}", headers=AUTH)
        assert status == 200
        assert "<script>" not in html and "&lt;script&gt;" in html
        for section in ('id="steps"', 'id="attempts"', 'id="panel-calls"', 'id="compensations"', 'id="callbacks"'):
            assert section in html
        assert "account_info" in html and "db_make" in html and "remove domain example.com" in html
        assert "a retry does that step again" in html  # what resolving a record done means
        assert 'id="retry"' in html and 'id="cancel"' not in html
        assert 'http-equiv="refresh"' not in html  # finished: nothing to watch
        for secret in (DB_PASSWORD, "John-Panel-Pass-1", ADMIN_TOKEN):
            assert secret not in html
        assert "Content-Security-Policy" in (await bridge.client.get(f"/admin/jobs/{job_id}", headers=AUTH)).headers
        # While it runs again, the page refreshes itself.
        bridge.sim.set_latency(1.0, "db_make")
        await bridge.client.post(f"/admin/jobs/{job_id}/retry", headers=AUTH, allow_redirects=False)
        _, html = await page(bridge, f"/admin/jobs/{job_id}", headers=AUTH)
        assert 'http-equiv="refresh" content="2"' in html and 'id="cancel"' in html
        assert (await page(bridge, "/admin/jobs/nope", headers=AUTH))[0] == 404


async def test_wrong_password_never_shows(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        _, answer = await bridge.send(order(bridge, password=ACCOUNT_PASSWORD))
        await bridge.wait_for(answer["job_id"], "failed")
        for path in ("/admin/", f"/admin/jobs/{answer['job_id']}", "/admin/?status=failed"):
            status, html = await page(bridge, path, headers=AUTH)
            assert status == 200 and ACCOUNT_PASSWORD not in html and DB_PASSWORD not in html


async def test_jobs_table_filters_searches_and_pages(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        failed = await failed_at_database(bridge, service_id="5001", domain="broken.example.com")
        ids = []
        for i in range(26):
            _, answer = await bridge.send(
                order(
                    bridge, service_id=f"6{i:03d}", domain=f"ok{i}.example.net", ssl=False, databases=[], cron_jobs=[]
                )
            )
            ids.append(answer["job_id"])
        _, html = await page(bridge, "/admin/?status=failed", headers=AUTH)
        assert failed in html and ids[0] not in html
        assert '<option value="failed" selected>' in html
        _, html = await page(bridge, "/admin/?q=5001", headers=AUTH)
        assert failed in html and ids[0] not in html
        _, html = await page(bridge, "/admin/?q=OK3.example", headers=AUTH)
        assert ids[3] in html and ids[4] not in html
        _, html = await page(bridge, "/admin/", headers=AUTH)
        rows = re.findall(r'data-job-id="([^"]+)"', html)
        assert rows == list(reversed(ids))[:25]  # newest first, 25 a page
        next_url = re.search(r'href="([^"]+)" rel="next"', html)
        assert next_url
        _, html = await page(bridge, next_url.group(1).replace("&amp;", "&"), headers=AUTH)
        assert re.findall(r'data-job-id="([^"]+)"', html) == [ids[0], failed]
        assert 'rel="next"' not in html
        status, html = await page(bridge, "/admin/?cursor=garbage", headers=AUTH)
        assert status == 422 and "cursor" in html


RETRY_FAILED_FORM = re.compile(r'<form method="post" action="/admin/jobs/retry-failed">(.*?)</form>', re.DOTALL)


async def test_retry_all_failed_from_the_failed_list(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        matching = await failed_job_of_its_own(bridge, 1, service_id="5101")
        other = await failed_job_of_its_own(bridge, 2, service_id="5102")
        done = order(bridge, service_id="5101", domain="done.example.com", ssl=False, databases=[], cron_jobs=[])
        succeeded = await bridge.wait_for((await bridge.send(done))[1]["job_id"], "succeeded")
        await sign_in(bridge)
        # Only on the failed list, and only when it lists a job.
        for path in ("/admin/", "/admin/?status=succeeded", "/admin/?q=5101", "/admin/?status=failed&q=nothing"):
            status, html = await page(bridge, path)
            assert status == 200 and 'id="retry-failed"' not in html, path
        status, html = await page(bridge, "/admin/?status=failed&q=5101")
        form = RETRY_FAILED_FORM.search(html)
        assert status == 200 and form and "Retry all failed jobs matching this filter" in form.group(1)
        assert 'name="q" value="5101"' in form.group(1)
        csrf = hidden(form.group(1), "csrf")

        response = await bridge.client.post("/admin/jobs/retry-failed", data={"q": "5101"}, allow_redirects=False)
        assert response.status == 403
        assert (await bridge.job(matching))["status"] == "failed"

        response = await bridge.client.post(
            "/admin/jobs/retry-failed", data={"q": "5101", "csrf": csrf}, allow_redirects=False
        )
        location = "/admin/?status=failed&q=5101&notice=retried_failed&retried=1&skipped=0"
        assert (response.status, response.headers["Location"]) == (303, location)
        status, html = await page(bridge, location)
        assert status == 200 and "Failed jobs queued for retry: 1; skipped: 0." in html
        await bridge.wait_for(matching, "succeeded")
        assert (await bridge.job(other))["status"] == "failed"
        assert run_state(await bridge.job(succeeded["job_id"])) == run_state(succeeded)

        status, html = await page(bridge, "/admin/?notice=retried_failed_more&retried=3&skipped=1")
        assert "queued for retry: 3; skipped: 1. More failed jobs match" in html
        for counts in ("retried=<b>9</b>&skipped=0", "retried=1", "retried=1&skipped=1000"):
            status, html = await page(bridge, f"/admin/?notice=retried_failed&{counts}")
            assert status == 200 and "queued for retry" not in html and "<b>9" not in html, counts
        response = await bridge.client.post(
            "/admin/jobs/retry-failed", data={"q": "51\x0002", "csrf": csrf}, allow_redirects=False
        )
        assert response.status == 422 and "q: must not contain control characters" in await response.text()
        assert (await bridge.job(other))["status"] == "failed"


async def test_cookies_that_are_not_utf8_are_refused_like_forged_ones(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        for cookie in (b"v1.9999999999.x.sig\xff", b"v1.9999999999.n\xffnce.sig"):
            head = b"GET /admin/ HTTP/1.1\r\nHost: bridge\r\nCookie: " + SESSION_COOKIE.encode() + b"=" + cookie
            assert (await raw_request(bridge.client, head))[0] == 303, cookie
        head = (
            b"POST /admin/login HTTP/1.1\r\nHost: bridge\r\nCookie: " + LOGIN_COOKIE.encode() + b"=t\xffk\r\n"
            b"Content-Type: application/x-www-form-urlencoded"
        )
        status, html = await raw_request(bridge.client, head, b"login_token=tk&token=x")
        assert status == 403 and b"Form expired" in html


async def test_a_form_that_cannot_be_read_is_400(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        job_id = await failed_at_database(bridge)
        for content_type, body in [
            ("application/x-www-form-urlencoded; charset=no-such-charset", b"password=x"),
            ("multipart/form-data", b"password=x"),
            # UTF-7's "+2AA-" decodes to a lone surrogate, which neither the cipher nor the database takes.
            ("application/x-www-form-urlencoded; charset=utf-7", b"password=+2AA-&token=+2AA-&login_token=+2AA-"),
        ]:
            for path in (f"/admin/jobs/{job_id}/retry", "/admin/login"):
                response = await bridge.client.post(
                    path, data=body, headers={**AUTH, "Content-Type": content_type}, allow_redirects=False
                )
                assert response.status == 400, (path, content_type, response.status)
        assert (await bridge.job(job_id))["status"] == "failed"


async def test_text_the_database_cannot_take_is_refused_on_the_page(db_url: str) -> None:
    async with admin_bridge(db_url) as bridge:
        job_id = await failed_at_database(bridge)
        [compensation] = (await bridge.job(job_id))["compensations"]
        status, html = await page(bridge, "/admin/?q=%00", headers=AUTH)
        assert status == 422 and "q: must not contain control characters" in html
        assert (await page(bridge, "/admin/jobs/x%00y", headers=AUTH))[0] == 404
        status, _, html = await post_form(bridge, f"/admin/compensations/{compensation['id']}/resolve", job_id="x\x00")
        assert status == 404
        assert (await bridge.job(job_id))["compensations"][0]["status"] == "pending"


async def test_a_job_cancelled_at_once_from_the_page_counts_as_finished(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url, roles={Role.BACKGROUND}) as bridge:  # no worker holds it
        job_id = (await bridge.send(order(bridge)))[1]["job_id"]
        await sign_in(bridge)
        csrf = hidden((await page(bridge, f"/admin/jobs/{job_id}"))[1], "csrf")
        response = await bridge.client.post(f"/admin/jobs/{job_id}/cancel", data={"csrf": csrf}, allow_redirects=False)
        assert response.status == 303 and "notice=cancelled" in response.headers["Location"]
        counted = bridge.runtime.metrics.registry.get_sample_value(
            "bridge_jobs_finished_total", {"status": "cancelled"}
        )
        assert counted == 1


async def test_retry_all_failed_goes_on_past_the_jobs_a_press_tried(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        tried = await failed_job_of_its_own(bridge, 1, service_id="5201")
        untried = await failed_job_of_its_own(bridge, 2, service_id="5202")
        async with bridge.runtime.engine.connect() as conn:
            tried_pk = (await conn.execute(select(t.jobs.c.id).where(t.jobs.c.public_id == tried))).scalar_one()
        await sign_in(bridge)
        # As the page shows it after a press that left more: the button goes on past those tried.
        status, html = await page(bridge, f"/admin/?status=failed&retry_cursor={encode_cursor(tried_pk)}")
        form = RETRY_FAILED_FORM.search(html)
        assert status == 200 and form and "Retry the next failed jobs matching this filter" in form.group(1)
        assert hidden(form.group(1), "cursor") == encode_cursor(tried_pk)
        response = await bridge.client.post(
            "/admin/jobs/retry-failed",
            data={"cursor": hidden(form.group(1), "cursor"), "csrf": hidden(form.group(1), "csrf")},
            allow_redirects=False,
        )
        assert response.status == 303 and "notice=retried_failed&retried=1&skipped=0" in response.headers["Location"]
        await bridge.wait_for(untried, "succeeded")
        assert (await bridge.job(tried))["status"] == "failed"
        # Blanks alone are no search: the button is there, and retries what the list shows.
        status, html = await page(bridge, "/admin/?status=failed&q=%20%20")
        form = RETRY_FAILED_FORM.search(html)
        assert form and 'name="q" value=""' in form.group(1)
        # A cursor the page did not give out is ignored: the button starts from the oldest.
        status, html = await page(bridge, "/admin/?status=failed&retry_cursor=bogus")
        form = RETRY_FAILED_FORM.search(html)
        assert form and 'name="cursor"' not in form.group(1) and "Retry all failed jobs" in form.group(1)
