"""`recsys status`: is everything the service needs up, and what is it serving? One check
per part, each with `ok` and a line a person can act on; `ok` overall only when all are."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from recsys.settings import Settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def hidden_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def database_check(settings: Settings, url: str | None = None) -> Check:
    from recsys.db.migrate import current_revision, head_revision

    url = url or settings.resolved_database_url
    try:
        current, head = current_revision(url), head_revision()
    except Exception as exc:  # unreachable, bad credentials, no such database
        return Check(
            "database",
            False,
            f"{hidden_url(url)}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            {"url": hidden_url(url)},
        )
    ok = current == head
    hint = "" if ok else " (run `recsys db upgrade`)"
    return Check(
        "database",
        ok,
        f"{hidden_url(url)} at migration {current}, code {head}{hint}",
        {"url": hidden_url(url), "revision": current, "head": head},
    )


def broker_check(settings: Settings, timeout_s: float = 2.0) -> Check:
    if settings.broker_url is None:
        return Check("broker", True, "none: jobs run in process (RECSYS_BROKER_URL unset)")
    from celery import Celery

    app = Celery("recsys-status", broker=settings.broker_url)
    app.conf.broker_connection_retry_on_startup = False
    url = hidden_url(settings.broker_url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
        replies = app.control.ping(timeout=timeout_s) or []
    except Exception as exc:
        return Check("broker", False, f"{url} unreachable: {type(exc).__name__}: {exc}"[:300])
    workers = sorted(name for reply in replies for name in reply)
    if not workers:
        return Check(
            "broker",
            False,
            f"{url} reachable, but no worker answered a ping "
            "(start one: celery -A jobs.celery_app worker)",
            {"workers": []},
        )
    return Check("broker", True, f"{url}: {len(workers)} worker(s) answering", {"workers": workers})


def models_check(settings: Settings, engine: Any) -> Check:
    from recsys.db.registry import current_model, list_models

    ranker = current_model("ranker", engine=engine)
    index = current_model("index", engine=engine) or next(
        iter(list_models("index", engine=engine)), None
    )
    data = {
        "serving_spec": settings.model,
        "promoted_ranker": ranker.version if ranker else None,
        "index": index.version if index else None,
    }
    if index is None:
        return Check("models", False, "no retrieval index registered (run `recsys batch`)", data)
    promoted = ranker.version if ranker else "none promoted"
    return Check(
        "models",
        True,
        f"serving {settings.model!r}; promoted ranker {promoted}; index {index.version}",
        data,
    )


def activity_check(settings: Settings, engine: Any, jobs: int = 5) -> Check:
    from recsys.db.events import traffic_since
    from recsys.db.models import utcnow
    from recsys.db.runs import recent_job_runs
    from recsys.job_runs import lost_after_s, shown_status

    lost_after = lost_after_s(settings.task_heartbeat_s)

    shown, acted = traffic_since(utcnow() - timedelta(hours=24), engine=engine)
    runs = [
        {
            "id": r.id,
            "kind": r.kind,
            "status": shown_status(r, after_s=lost_after),
            "progress": round(r.progress, 3),
            "error": r.error,
        }
        for r in recent_job_runs(jobs, engine=engine)
    ]
    lost = [r["id"] for r in runs if r["status"] == "lost"]
    detail = f"last 24 h: {shown} impressions, {acted} events; last jobs: " + (
        ", ".join(f"{r['id']} {r['kind']} {r['status']}" for r in runs) or "none"
    )
    return Check(
        "activity",
        not lost,
        detail + (f"; LOST: {lost}" if lost else ""),
        {"impressions_24h": shown, "events_24h": acted, "jobs": runs},
    )


def system_status(settings: Settings, engine: Any = None) -> list[Check]:
    """Every check; the database-backed ones only when the database answers. `engine`: the
    caller's (the API's), else the settings' database."""
    from recsys.db.engine import get_engine

    url = engine.url.render_as_string(hide_password=False) if engine is not None else None
    checks = [database_check(settings, url), broker_check(settings)]
    if checks[0].ok:
        engine = engine or get_engine(settings.resolved_database_url)
        checks += [models_check(settings, engine), activity_check(settings, engine)]
    return checks


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}
