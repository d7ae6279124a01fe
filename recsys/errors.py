"""Errors for bad user input at the application level (CLI exit code 2, HTTP 4xx)."""


class UserError(ValueError):
    """Something the user gave is wrong; the message says what and how to fix it."""
