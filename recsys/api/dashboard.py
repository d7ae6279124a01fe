"""The operator's page: `GET /dashboard` (admin key), server-rendered HTML, no front-end build.

One page shows what `recsys status` checks, the traffic this server saw (latency, error and
fallback rates from its own metrics), the model registry with its promotion history, the
job runs with their progress and the latest replay report with its plot. A rollback is two
steps: `GET /dashboard/rollback?kind=K` says what would happen and carries a token bound to
the version promoted now; `POST` with that token does it, and is refused if the promoted
version changed meanwhile (or if the form did not come from this server: the token is an
HMAC under a per-process secret, which a cross-site form cannot know).

Browsers send the admin key as HTTP Basic auth (any user name, the key as the password);
scripts may use `Authorization: Bearer KEY` as on every other endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from recsys.api.metrics import LATENCY_BUCKETS
from recsys.errors import UserError

if TYPE_CHECKING:
    from recsys.api.app import Service

REALM = 'Basic realm="recsys dashboard", charset="UTF-8"'
KINDS = ("ranker", "index", "cf", "embeddings")
FORM_LIMIT = 4096  # bytes of a rollback form; it holds three short fields


@dataclass(frozen=True)
class ReplayShown:
    path: Path
    html: str
    has_plot: bool
    written_at: datetime


def add_dashboard(app: FastAPI, service: Service) -> None:
    from jinja2 import Environment, PackageLoader, select_autoescape

    pages = Environment(loader=PackageLoader("recsys.api", "templates"),
                        autoescape=select_autoescape(["html"]))  # fmt: skip
    pages.globals.update(when=_when, seconds=_seconds, metrics=_metrics_text)
    secret = secrets.token_bytes(32)
    admin = _admin_check(service)

    def token(kind: str, version: str) -> str:
        return hmac.new(secret, f"{kind}\0{version}".encode(), hashlib.sha256).hexdigest()

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False,
             dependencies=[Depends(admin)])  # fmt: skip
    def dashboard(rolled_back: str | None = None) -> HTMLResponse:
        view = gather(service)
        if rolled_back in KINDS:
            promoted = view["promoted"].get(rolled_back)
            view["notice"] = f"{rolled_back} rolled back: promoted now {promoted or 'none'}"
        return HTMLResponse(pages.get_template("dashboard.html").render(**view))

    @app.get("/dashboard/replay.png", include_in_schema=False, dependencies=[Depends(admin)])
    def replay_plot() -> FileResponse:
        shown = latest_replay(service.settings)
        if shown is None or not shown.has_plot:
            raise HTTPException(404, "no replay plot yet: run `recsys replay` or a loop turn")
        return FileResponse(shown.path.parent / "replay.png", media_type="image/png")

    @app.get("/dashboard/rollback", response_class=HTMLResponse, include_in_schema=False,
             dependencies=[Depends(admin)])  # fmt: skip
    def confirm_rollback(kind: str = "ranker") -> HTMLResponse:
        current, target, problem = _rollback_plan(service, kind)
        page = pages.get_template("rollback.html").render(
            kind=kind, current=current, target=target, problem=problem,
            token=token(kind, current.version) if current else "",
        )  # fmt: skip
        return HTMLResponse(page, status_code=409 if problem else 200)

    @app.post("/dashboard/rollback", include_in_schema=False, dependencies=[Depends(admin)])
    async def rollback(request: Request) -> RedirectResponse:
        form = await _form(request)
        kind, expected = form.get("kind", ""), form.get("expected", "")
        if not hmac.compare_digest(form.get("token", ""), token(kind, expected)):
            raise HTTPException(403, "the rollback form is stale or not from this server: "
                                     "open /dashboard/rollback again")  # fmt: skip
        current, _, problem = _rollback_plan(service, kind)
        now = current.version if current else "none"
        if now != expected:
            raise HTTPException(409, f"the promoted {kind} is now {now}, not {expected}: "
                                "review /dashboard/rollback again")  # fmt: skip
        if problem:
            raise HTTPException(409, problem)
        await asyncio.to_thread(_roll_back, service, kind)
        return RedirectResponse(f"/dashboard?rolled_back={kind}", status_code=303)


def gather(service: Service) -> dict[str, Any]:
    """Everything the page shows, read now (the broker check waits up to 2 s for workers)."""
    from recsys.db.registry import list_models, model_history, rollback_target
    from recsys.db.runs import recent_job_runs
    from recsys.job_runs import lost_after_s, shown_status
    from recsys.status import system_status

    settings, engine = service.settings, service.engine
    checks = system_status(settings, engine)
    db_ok = checks[0].ok
    models = list_models(engine=engine) if db_ok else []
    lost_after = lost_after_s(settings.task_heartbeat_s)
    jobs = [
        {**asdict(r), "status": shown_status(r, after_s=lost_after),
         "shard": f"{r.shard_index + 1}/{r.shard_count}" if r.shard_count else ""}
        for r in (recent_job_runs(20, engine=engine) if db_ok else [])
    ]  # fmt: skip
    promoted = {m.kind: m.version for m in models if m.status == "promoted"}
    rollbacks = {k: t for k in promoted if (t := rollback_target(k, engine=engine))}
    slot = service.ranker.slot
    return {
        "ok": all(c.ok for c in checks),
        "checks": checks,
        "served": {"model": slot.ranker.model_id, "version": slot.version, "spec": settings.model},
        "traffic": service.metrics.traffic(),
        "models": models,
        "promoted": promoted,
        "rollbacks": rollbacks,
        "history": model_history(limit=30, engine=engine) if db_ok else [],
        "jobs": jobs,
        "replay": latest_replay(settings),
        "now": _when(datetime.now(UTC)),
        "notice": None,
    }


def latest_replay(settings: Any) -> ReplayShown | None:
    """The newest replay report: `recsys replay`'s default folder or a loop turn's."""
    from markdown_it import MarkdownIt

    found = [settings.var_dir / "replay" / "report.md",
             *(settings.resolved_artifact_dir / "replay").glob("*/report.md")]  # fmt: skip
    reports = [p for p in found if p.is_file()]
    if not reports:
        return None
    path = max(reports, key=lambda p: p.stat().st_mtime)
    text = path.read_text(errors="replace").replace("![replay](replay.png)", "")
    html = MarkdownIt("js-default").render(text)  # raw HTML in the report is escaped
    written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return ReplayShown(path, html, (path.parent / "replay.png").is_file(), written)


def _rollback_plan(service: Service, kind: str) -> tuple[Any, Any, str | None]:
    from recsys.db.registry import current_model, rollback_target

    if kind not in KINDS:
        return None, None, f"unknown model kind {kind!r}; one of {', '.join(KINDS)}"
    current = current_model(kind, engine=service.engine)
    if current is None:
        return None, None, f"no {kind} version is promoted; nothing to roll back"
    target = rollback_target(kind, engine=service.engine)
    if target is None:
        return current, None, f"no earlier promoted {kind} to roll back to from {current.version}"
    return current, target, None


def _roll_back(service: Service, kind: str) -> None:
    from recsys.db.registry import rollback_model

    try:
        rollback_model(kind, engine=service.engine)
    except UserError as exc:  # someone else rolled back between the check and now
        raise HTTPException(409, str(exc)) from exc
    if kind == "ranker":
        service.ranker.reload_if_changed()  # this server now; the others at their next poll


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > FORM_LIMIT:
        raise HTTPException(413, f"rollback form over {FORM_LIMIT} bytes")
    fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
    return {k: v[0] for k, v in fields.items()}


def _admin_check(service: Service):  # type: ignore[no-untyped-def]
    """A dependency: the admin scope from Basic (a browser's prompt) or Bearer credentials."""
    from recsys.auth import key_has_scope

    def check(request: Request) -> None:
        if not service.settings.api_keys_required():
            return
        key = _presented_key(request.headers.get("authorization", ""))
        if not key or not key_has_scope(key, "admin", engine=service.engine):
            raise HTTPException(401, "the dashboard needs an API key with the admin scope "
                                "(`recsys apikey create NAME --scope admin`), as the password",
                                headers={"WWW-Authenticate": REALM})  # fmt: skip

    return check


def _presented_key(header: str) -> str:
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return ""


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "—"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isinf(value):  # above the largest bucket
        return f"> {LATENCY_BUCKETS[-1]:g} s"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:g} s"


def _metrics_text(metrics: dict[str, Any], limit: int = 6) -> str:
    """The registry metrics worth a glance (the gate's first), rounded, at most `limit`."""
    first = [k for k in metrics if "gate" in k or "mrr" in k]
    keys = [*first, *(k for k in metrics if k not in first)][:limit]
    return ", ".join(f"{k}={_short(metrics[k])}" for k in keys)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "…"
