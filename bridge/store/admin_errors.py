"""Why an admin operation was refused. The API maps each to its HTTP status.

::

    AdminError                 the operation was refused; nothing changed
    ├── NotFound      (404)    no such job, compensation record or callback
    ├── Conflict      (409)    the thing exists but is in the wrong state for it
    └── InvalidInput  (422)    a parameter or body field is wrong; ``field`` names it
"""

from __future__ import annotations


class AdminError(Exception):
    """An admin operation refused; ``str()`` is a message for the admin."""

    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(AdminError):
    status = 404


class Conflict(AdminError):
    status = 409


class InvalidInput(AdminError):
    status = 422
