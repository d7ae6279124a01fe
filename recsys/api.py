"""The real-time ranking API (FastAPI). `recsys serve` runs it with uvicorn.

    POST /v1/rank   body: the public request JSON (as `recsys rank`), plus optional
                    "user_id" (log the impressions with their propensity) and "audit"
                    (keep prompts/responses in the answer); "fusion_alpha" sets the
                    request's score-fusion weight (docs/ranking.md). Answer: the RankResult JSON
                    with a "request_id".
    GET  /healthz   the process is up.   GET /readyz   the model is loaded.
    GET  /v1/model  which model serves, and micro-batching statistics.

Concurrent requests are micro-batched (recsys.batcher) so they share forward passes.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import BackgroundTasks, Body, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from ranking.engine import Ranker
from ranking.errors import RequestError
from ranking.types import RankRequest, RankResult
from recsys.batcher import MicroBatcher
from recsys.settings import Settings, get_settings

API_ONLY_FIELDS = ("user_id", "audit")


class ServingState:
    def __init__(self, ranker: Ranker, settings: Settings, engine: Engine | None) -> None:
        self.ranker = ranker
        self.settings = settings
        self.engine = engine
        self.batcher = MicroBatcher(
            ranker, max_batch=settings.batch_size, max_wait_ms=settings.batch_wait_ms
        )


def create_app(
    *,
    ranker: Ranker | None = None,
    settings: Settings | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """Build the app. Without `ranker`, the settings' model is loaded at start-up."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        app.state.serving = ServingState(ranker or _load_ranker(settings), settings, engine)
        yield
        app.state.serving.batcher.close()

    app = FastAPI(title="recsys IRanker API", version="1", lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def _bad_request(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"error": str(exc)})

    def check_key(authorization: str | None = Header(None)) -> None:
        if not settings.require_api_key:
            return
        from recsys.auth import key_has_scope
        from recsys.db.engine import get_engine

        key = (authorization or "").removeprefix("Bearer ").strip()
        if not key or not key_has_scope(key, "rank", engine=engine or get_engine()):
            raise HTTPException(401, "missing or invalid API key: send `Authorization: Bearer KEY`")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(request: Request) -> dict[str, str]:
        state: ServingState = request.app.state.serving
        return {"status": "ready", "model": state.ranker.model_id}

    @app.get("/v1/model")
    def model(request: Request) -> dict[str, Any]:
        state: ServingState = request.app.state.serving
        stats = state.batcher.stats
        return {
            "model": state.ranker.model_id,
            "batches": stats.batches,
            "requests": stats.requests,
            "largest_batch": stats.largest_batch,
        }

    @app.post("/v1/rank", dependencies=[Depends(check_key)])
    async def rank(
        request: Request, background: BackgroundTasks, body: dict[str, Any] = Body(...)
    ) -> dict[str, Any]:
        state: ServingState = request.app.state.serving
        extras = {k: body.pop(k) for k in API_ONLY_FIELDS if k in body}
        if body.get("deadline_ms") is None and settings.default_deadline_ms is not None:
            body["deadline_ms"] = settings.default_deadline_ms
        rank_request = RankRequest.from_dict(body)
        result = await asyncio.wrap_future(state.batcher.submit(rank_request))
        request_id = uuid.uuid4().hex
        user_id = extras.get("user_id")
        if user_id is not None and settings.log_impressions:
            background.add_task(
                log_ranked_list, state, request_id, str(user_id), rank_request, result
            )
        answer = result.to_dict()
        if not extras.get("audit"):
            answer["prompt"] = None
            for step in answer["steps"]:
                step["prompt"] = step["response"] = None
        return {"request_id": request_id, **answer}

    return app


def log_ranked_list(
    state: ServingState, request_id: str, user_id: str, req: RankRequest, result: RankResult
) -> None:
    """Store one impression per position with the ranking's propensity, for replay and RL."""
    from recsys.db.engine import get_engine
    from recsys.db.events import ImpressionRecord, log_impressions

    propensity = None if result.log_propensity is None else math.exp(result.log_propensity)
    # the context carries what off-policy training and replay read back (logged_requests)
    context = {
        "task": req.task,
        "mode": result.mode,
        "fallback": result.fallback,
        "log_propensity": result.log_propensity,
        "fusion_alpha": result.fusion_alpha,  # the propensity is the fused policy's
    }
    scores = {c.id: c.score for c in req.candidates}
    records = [
        ImpressionRecord(
            request_id=request_id,
            user_id=user_id,
            item_id=item_id,
            position=position,
            policy=f"iranker-{result.mode}",
            propensity=propensity,
            model_version=result.model,
            context={**context, "score": scores[item_id]},
        )
        for position, item_id in enumerate(result.order)
    ]
    log_impressions(records, engine=state.engine or get_engine())


def _load_ranker(settings: Settings) -> Ranker:
    from recsys.registry import load_registered_ranker

    return load_registered_ranker(
        settings.model,
        fusion_alpha=settings.fusion_alpha,
        device=settings.device,
        backend=settings.backend,
        batch_size=settings.batch_size,
    )
