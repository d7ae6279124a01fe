"""LM backends: one interface (base.LMBackend), implementations side by side."""

from ranking.backends.base import Generation, LMBackend

__all__ = ["Generation", "LMBackend"]
