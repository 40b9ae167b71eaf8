"""One small error hierarchy, shared by the Python API, the CLI and the HTTP server.

Each class carries the HTTP status it maps to, so the server needs no table of its own and the
CLI can print the message (never a stack trace) and exit non-zero.
"""

from __future__ import annotations


class UnimirError(Exception):
    """Base class of every error unimir raises on purpose."""

    http_status = 500


class InvalidInputError(UnimirError, ValueError):
    """The caller asked for something malformed: empty query, unknown mode, bad k, corrupt image."""

    http_status = 400


class DataError(InvalidInputError):
    """A data file is malformed. The message names the file, the line and the field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            if field is not None:
                where += f" (field {field!r})"
            where += ": "
        super().__init__(where + message)
        self.reason, self.path, self.line, self.field = message, path, line, field


class NotFoundError(UnimirError, LookupError):
    """An id, file or index that does not exist."""

    http_status = 404


class PayloadTooLargeError(InvalidInputError):
    """An upload over the configured size limit."""

    http_status = 413


class IndexFormatError(UnimirError):
    """An index directory that is incomplete, of another format version, or inconsistent with its manifest."""

    http_status = 500


class UnimirWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""
