"""Every answer shape of PANEL_API.md maps to the right outcome."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.domain.masking import MASK
from bridge.domain.outcomes import (
    AlreadyExists,
    FailureReason,
    PermanentFailure,
    RetryableFailure,
    Succeeded,
    UnknownOutcome,
    outcome_kind,
)
from bridge.panel.classify import classify_answer, normalise_limit

MUTATING = ["add_domain", "domain_issue_ssl", "db_make", "cronjob_add"]
READS = ["account_info", "domain_list", "database_list", "database_userlist", "cronjob_list"]

HTML_500 = "<!doctype html><html><body><h1>Server Error (500)</h1></body></html>"
HTML_404 = "<!doctype html><html><body><h1>Not Found</h1></body></html>"
HTML_403 = "<html><body>403 Forbidden</body></html>"


def j(value: Any) -> str:
    return json.dumps(value)


P = FailureReason

# (call, body, expected kind, expected reason for permanent failures)
FAILURES: list[tuple[str, str, type, FailureReason | None]] = [
    # authentication, for every call
    *[(c, j({"error": "Invalid credentials"}), PermanentFailure, P.INVALID_CREDENTIALS) for c in READS + MUTATING],
    *[(c, j({"error": "API is currently disabled"}), PermanentFailure, P.API_DISABLED) for c in READS + MUTATING],
    (
        "domain_list",
        j({"error": "Username and API key or password required"}),
        PermanentFailure,
        P.INVALID_CREDENTIALS,
    ),
    ("domain_list", j({"error": "Username and password required"}), PermanentFailure, P.INVALID_CREDENTIALS),
    ("account_info", j({"error": "Package not found"}), PermanentFailure, P.OTHER),
    ("account_info", j({"error": "User not found"}), PermanentFailure, P.NOT_FOUND),
    ("add_domain", j({"success": False, "message": "User 'bob' not found."}), PermanentFailure, P.NOT_FOUND),
    ("add_domain", j({"error": "POST method required"}), PermanentFailure, P.OTHER),
    # add_domain
    (
        "add_domain",
        j({"success": False, "message": "Domain and PHP version are required."}),
        PermanentFailure,
        P.INVALID_INPUT,
    ),
    (
        "add_domain",
        j({"success": False, "message": "Invalid domain format."}),
        PermanentFailure,
        P.INVALID_INPUT,
    ),
    (
        "add_domain",
        j({"success": False, "message": "The domain 'x.com' already exists."}),
        AlreadyExists,
        None,
    ),
    (
        "add_domain",
        j({"success": False, "message": "Domain add limit exceeded."}),
        PermanentFailure,
        P.LIMIT_EXCEEDED,
    ),
    (
        "add_domain",
        j({"success": False, "message": "Subdomain add limit exceeded."}),
        PermanentFailure,
        P.LIMIT_EXCEEDED,
    ),
    (
        "add_domain",
        j({"success": False, "message": "Failed to add mapping for 'x.com'."}),
        RetryableFailure,
        None,
    ),
    (
        "add_domain",
        j({"success": False, "message": "Failed to add virtual host for 'x.com'."}),
        RetryableFailure,
        None,
    ),
    (
        "add_domain",
        j({"success": False, "message": "Failed to set folder permissions for 'x.com'."}),
        RetryableFailure,
        None,
    ),
    (
        "add_domain",
        j({"success": False, "message": "[Errno 2] No such file: '/usr/local/lsws/conf'"}),
        PermanentFailure,
        P.OTHER,
    ),
    # domain_issue_ssl, real and documented wording
    (
        "domain_issue_ssl",
        j({"success": False, "message": "Domain field is required."}),
        PermanentFailure,
        P.INVALID_INPUT,
    ),
    (
        "domain_issue_ssl",
        j({"success": False, "message": "Domain name is required."}),
        PermanentFailure,
        P.INVALID_INPUT,
    ),
    (
        "domain_issue_ssl",
        j({"success": False, "message": "Domain 'x.com' not found for this user."}),
        PermanentFailure,
        P.NOT_FOUND,
    ),
    (
        "domain_issue_ssl",
        j({"success": False, "message": "Domain 'x.com' not found."}),
        PermanentFailure,
        P.NOT_FOUND,
    ),
    (
        "domain_issue_ssl",
        j({"success": False, "message": 'Failed to issue SSL for "x.com", self-signed SSL created instead.'}),
        RetryableFailure,
        None,
    ),
    (
        "domain_issue_ssl",
        j({"success": False, "message": "Failed to issue SSL for 'x.com'."}),
        RetryableFailure,
        None,
    ),
    # db_make, real and documented wording
    (
        "db_make",
        j({"success": False, "error": "Database name is required."}),
        PermanentFailure,
        P.INVALID_INPUT,
    ),
    (
        "db_make",
        j({"success": False, "error": "Database name must be at least 2 characters."}),
        PermanentFailure,
        P.INVALID_INPUT,
    ),
    (
        "db_make",
        j({"success": False, "error": "Database limit exceeded."}),
        PermanentFailure,
        P.LIMIT_EXCEEDED,
    ),
    ("db_make", j({"success": False, "error": "Database 'alice_wp' already exists."}), AlreadyExists, None),
    (
        "db_make",
        j({"success": False, "error": "All database user fields are required."}),
        PermanentFailure,
        P.INVALID_INPUT,
    ),
    (
        "db_make",
        j({"success": False, "error": "All fields are required."}),
        PermanentFailure,
        P.INVALID_INPUT,
    ),
    (
        "db_make",
        j({"success": False, "error": "DB user name must be at least 2 characters."}),
        PermanentFailure,
        P.INVALID_INPUT,
    ),
    (
        "db_make",
        j({"success": False, "error": "Password must be at least 8 characters long."}),
        PermanentFailure,
        P.INVALID_INPUT,
    ),
    ("db_make", j({"success": False, "error": "Passwords do not match."}), PermanentFailure, P.INVALID_INPUT),
    ("db_make", j({"success": False, "error": "User already exists."}), AlreadyExists, None),
    (
        "db_make",
        j({"success": False, "error": "Username 'bob' does not exist."}),
        PermanentFailure,
        P.NOT_FOUND,
    ),
    (
        "db_make",
        j({"success": False, "error": "(1044, \"Access denied for user 'x'\")"}),
        PermanentFailure,
        P.OTHER,
    ),
    # cron
    (
        "cronjob_add",
        j({"success": False, "error": "All fields are required."}),
        PermanentFailure,
        P.INVALID_INPUT,
    ),
    ("cronjob_add", j({"success": False, "error": "Cron job already exists."}), AlreadyExists, None),
    ("cronjob_add", j({"success": False, "error": "Invalid request method."}), PermanentFailure, P.OTHER),
    (
        "cronjob_add",
        j({"success": False, "error": "[Errno 13] Permission denied"}),
        PermanentFailure,
        P.OTHER,
    ),
    ("cronjob_list", j({"error": "Cron job not found."}), PermanentFailure, P.NOT_FOUND),
    ("cronjob_list", j({"error": "Line is required."}), PermanentFailure, P.INVALID_INPUT),
    ("cronjob_list", HTML_500, PermanentFailure, P.NOT_FOUND),
    # the firewall, whatever the call
    *[(c, HTML_403, PermanentFailure, P.FIREWALL) for c in READS + MUTATING],
]


@pytest.mark.parametrize(("call", "body", "kind", "reason"), FAILURES)
def test_failure_answers(call: str, body: str, kind: type, reason: FailureReason | None) -> None:
    status = 403 if body == HTML_403 else 500 if body == HTML_500 else 200
    outcome = classify_answer(call, status, body)
    assert type(outcome) is kind, outcome
    if reason is not None:
        assert isinstance(outcome, PermanentFailure)
        assert outcome.reason is reason
    assert outcome.message  # always something a human can read


@pytest.mark.parametrize("call", READS[:-1])
@pytest.mark.parametrize(
    ("status", "body"), [(500, HTML_500), (404, HTML_404), (200, ""), (502, "Bad Gateway"), (200, "null")]
)
def test_broken_answers_to_reads_are_retryable(call: str, status: int, body: str) -> None:
    assert isinstance(classify_answer(call, status, body), RetryableFailure)


@pytest.mark.parametrize("call", MUTATING)
@pytest.mark.parametrize(
    ("status", "body"),
    [(500, HTML_500), (404, HTML_404), (200, ""), (502, "Bad Gateway"), (200, j({"odd": 1}))],
)
def test_broken_answers_to_mutating_calls_are_unknown(call: str, status: int, body: str) -> None:
    outcome = classify_answer(call, status, body)
    assert isinstance(outcome, UnknownOutcome)
    assert "may or may not" in outcome.message


def test_html_500_is_not_found_only_for_cronjob_list() -> None:
    assert isinstance(classify_answer("cronjob_list", 500, HTML_500), PermanentFailure)
    assert isinstance(classify_answer("domain_list", 500, HTML_500), RetryableFailure)
    assert isinstance(classify_answer("cronjob_list", 404, HTML_404), RetryableFailure)


SUCCESSES: list[tuple[str, Any, dict[str, Any]]] = [
    (
        "add_domain",
        {"success": True, "message": "Domain 'x.com' added successfully!", "domain_id": 7},
        {"domain_id": 7},
    ),
    ("add_domain", {"success": True, "message": "Domain 'x.com' added successfully!"}, {"domain_id": None}),
    ("domain_issue_ssl", {"success": True, "message": 'SSL issued successfully for "x.com".'}, {}),
    ("domain_issue_ssl", {"success": True, "message": "SSL issued successfully for 'x.com'."}, {}),
    ("db_make", {"success": True, "message": "Database and user created successfully."}, {}),
    ("db_make", {"success": True, "message": "Database user created successfully for alice."}, {}),
    ("cronjob_add", {"success": True, "message": "Cron job added successfully."}, {}),
    ("cronjob_list", {"line_number": 3}, {"line_number": 3}),
    ("database_list", {"databases": ["alice_wp"]}, {"databases": ["alice_wp"]}),
    ("database_userlist", {"users": ["alice_wpuser"]}, {"users": ["alice_wpuser"]}),
    ("domain_list", [], {"domains": []}),
    (
        "domain_list",
        [{"id": 1, "domain": "x.com", "path": "/home/alice/public_html"}],
        {"domains": [{"id": 1, "domain": "x.com", "path": "/home/alice/public_html"}]},
    ),
]


@pytest.mark.parametrize(("call", "answer", "data"), SUCCESSES)
def test_success_answers(call: str, answer: Any, data: dict[str, Any]) -> None:
    outcome = classify_answer(call, 200, j(answer))
    assert isinstance(outcome, Succeeded)
    assert outcome.data == data
    assert outcome_kind(outcome) == "succeeded"


def test_documented_success_text_without_success_flag_counts() -> None:
    outcome = classify_answer("cronjob_add", 200, j({"message": "Cron job added successfully."}))
    assert isinstance(outcome, Succeeded)


ACCOUNT = {
    "package_name": "Basic",
    "disk_limit": "10GB",
    "disk_used": "2GB",
    "email_limit": 5,
    "email_used": 2,
    "db_limit": 3,
    "db_used": 1,
    "ftp_limit": "Unlimited",
    "ftp_used": 0,
    "domain_limit": "2",
    "domain_used": "1",
}


def test_account_info_normalises_limits_and_keeps_raw_fields() -> None:
    outcome = classify_answer("account_info", 200, j(ACCOUNT))
    assert isinstance(outcome, Succeeded)
    assert outcome.data["limits"]["domain"] == {"limit": 2, "used": 1}
    assert outcome.data["limits"]["db"] == {"limit": 3, "used": 1}
    assert outcome.data["limits"]["ftp"] == {"limit": None, "used": 0}
    assert outcome.data["domain_limit"] == "2"
    assert outcome.data["disk_limit"] == "10GB"


@pytest.mark.parametrize(
    ("raw", "limit"),
    [
        (3, 3),
        ("3", 3),
        (" 12 ", 12),
        (2.0, 2),
        (0, None),
        ("0", None),
        ("Unlimited", None),
        ("unlimited", None),
        ("∞", None),
        (None, None),
        ("lots", None),
        (-1, None),
        (True, None),
    ],
)
def test_limits(raw: Any, limit: int | None) -> None:
    assert normalise_limit(raw) == limit


def test_secrets_quoted_back_by_the_panel_never_reach_the_message() -> None:
    body = j({"success": False, "error": "CREATE USER 'alice_wp' IDENTIFIED BY 'Hunter2-Hunter2' failed"})
    outcome = classify_answer("db_make", 200, body, secrets=("Hunter2-Hunter2",))
    assert isinstance(outcome, PermanentFailure)
    assert "Hunter2-Hunter2" not in outcome.message
    assert MASK in outcome.message


def test_a_database_user_taken_says_db_make_had_already_made_the_database() -> None:
    # PANEL_API.md: db_make makes the database before it looks at the user fields.
    user_taken = classify_answer("db_make", 200, j({"success": False, "error": "User already exists."}))
    db_taken = classify_answer("db_make", 200, j({"success": False, "error": "Database 'alice_wp' already exists."}))
    assert isinstance(user_taken, AlreadyExists) and user_taken.first_part_done
    assert isinstance(db_taken, AlreadyExists) and not db_taken.first_part_done
