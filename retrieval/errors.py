"""Errors the retrieval library raises for bad input."""


class RetrievalError(ValueError):
    """Bad input to retrieval (unknown user, missing artifact version, ...).

    The message says what is wrong and how to fix it."""
