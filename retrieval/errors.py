"""Errors the retrieval library raises for bad input."""


class RetrievalError(ValueError):
    """Bad input to retrieval (unknown user, missing artifact version, ...); the message says the fix."""
