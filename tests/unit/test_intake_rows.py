"""The rows an accepted event writes: every secret encrypted, by field name, wherever it sits."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import FERNET_KEY
from orders import ACCOUNT_PASSWORD, DB_PASSWORD, service_create
from pydantic import ValidationError

from bridge.domain.events import parse_event
from bridge.store.crypto import ENCRYPTED_PREFIX, SecretBox
from bridge.store.intake import IntakeRows

BOX = SecretBox([FERNET_KEY])


def encrypted_paths(value: Any, path: str = "") -> set[str]:
    if isinstance(value, dict):
        return {p for key, item in value.items() for p in encrypted_paths(item, f"{path}.{key}")}
    if isinstance(value, list):
        return {p for n, item in enumerate(value) for p in encrypted_paths(item, f"{path}.{n}")}
    return {path} if isinstance(value, str) and value.startswith(ENCRYPTED_PREFIX) else set()


def test_secret_fields_are_encrypted_by_name_wherever_they_sit() -> None:
    value = {
        "account": {"username": "john", "password": "pw1", "API-Key": "k"},
        "databases": [{"name": "wp", "password": "pw2", "nested": [{"db_password": "pw3", "count": 3}]}],
        "token": 7,  # not a string: left as it is, as the box does
        "note": "password",
    }
    ours = BOX.encrypt_fields(value)
    assert encrypted_paths(ours) == {
        ".account.password",
        ".account.API-Key",
        ".databases.0.password",
        ".databases.0.nested.0.db_password",
    }
    assert BOX.decrypt_fields(ours) == value


def test_no_row_holds_a_password_in_clear_and_each_decrypts_back() -> None:
    event = parse_event(service_create())
    rows = IntakeRows.build(BOX, "msg_1", event)
    written = repr((rows.event, rows.job, rows.steps))
    assert ACCOUNT_PASSWORD not in written and DB_PASSWORD not in written
    assert BOX.decrypt_fields(rows.event["payload"]) == event.model_dump(mode="json")
    assert BOX.decrypt(rows.job["account_password"]) == ACCOUNT_PASSWORD
    database_step = next(step for step in rows.steps if step["kind"] == "create_database")
    assert BOX.decrypt(database_step["params"]["password"]) == DB_PASSWORD


def test_the_copies_of_one_secret_in_the_rows_share_one_encryption() -> None:
    rows = IntakeRows.build(BOX, "msg_1", parse_event(service_create()))
    database_step = next(step for step in rows.steps if step["kind"] == "create_database")
    assert database_step["params"]["password"] == rows.event["payload"]["data"]["databases"][0]["password"]
    assert rows.job["account_password"] == rows.event["payload"]["data"]["account"]["password"]
    # ... while different secrets, and the same secret in another event, get tokens of their own.
    assert rows.job["account_password"] != database_step["params"]["password"]
    same = service_create(password=DB_PASSWORD)  # the account's password is the database's
    equal = IntakeRows.build(BOX, "msg_3", parse_event(same))
    assert equal.job["account_password"] != equal.event["payload"]["data"]["databases"][0]["password"]
    again = IntakeRows.build(BOX, "msg_2", parse_event(service_create()))
    assert again.job["account_password"] != rows.job["account_password"]


def test_passwords_are_stored_exactly_as_sent_or_refused() -> None:
    # Trimmed, a password would no longer be the one the customer and the billing platform hold.
    order = service_create(password="inner blanks stay")
    order["data"]["databases"][0]["password"] = "  blanks at both ends  "
    rows = IntakeRows.build(BOX, "msg_1", parse_event(order))
    database_step = next(step for step in rows.steps if step["kind"] == "create_database")
    assert BOX.decrypt(database_step["params"]["password"]) == "  blanks at both ends  "
    assert BOX.decrypt(rows.job["account_password"]) == "inner blanks stay"
    # The account's goes in a header, which would lose blanks at its ends: refused, not trimmed.
    with pytest.raises(ValidationError) as refused:
        parse_event(service_create(password=" blank-first"))
    assert [e["loc"] for e in refused.value.errors()] == [("data", "account", "password")]
