"""API key rows (recsys.auth makes and hashes the keys; only hashes reach the database)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from recsys.db.models import ApiKey, utcnow
from recsys.errors import UserError


@dataclass(frozen=True)
class ApiKeyRecord:
    name: str
    scopes: list[str]
    revoked: bool


def add_api_key(name: str, key_hash: str, scopes: list[str], *, engine: Engine) -> None:
    """Store a key's hash under a new `name` (a name in use is refused)."""
    with Session(engine) as session, session.begin():
        if session.scalar(sa.select(ApiKey).where(ApiKey.name == name)) is not None:
            raise UserError(f"an API key named {name!r} exists; revoke it or pick another name")
        session.add(ApiKey(name=name, key_hash=key_hash, scopes=list(scopes)))


def revoke_api_key(name: str, *, engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        row = session.scalar(sa.select(ApiKey).where(ApiKey.name == name))
        if row is None:
            raise UserError(f"no API key named {name!r}; see `recsys apikey list`")
        row.revoked_at = utcnow()


def api_keys(*, engine: Engine) -> list[ApiKeyRecord]:
    """Every key, by name."""
    with Session(engine) as session:
        rows = session.scalars(sa.select(ApiKey).order_by(ApiKey.name)).all()
        return [ApiKeyRecord(r.name, list(r.scopes), r.revoked_at is not None) for r in rows]


def active_key_scopes(key_hash: str, *, engine: Engine) -> list[str] | None:
    """The scopes of the unrevoked key with this hash; None when there is none."""
    query = sa.select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    with Session(engine) as session:
        row = session.scalar(query)
        return None if row is None else list(row.scopes)
