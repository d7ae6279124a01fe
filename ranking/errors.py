"""Errors the ranking library raises for bad input (never for its own bugs)."""


class RequestError(ValueError):
    """A rank request is invalid; the message says what is wrong and how to fix it."""


class ModelLoadError(RuntimeError):
    """A language model could not be loaded; the message names the path and the fix."""
