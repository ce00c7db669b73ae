"""Strict checks for every value the bridge passes to the hosting panel.

The panel interpolates domain, database and user names into shell commands and
SQL without quoting, and writes cron fields into the crontab without checking
them. So the bridge refuses anything outside a narrow character class before a
value leaves it, both at intake (the webhook models) and in the panel client.

Each function returns the normalised value or raises :class:`InvalidField`, whose
text names the field and says what is wrong in words a billing admin can act
on. Values are quoted in reasons with ``repr`` so control characters show up
visibly; a password is never quoted.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit

__all__ = [
    "CRON_FIELDS",
    "InvalidField",
    "account_username",
    "callback_url",
    "cron_command",
    "cron_field",
    "database_name",
    "database_password",
    "database_user",
    "document_path",
    "domain_name",
    "php_version",
]


class InvalidField(ValueError):
    """A value the panel must not receive; ``str(exc)`` is ``"<field>: <reason>"``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


_SHOWN_CHARS = 60

# Character categories that must never reach the panel: C0/C1 controls (newline,
# tab, NUL ...), invisible format characters (bidi overrides, zero-width
# joiners) and the Unicode line/paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})

_DOMAIN_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TLD = re.compile(r"[a-z]{2,63}")
_PHP_VERSION = re.compile(r"[0-9]{1,2}\.[0-9]{1,2}")
_USERNAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_DB_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+")
_NUMBER = re.compile(r"[0-9]{1,2}")
# Runs of the characters each kind of name may contain (see _first_bad_char).
_DOMAIN_CHARS = re.compile(r"[a-z0-9.-]*")
_PATH_CHARS = re.compile(r"[A-Za-z0-9_./-]*")
_USERNAME_CHARS = re.compile(r"[a-z0-9_]*")
_DB_IDENTIFIER_CHARS = re.compile(r"[A-Za-z0-9_]*")
_CRON_CHARS = re.compile(r"[A-Za-z0-9*,/-]*")

_MAX_DOMAIN = 253
_MAX_PATH = 255
_MAX_USERNAME = 32
_MYSQL_MAX_DATABASE = 64
_MYSQL_MAX_USER = 32
_MIN_PASSWORD = 8
_MAX_ACCOUNT_PASSWORD = 256
_MAX_PASSWORD = 128
_MAX_COMMAND = 1024


def _show(value: str) -> str:
    """A quoted, possibly shortened copy of a (non-secret) value for an error message."""
    if len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS]) + f"... ({len(value)} characters)"
    return repr(value)


def _has_control(value: str) -> bool:
    if value.isascii() and value.isprintable():
        # The usual case, at C speed: in ASCII only the Cc controls are not printable.
        return False
    return any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in value)


def is_unicode_text(value: str) -> bool:
    """Whether ``value`` can be stored and sent as UTF-8 (a lone surrogate cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_bad_char(value: str, allowed: re.Pattern[str]) -> str | None:
    """The first character of ``value`` not in ``allowed``, a run of allowed characters (``[...]*``)."""
    run = allowed.match(value)
    end = run.end() if run is not None else 0
    return value[end] if end < len(value) else None


def _describe_char(ch: str) -> str:
    names = {" ": "a space", "\n": "a line break", "\r": "a carriage return", "\t": "a tab"}
    if ch in names:
        return names[ch]
    if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
        return f"an invisible control character (U+{ord(ch):04X})"
    if not ch.isascii():
        return f"the non-ASCII character {ch!r}"
    return f"the character {ch!r}"


def _require_str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidField(field, f"must be text, not {type(value).__name__}")
    return value


def domain_name(value: str, field: str = "domain") -> str:
    """A lower-cased host name such as ``shop.example.com``.

    Letters, digits, dots and hyphens only; labels of 1 to 63 characters that do
    not start or end with a hyphen; at least two labels; a top-level domain of two
    or more letters; 253 characters at most. Surrounding blanks are removed.
    """
    text = _require_str(value, field).strip().lower()
    if not text:
        raise InvalidField(field, "is empty; a domain name such as example.com is required")
    if len(text) > _MAX_DOMAIN:
        raise InvalidField(field, f"is {len(text)} characters long; a domain name has at most 253")
    bad = _first_bad_char(text, _DOMAIN_CHARS)
    if bad is not None:
        raise InvalidField(
            field,
            f"{_show(text)} contains {_describe_char(bad)}; a domain name may only contain "
            "letters, digits, dots and hyphens",
        )
    labels = text.split(".")
    if len(labels) < 2:
        raise InvalidField(field, f"{_show(text)} needs a dot and a top-level domain, e.g. example.com")
    for label in labels:
        if not label:
            raise InvalidField(field, f"{_show(text)} has an empty part (two dots in a row, or a dot at an end)")
        if len(label) > 63:
            raise InvalidField(field, f"{_show(text)} has a part longer than 63 characters")
        if not _DOMAIN_LABEL.fullmatch(label):
            raise InvalidField(field, f"{_show(text)} has a part that starts or ends with a hyphen")
    if not _TLD.fullmatch(labels[-1]):
        raise InvalidField(field, f"{_show(text)} must end in a top-level domain of two or more letters, e.g. .com")
    return text


def php_version(value: str, field: str = "php_version") -> str:
    """A PHP version as the panel names it: ``major.minor``, e.g. ``8.2``."""
    text = _require_str(value, field).strip()
    if not _PHP_VERSION.fullmatch(text):
        raise InvalidField(field, f"{_show(text)} is not a PHP version; use the form 8.2")
    return text


def document_path(value: str, field: str = "path") -> str:
    """A document root relative to the account's home, e.g. ``public_html/shop``.

    Letters, digits, ``_ - . /`` only; no leading slash, no ``.`` or ``..`` part,
    no part starting with a hyphen (it would read as a command option); at most
    255 characters. A trailing slash is dropped.
    """
    text = _require_str(value, field)
    if not text:
        raise InvalidField(field, "is empty; give a folder such as public_html")
    if len(text) > _MAX_PATH:
        raise InvalidField(field, f"is {len(text)} characters long; at most 255 are allowed")
    if text.startswith("/"):
        raise InvalidField(field, f"{_show(text)} must be relative to the account's home (no leading /)")
    bad = _first_bad_char(text, _PATH_CHARS)
    if bad is not None:
        raise InvalidField(
            field,
            f"{_show(text)} contains {_describe_char(bad)}; only letters, digits, '_', '-', '.' and '/' are allowed",
        )
    text = text.rstrip("/")
    for part in text.split("/"):
        if part in ("", ".", ".."):
            raise InvalidField(field, f"{_show(value)} contains an empty, '.' or '..' folder name")
        if part.startswith("-"):
            raise InvalidField(field, f"{_show(value)} has a folder name starting with '-'")
    return text


def account_username(value: str, field: str = "username") -> str:
    """A panel account (Linux user) name: a lower-case letter, then ``[a-z0-9_]``, 32 at most."""
    text = _require_str(value, field)
    if not text:
        raise InvalidField(field, "is empty; the panel account's user name is required")
    if len(text) > _MAX_USERNAME:
        raise InvalidField(field, f"is {len(text)} characters long; an account name has at most 32")
    if any("A" <= ch <= "Z" for ch in text):
        raise InvalidField(field, f"{_show(text)} contains capital letters; panel account names are lower-case")
    if not _USERNAME.fullmatch(text):
        bad = _first_bad_char(text, _USERNAME_CHARS)
        if bad is not None:
            raise InvalidField(
                field,
                f"{_show(text)} contains {_describe_char(bad)}; only lower-case letters, digits and '_' are allowed",
            )
        raise InvalidField(field, f"{_show(text)} must start with a letter")
    return text


def _db_identifier(value: object, account: str, field: str, what: str, limit: int) -> str:
    text = _require_str(value, field)
    if len(text) < 2:
        raise InvalidField(field, f"{_show(text)} is too short; a {what} needs at least 2 characters")
    if not _DB_IDENTIFIER.fullmatch(text):
        bad = _first_bad_char(text, _DB_IDENTIFIER_CHARS)
        assert bad is not None
        raise InvalidField(
            field,
            f"{_show(text)} contains {_describe_char(bad)}; a {what} may only contain letters, digits and '_'",
        )
    full = f"{account}_{text}"
    if len(full) > limit:
        raise InvalidField(
            field,
            f"{_show(text)} is too long: the panel prefixes the account name, giving "
            f"{len(full)} characters ({_show(full)}), and MySQL allows {limit}",
        )
    return text


def database_name(value: str, account: str, field: str = "name") -> str:
    """A database name without the panel's ``<account>_`` prefix; the full name fits MySQL's 64."""
    return _db_identifier(value, account, field, "database name", _MYSQL_MAX_DATABASE)


def database_user(value: str, account: str, field: str = "user") -> str:
    """A database user name without the ``<account>_`` prefix; the full name fits MySQL's 32."""
    return _db_identifier(value, account, field, "database user name", _MYSQL_MAX_USER)


def _check_secret_text(value: str, field: str) -> None:
    """What every password must be: one line of text that UTF-8 carries (never quoted back)."""
    if _has_control(value):
        raise InvalidField(field, "contains a line break, tab or other invisible control character")
    if not is_unicode_text(value):
        raise InvalidField(field, "is not valid Unicode text (it holds a lone surrogate)")


def account_password(value: str, field: str = "password") -> str:
    """A panel account's password, taken exactly as given: 1 to 256 characters that an HTTP
    header (how the panel takes it) carries unchanged, so no control characters and no blank
    at either end (header values lose those). Never quoted back."""
    if not isinstance(value, str):
        raise InvalidField(field, "must be text")
    if not value:
        raise InvalidField(field, "is empty; the panel account's password is required")
    if len(value) > _MAX_ACCOUNT_PASSWORD:
        raise InvalidField(field, f"is too long; at most {_MAX_ACCOUNT_PASSWORD} characters")
    _check_secret_text(value, field)
    if value != value.strip():
        raise InvalidField(
            field, "has a blank at either end, which the panel's password header cannot carry; it is not trimmed"
        )
    return value


def database_password(value: str, field: str = "password") -> str:
    """A database password: 8 to 128 characters, no control characters. Never quoted back."""
    if not isinstance(value, str):
        raise InvalidField(field, "must be text")
    if len(value) < _MIN_PASSWORD:
        raise InvalidField(field, f"is too short; a database password needs at least {_MIN_PASSWORD} characters")
    if len(value) > _MAX_PASSWORD:
        raise InvalidField(field, f"is too long; a database password has at most {_MAX_PASSWORD} characters")
    _check_secret_text(value, field)
    return value


_CRON_NAMES: dict[str, dict[str, int]] = {
    "month": {
        name: i + 1
        for i, name in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])
    },
    "weekday": {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}

CRON_FIELDS: dict[str, tuple[int, int]] = {
    "minute": (0, 59),
    "hour": (0, 23),
    "day": (1, 31),
    "month": (1, 12),
    "weekday": (0, 7),
}


def _cron_value(token: str, which: str, field: str, whole: str) -> int:
    low, high = CRON_FIELDS[which]
    names = _CRON_NAMES.get(which, {})
    if token.lower() in names:
        return names[token.lower()]
    if not _NUMBER.fullmatch(token):
        hint = {"month": " or a name like jan", "weekday": " or a name like mon"}.get(which, "")
        raise InvalidField(field, f"{_show(whole)}: {_show(token)} is not a number{hint}")
    number = int(token)
    if not low <= number <= high:
        raise InvalidField(field, f"{_show(whole)}: {number} is outside {low}-{high} for the {which}")
    return number


def cron_field(value: str, which: str, field: str | None = None) -> str:
    """One of the five time fields of a crontab line, in standard cron syntax.

    Accepted: ``*``, a number, a range ``a-b``, a list ``a,b,c`` of those, and
    steps ``*/n`` or ``a-b/n``; month and weekday names (``jan``, ``mon``) too.
    Numbers must lie in the field's range (minute 0-59, hour 0-23, day 1-31,
    month 1-12, weekday 0-7).
    """
    if which not in CRON_FIELDS:
        raise ValueError(f"unknown cron field kind {which!r}; expected one of {sorted(CRON_FIELDS)}")
    name = field if field is not None else which
    text = _require_str(value, name)
    if not text:
        raise InvalidField(name, "is empty; use * for 'every'")
    bad = _first_bad_char(text, _CRON_CHARS)
    if bad is not None:
        raise InvalidField(
            name,
            f"{_show(text)} contains {_describe_char(bad)}; a cron {which} may only contain "
            "digits, names, '*', ',', '-' and '/'",
        )
    high = CRON_FIELDS[which][1]
    for item in text.split(","):
        if not item:
            raise InvalidField(name, f"{_show(text)} has an empty item in its list")
        base, slash, step = item.partition("/")
        if slash:
            if not _NUMBER.fullmatch(step) or not 1 <= int(step) <= high:
                raise InvalidField(name, f"{_show(text)}: the step after '/' must be a number from 1 to {high}")
            if base != "*" and "-" not in base:
                raise InvalidField(name, f"{_show(text)}: a step '/n' may only follow '*' or a range a-b")
        if base == "*":
            continue
        start, dash, end = base.partition("-")
        first = _cron_value(start, which, name, text)
        if dash:
            last = _cron_value(end, which, name, text)
            if first > last:
                raise InvalidField(name, f"{_show(text)}: the range {base} runs backwards")
    return text


def cron_command(value: str, field: str = "command") -> str:
    """The command of a crontab line: non-empty, at most 1024 characters, on one line."""
    text = _require_str(value, field)
    if _has_control(text):
        raise InvalidField(
            field,
            "contains a line break, tab or other invisible control character; a cron command must be a single line",
        )
    text = text.strip()
    if not text:
        raise InvalidField(field, "is empty; the command to run is required")
    if len(text) > _MAX_COMMAND:
        raise InvalidField(field, f"is {len(text)} characters long; at most {_MAX_COMMAND} are allowed")
    return text


def callback_url(value: str, field: str = "callback_url") -> str:
    """An absolute http(s) URL with a host, on one line, that the bridge can store and call.

    Spaces and control characters are refused: PostgreSQL cannot store a NUL, and URL
    parsers drop or keep the others differently, so the URL checked against the allowed
    origins would not be the one called.
    """
    text = _require_str(value, field)
    if not text.startswith(("https://", "http://")):
        raise InvalidField(field, "must be an http(s) URL")
    bad = next((ch for ch in text if ch.isspace() or unicodedata.category(ch) in _FORBIDDEN_CATEGORIES), None)
    if bad is not None:
        raise InvalidField(field, f"contains {_describe_char(bad)}; a URL may not contain spaces or control characters")
    try:
        parts = urlsplit(text)
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise InvalidField(field, f"{_show(text)} is not a valid URL (check the host and the port)") from None
    if not host:
        raise InvalidField(field, f"{_show(text)} has no host name")
    return text


def is_small_whole_number(value: str, max_digits: int) -> bool:
    """ASCII digits only, at most ``max_digits`` of them.

    ``str.isdigit`` also accepts characters such as "²" that ``int()`` refuses, and
    ``int()`` refuses strings of thousands of digits: both would surface as a 500.
    """
    return 0 < len(value) <= max_digits and value.isascii() and value.isdigit()
