"""API keys: only a SHA-256 of each key is stored; a key is shown once, when created."""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from recsys.db.engine import get_engine
from recsys.db.models import ApiKey, utcnow
from recsys.errors import UserError


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(
    name: str, scopes: list[str] | None = None, *, engine: Engine | None = None
) -> str:
    """Store a new key under `name` and return the key itself (it cannot be shown again)."""
    key = "rk_" + secrets.token_urlsafe(32)
    with Session(engine or get_engine()) as session, session.begin():
        if session.scalar(sa.select(ApiKey).where(ApiKey.name == name)) is not None:
            raise UserError(f"an API key named {name!r} exists; revoke it or pick another name")
        session.add(ApiKey(name=name, key_hash=hash_key(key), scopes=list(scopes or ["rank"])))
    return key


def revoke_api_key(name: str, *, engine: Engine | None = None) -> None:
    with Session(engine or get_engine()) as session, session.begin():
        row = session.scalar(sa.select(ApiKey).where(ApiKey.name == name))
        if row is None:
            raise UserError(f"no API key named {name!r}; see `recsys apikey list`")
        row.revoked_at = utcnow()


def list_api_keys(*, engine: Engine | None = None) -> list[tuple[str, list[str], bool]]:
    """(name, scopes, revoked) for every key."""
    with Session(engine or get_engine()) as session:
        rows = session.scalars(sa.select(ApiKey).order_by(ApiKey.name)).all()
        return [(r.name, list(r.scopes), r.revoked_at is not None) for r in rows]


def key_has_scope(key: str, scope: str, *, engine: Engine | None = None) -> bool:
    """True when `key` exists, is not revoked and carries `scope`."""
    query = sa.select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    with Session(engine or get_engine()) as session:
        row = session.scalar(query)
        return row is not None and scope in row.scopes
