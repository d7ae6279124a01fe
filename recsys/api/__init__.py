"""The real-time API: `create_app` (recsys.api.app); the contract is recsys.api.schemas."""

from recsys.api.app import create_app

__all__ = ["create_app"]
