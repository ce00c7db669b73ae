"""Reading each call's success answer into the data the bridge uses.

One reader per call: it returns Succeeded with normalised data when the answer
has that call's success shape, or None when it does not (then the answer is
treated as broken). Real and documented wordings are both accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.domain.outcomes import Succeeded

__all__ = ["SUCCESS_READERS", "normalise_limit"]


def normalise_limit(value: Any) -> int | None:
    """A package limit as a number, or None for unlimited.

    The panel shows a package limit of 0 as unlimited (its own checks skip it), and
    may print words such as "Unlimited" or "∞"; anything that is not a positive
    number therefore means unlimited.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        return None
    return number if number > 0 else None


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    return 0


_LIMIT_KINDS = ("domain", "db", "email", "ftp")


def _account_info(answer: Any) -> Succeeded | None:
    if not isinstance(answer, dict) or "domain_limit" not in answer:
        return None
    data = dict(answer)
    data["limits"] = {
        kind: {
            "limit": normalise_limit(answer.get(f"{kind}_limit")),
            "used": _count(answer.get(f"{kind}_used")),
        }
        for kind in _LIMIT_KINDS
    }
    return Succeeded("Account information read.", data)


def _message_success(*fragments: str) -> Callable[[Any], Succeeded | None]:
    """A reader for calls that answer ``success: true`` and/or a known success text."""

    def read(answer: Any) -> Succeeded | None:
        if not isinstance(answer, dict):
            return None
        text = str(answer.get("message") or answer.get("success") or "")
        if answer.get("success") is True or any(f in text.lower() for f in fragments):
            return Succeeded(text)
        return None

    return read


def _add_domain(answer: Any) -> Succeeded | None:
    found = _message_success("added successfully")(answer)
    if found is None:
        return None
    raw_id = answer.get("domain_id")
    domain_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
    return Succeeded(found.message, {"domain_id": domain_id})


def _domain_list(answer: Any) -> Succeeded | None:
    if not isinstance(answer, list):
        return None
    domains = [
        {"id": item.get("id"), "domain": item.get("domain"), "path": item.get("path")}
        for item in answer
        if isinstance(item, dict)
    ]
    return Succeeded(f"{len(domains)} domain(s) listed.", {"domains": domains})


def _string_list(key: str, what: str) -> Callable[[Any], Succeeded | None]:
    def read(answer: Any) -> Succeeded | None:
        if not isinstance(answer, dict) or not isinstance(answer.get(key), list):
            return None
        items = [str(item) for item in answer[key] if item is not None]
        return Succeeded(f"{len(items)} {what} listed.", {key: items})

    return read


def _cronjob_list(answer: Any) -> Succeeded | None:
    if not isinstance(answer, dict) or "line_number" not in answer:
        return None
    return Succeeded("The cron line is present.", {"line_number": _count(answer["line_number"])})


SUCCESS_READERS: dict[str, Callable[[Any], Succeeded | None]] = {
    "account_info": _account_info,
    "add_domain": _add_domain,
    "domain_list": _domain_list,
    "domain_issue_ssl": _message_success("ssl issued successfully"),
    # real: "Database and user created successfully."; documented: "Database user created ..."
    "db_make": _message_success("created successfully"),
    "cronjob_add": _message_success("added successfully"),
    "cronjob_delete": _message_success("deleted successfully"),
    "database_list": _string_list("databases", "database(s)"),
    "database_userlist": _string_list("users", "database user(s)"),
    "cronjob_list": _cronjob_list,
}
