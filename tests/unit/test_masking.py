"""Masking by field name, and scrubbing known secret values out of free text."""

from __future__ import annotations

from bridge.domain.masking import MASK, mask, scrub


def test_secret_fields_are_masked_at_any_depth() -> None:
    value = {"account": {"username": "john", "password": "p4ss"}, "dbs": [{"dbpass": "x", "name": "wp"}]}
    assert mask(value) == {"account": {"username": "john", "password": MASK}, "dbs": [{"dbpass": MASK, "name": "wp"}]}


def test_a_secret_that_begins_with_another_is_scrubbed_whole() -> None:
    text = "Access denied for 'secret-long-value'"
    assert scrub(text, ["secret", "secret-long-value"]) == f"Access denied for '{MASK}'"


def test_scrub_walks_structures_and_can_skip_short_values() -> None:
    assert scrub({"m": ["a hunter2 b"]}, ["hunter2"]) == {"m": [f"a {MASK} b"]}
    assert scrub("guest logged in as guest", ["guest"], min_length=8) == "guest logged in as guest"
