"""The real-time API (FastAPI). `recsys serve` runs it with uvicorn; docs/serving.md.

    POST /v1/recommend   a user's feed: history from the database, candidates from the
                         registered retrieval index, IRanker within the deadline
    POST /v1/rank        rank a list the client has (texts, or catalogue ids)
    POST /v1/events      interactions, idempotent by event id
    POST /v1/admin/reload  serve the newly promoted ranker now (admin key)
    GET  /dashboard      the operator's page (admin key; recsys.api.dashboard)
    GET  /v1/model  /healthz  /readyz  /metrics

Every body is a typed model (recsys.api.schemas), so `/openapi.json` is the contract.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from ranking.engine import Ranker
from ranking.errors import RequestError
from recsys.api import routes
from recsys.api.dashboard import add_dashboard
from recsys.api.impressions import ImpressionLogger
from recsys.api.metrics import ApiMetrics
from recsys.api.recommend import IndexHolder
from recsys.api.schemas import ErrorBody, build
from recsys.api.serving import RankerHolder, RankerLoader, VersionProbe
from recsys.batcher import MicroBatcher
from recsys.logs import install_salt, user_hash
from recsys.settings import Settings, get_settings

ERRORS = {s: {"model": ErrorBody} for s in (400, 401, 404, 409, 413, 422, 503)}
access_log = logging.getLogger("recsys.access")
CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # an X-Request-ID we log


class Service:
    """What the routes share: settings, database, ranker holder, index, logger, metrics."""

    def __init__(self, settings: Settings, engine: Engine, metrics: ApiMetrics) -> None:
        self.settings, self.engine, self.metrics = settings, engine, metrics
        self.ranker: RankerHolder
        self.index = IndexHolder(engine, settings.embeddings)
        self.impressions: ImpressionLogger

    def batcher_for(self, ranker: Ranker) -> MicroBatcher:
        s = self.settings
        return MicroBatcher(ranker, max_batch=s.batch_size, max_wait_ms=s.batch_wait_ms,
                            on_batch=self.metrics.batch_size.observe)  # fmt: skip


def create_app(
    *,
    ranker: Ranker | None = None,
    settings: Settings | None = None,
    engine: Engine | None = None,
    version: str | None = None,
    probe: VersionProbe | None = None,
    loader: RankerLoader | None = None,
) -> FastAPI:
    """Build the app. Without `ranker`, the settings' model is loaded at start-up and a
    newly promoted version replaces it (hot reload); tests inject `ranker`, `probe` and
    `loader`."""
    from recsys import runtime

    settings = settings or get_settings()
    engine = engine or runtime.database_engine(settings)
    metrics = ApiMetrics()
    service = Service(settings, engine, metrics)
    if ranker is None:
        resolved = runtime.resolve(settings)
        version = resolved.version
        probe = probe or (lambda: runtime.resolve(settings).version)
        loader = loader or (lambda: warm_up(runtime.load_ranker(settings), settings.task))

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        from recsys.db.events import log_impressions

        first = ranker or runtime.load_ranker(settings)
        if ranker is None:
            first = warm_up(first, settings.task)
        service.ranker = RankerHolder(
            first, version, make_batcher=service.batcher_for, probe=probe, loader=loader,
            on_swap=lambda slot: (metrics.serving(slot.ranker.model_id, slot.version),
                                  metrics.reloads.inc()),
        )  # fmt: skip
        service.ranker.start_polling(settings.reload_poll_s)
        service.impressions = ImpressionLogger(
            lambda records: log_impressions(records, engine=engine),
            capacity=settings.impression_buffer,
            on_drop=metrics.impressions_dropped.inc, on_pending=metrics.impressions_pending.set,
        )  # fmt: skip
        app.state.service = service
        yield
        service.ranker.close()  # drains in-flight requests
        service.impressions.close()

    app = FastAPI(title="recsys IRanker API", version="2", lifespan=lifespan)
    _add_error_handlers(app)
    _add_middleware(app, settings, metrics)
    scopes = _key_checks(settings, engine)
    schemas = build(settings)
    routes.add_probes(app, service)
    routes.add_ranking(app, service, schemas, scopes["rank"], ERRORS)
    routes.add_events(app, service, schemas, scopes["rank"], ERRORS)
    routes.add_admin(app, service, scopes["admin"], ERRORS)
    add_dashboard(app, service)
    return app


def warm_up(ranker: Ranker, task: str) -> Ranker:
    """One small ranking before the first client: kernels compile and caches fill now,
    and the cost estimates that steer deadlines start from steady-state calls."""
    from ranking.modes.base import CostModel
    from ranking.types import Candidate, RankRequest

    cands = tuple(Candidate(id=str(i), text=f"item {i}") for i in range(3))
    # a model that cannot rank says so on the first real request
    with contextlib.suppress(Exception):
        ranker.rank(RankRequest(task=task, candidates=cands, history=("item 9",)))
    ranker.costs = CostModel()
    return ranker


def _key_checks(settings: Settings, engine: Engine) -> dict[str, Any]:
    """A dependency per scope: `Authorization: Bearer KEY` with that scope (recsys.auth)."""
    from recsys.auth import key_has_scope

    bearer = HTTPBearer(auto_error=False, description="an API key (`recsys apikey create`)")
    required = settings.api_keys_required()

    def needs(scope: str):  # type: ignore[no-untyped-def]
        def check(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
            if not required:
                return
            key = cred.credentials.strip() if cred else ""
            if not key or not key_has_scope(key, scope, engine=engine):
                raise HTTPException(
                    401, f"missing or invalid API key (scope {scope!r}): send "
                    "`Authorization: Bearer KEY` (`recsys apikey create`)",
                )  # fmt: skip

        return check

    return {"rank": needs("rank"), "admin": needs("admin")}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        text = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in errors[:10]
        )
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg"))} for e in errors[:50]]
        return JSONResponse(status_code=422, content={"error": text, "detail": detail})

    @app.exception_handler(RequestError)
    async def contradictory(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"error": str(exc), "detail": None})

    @app.exception_handler(StarletteHTTPException)  # FastAPI's and Starlette's own (400, 405)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code,
                            content={"error": str(exc.detail), "detail": None},
                            headers=getattr(exc, "headers", None))  # fmt: skip


def _add_middleware(app: FastAPI, settings: Settings, metrics: ApiMetrics) -> None:
    limit = settings.limit_body_bytes
    paths: set[str] = set()  # the app's route paths, filled when the first request arrives
    salt: list[bytes] = []  # the user hash's key, read when the first user is logged

    @app.middleware("http")
    async def measure_and_limit(request: Request, call_next):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        request.state.request_id = uuid.uuid4().hex  # routes answer with it (request_id)
        status = 500  # unless an answer comes back: the app raised
        try:
            if not paths:
                paths.update(getattr(r, "path", "") for r in app.routes)
            path = request.scope.get("path", "")
            route = path if path in paths else "other"  # bounded label values
            declared = request.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                response = _too_large(limit)
            else:
                body = await request.body()  # also bounds a body sent without a length
                response = _too_large(limit) if len(body) > limit else await call_next(request)
            status = response.status_code
            response.headers["X-Request-ID"] = request.state.request_id
            metrics.requests.labels(endpoint=route, status=str(response.status_code)).inc()
            metrics.latency.labels(endpoint=route, status=str(response.status_code)).observe(
                time.perf_counter() - start
            )
            return response
        finally:
            _log_access(request, status, time.perf_counter() - start, salt, settings)


def _log_access(
    request: Request, status: int, seconds: float, salt: list[bytes], settings: Settings
) -> None:
    """One record per request on `recsys.access` (uvicorn's access log is off): its id,
    method, path, status, latency, the model version that ranked it and the user's hash,
    never the user id or an item text."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    state = request.state
    # set by the ranking routes (None: retrieval's order); else the version served now
    version = state.model_version if hasattr(state, "model_version") else _served_version(request)
    fields: dict[str, Any] = {
        "request_id": state.request_id, "method": request.method,
        "path": request.scope.get("path", "")[:200], "status": status,
        "latency_ms": round(seconds * 1000, 1), "model_version": version,
    }  # fmt: skip
    user = getattr(state, "user_id", None)
    if user is not None:
        if not salt:  # the first user this process logs
            salt.append(install_salt(settings.var_dir))
        fields["user_hash"] = user_hash(user, salt[0])
    client = request.headers.get("x-request-id")
    if client and CLIENT_ID.fullmatch(client):  # the caller's own id, beside ours
        fields["client_request_id"] = client
    named = ("request_id", "model_version", "user_hash", "client_request_id")
    words = [f"{k}={fields[k]}" for k in named if fields.get(k) is not None]
    access_log.info("%s %s %d %.1f ms %s", fields["method"], fields["path"], status,
                    fields["latency_ms"], " ".join(words), extra=fields)  # fmt: skip


def _served_version(request: Request) -> str | None:
    """The version being served now (requests that no ranker answered: probes, events)."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        return None
    slot = service.ranker.slot
    return slot.version or slot.ranker.model_id


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        status_code=413,
        content={"error": f"request body over {limit} bytes (RECSYS_LIMIT_BODY_BYTES); "
                          "send fewer or shorter items", "detail": None},
    )  # fmt: skip
