"""API keys: only a SHA-256 of each key is stored; a key is shown once, when created.
(Revoking and listing keys are row operations: recsys.db.apikeys.)"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy.engine import Engine

from recsys.db import apikeys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(name: str, scopes: list[str] | None = None, *, engine: Engine) -> str:
    """Store a new key under `name` and return the key itself (it cannot be shown again)."""
    key = "rk_" + secrets.token_urlsafe(32)
    apikeys.add_api_key(name, hash_key(key), list(scopes or ["rank"]), engine=engine)
    return key


def key_has_scope(key: str, scope: str, *, engine: Engine) -> bool:
    """True when `key` exists, is not revoked and carries `scope`."""
    scopes = apikeys.active_key_scopes(hash_key(key), engine=engine)
    return scopes is not None and scope in scopes
