"""The endpoints (recsys.api.app builds the app and passes what they share)."""

import asyncio
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse

from ranking.fusion import ABSTAIN_SIGNAL
from ranking.types import Candidate, RankRequest, RankResult
from recsys.api.schemas import (
    EventsAnswer,
    ModelAnswer,
    RankAnswer,
    RecommendAnswer,
    RecommendedItem,
    ReloadAnswer,
)

if TYPE_CHECKING:
    from types import SimpleNamespace

    from recsys.api.app import Service

log = logging.getLogger(__name__)
HISTORY_SHOWN = 20  # history items a /v1/recommend prompt shows (the training protocol's)


def add_probes(app: FastAPI, service: "Service") -> None:
    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready", "model": service.ranker.slot.ranker.model_id}

    @app.get("/v1/model", response_model=ModelAnswer)
    def model() -> ModelAnswer:
        slot = service.ranker.slot
        stats = slot.batcher.stats
        return ModelAnswer(model=slot.ranker.model_id, version=slot.version,
                           batches=stats.batches, requests=stats.requests,
                           largest_batch=stats.largest_batch,
                           queue_depth=slot.batcher.queue_depth)  # fmt: skip

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        service.metrics.queue_depth.set(service.ranker.slot.batcher.queue_depth)
        return PlainTextResponse(service.metrics.render().decode())


def add_ranking(
    app: FastAPI, service: "Service", schemas: "SimpleNamespace", key: Any, errors: dict
) -> None:
    RankBody, RecommendBody = schemas.RankBody, schemas.RecommendBody

    @app.post("/v1/rank", response_model=RankAnswer, dependencies=[Depends(key)],
              responses=_pick(errors, 400, 401, 404, 409, 413, 422))  # fmt: skip
    async def rank(body: RankBody, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
        request.state.user_id = body.user_id  # hashed in the access log (recsys.api.app)
        request.state.model_version = None  # until a ranker takes it (_ranked)
        req = _rank_request(service, body)
        result = await _ranked(service, req, "/v1/rank", request.state)
        request_id = _request_id(request)
        if body.user_id is not None:
            _log(service, request_id, body.user_id, req, result)
        answer = result.to_dict()
        if not body.audit:
            answer["prompt"] = None
            for step in answer["steps"]:
                step["prompt"] = step["response"] = None
        return {"request_id": request_id, **answer}

    @app.post("/v1/recommend", response_model=RecommendAnswer, dependencies=[Depends(key)],
              responses=_pick(errors, 400, 401, 409, 413, 422, 503))  # fmt: skip
    async def recommend(  # type: ignore[valid-type]
        body: RecommendBody, request: Request
    ) -> RecommendAnswer:
        request.state.user_id = body.user_id
        request.state.model_version = None  # retrieval's order unless the ranker is asked
        return await _recommend(service, body, request)


def add_events(
    app: FastAPI, service: "Service", schemas: "SimpleNamespace", key: Any, errors: dict
) -> None:
    EventsBody = schemas.EventsBody

    @app.post("/v1/events", response_model=EventsAnswer, dependencies=[Depends(key)],
              responses=_pick(errors, 400, 401, 413, 422))  # fmt: skip
    async def events(body: EventsBody) -> EventsAnswer:  # type: ignore[valid-type]
        return await asyncio.to_thread(_store_events, service, body.events)


def add_admin(app: FastAPI, service: "Service", key: Any, errors: dict) -> None:
    @app.post("/v1/admin/reload", response_model=ReloadAnswer, dependencies=[Depends(key)],
              responses=_pick(errors, 401))  # fmt: skip
    async def reload() -> ReloadAnswer:
        changed = await asyncio.to_thread(service.ranker.reload_if_changed)
        slot = service.ranker.slot
        return ReloadAnswer(model=slot.ranker.model_id, version=slot.version, reloaded=changed)


def _pick(errors: dict, *codes: int) -> dict:
    return {c: errors[c] for c in codes}


# ---------------------------------------------------------------- /v1/rank


def _rank_request(service: "Service", body: Any) -> RankRequest:
    """The engine's request: catalogue texts filled in, limits and contradictions checked
    before the model sees it (404 unknown ids, 409 contradictions, 413 too long)."""
    from recsys.db.catalogue import items_by_ids

    need = [c.id for c in body.candidates if c.text is None]
    if not body.history and body.history_ids:
        need += list(body.history_ids)
    known = items_by_ids(need, engine=service.engine) if need else {}
    missing = [c.id for c in body.candidates if c.text is None and c.id not in known]
    if missing:
        raise HTTPException(404, f"unknown catalogue item(s) {missing[:10]}: give their 'text'")
    candidates = tuple(
        Candidate(id=c.id, text=c.text or _title(known[c.id]), score=c.score,
                  signals=dict(c.signals))
        for c in body.candidates
    )  # fmt: skip
    history = list(body.history) or [_title(known[i]) if i in known else i
                                     for i in body.history_ids]  # fmt: skip
    deadline = body.deadline_ms
    if deadline is None:
        deadline = service.settings.default_deadline_ms
    req = RankRequest(
        task=body.task, candidates=candidates, history=tuple(history),
        history_ids=tuple(body.history_ids), query=body.query, mode=body.mode,
        deadline_ms=deadline, temperature=body.temperature, show_signals=body.show_signals,
        seed=body.seed, fusion_alpha=body.fusion_alpha,
        fusion_abstain_below=body.fusion_abstain_below,
    )  # fmt: skip
    _check_prompt_tokens(service, req)
    return req


def _title(item: Any) -> str:
    return item.title or item.text or item.item_id


def _check_prompt_tokens(service: "Service", req: RankRequest) -> None:
    limit = service.settings.limit_prompt_tokens
    tokenizer = service.ranker.slot.ranker.backend.tokenizer
    texts = [*req.history, *(c.text for c in req.candidates), req.query or ""]
    n = sum(len(tokenizer.encode(t)) for t in texts if t)
    if n > limit:
        raise HTTPException(
            413, f"the prompt would have about {n} tokens, over the limit of {limit} "
            "(RECSYS_LIMIT_PROMPT_TOKENS): send fewer or shorter items",
        )  # fmt: skip


def _request_id(request: Request) -> str:
    """The id the middleware gave this request (recsys.api.app): answer, header, log."""
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


async def _ranked(
    service: "Service", req: RankRequest, endpoint: str, state: Any = None
) -> RankResult:
    slot, future = service.ranker.submit(req)
    if state is not None:  # the version that ranks it, for the access log
        state.model_version = slot.version or slot.ranker.model_id
    result: RankResult = await asyncio.wrap_future(future)
    service.metrics.ranking.observe(result.elapsed_ms / 1000)
    if result.fallback:
        service.metrics.fallbacks.labels(endpoint=endpoint, reason="deadline").inc()
    return result


def _log(service: "Service", request_id: str, user_id: str, req: RankRequest, r: Any) -> None:
    """One impression per position with the ranking's propensity (for replay and RL)."""
    from ranking.types import alpha_for_json
    from recsys.db.events import ImpressionRecord
    from recsys.db.models import utcnow

    if not service.settings.log_impressions:
        return
    propensity = None if r.log_propensity is None else math.exp(r.log_propensity)
    # the context carries what off-policy training and replay read back (logged_requests)
    context = {"task": req.task, "mode": r.mode, "fallback": r.fallback,
               "log_propensity": r.log_propensity,
               "fusion_alpha": alpha_for_json(r.fusion_alpha),
               "fusion_abstain_below": r.fusion_abstain_below}  # fmt: skip
    scores = {c.id: c.score for c in req.candidates}
    signals = {c.id: c.signals for c in req.candidates}  # what a replay must serve again
    given = {c.id: i for i, c in enumerate(req.candidates)}  # the prompt's order, for training
    abstained = set(r.fusion_abstained)  # the LM had no say on these (ranking.fusion)
    shown_at = utcnow()  # when it was shown, not when the buffer got it into the database
    service.impressions.log([
        ImpressionRecord(request_id=request_id, user_id=user_id, item_id=item, position=pos,
                         policy=f"iranker-{r.mode}", propensity=propensity,
                         model_version=r.model, context={**context, "score": scores[item],
                                                  "signals": signals[item],
                                                  "input_index": given[item],
                                                  "abstained": item in abstained},
                         timestamp=shown_at)
        for pos, item in enumerate(r.order)
    ])  # fmt: skip


# ---------------------------------------------------------------- /v1/recommend


async def _recommend(service: "Service", body: Any, request: Request) -> RecommendAnswer:
    from recsys.api.recommend import NoIndex, retrieve
    from recsys.db.catalogue import items_by_ids
    from recsys.db.events import user_history

    start = time.perf_counter()
    s = service.settings
    try:
        gen, index_version = await asyncio.to_thread(service.index.current)
    except NoIndex as exc:
        raise HTTPException(503, str(exc)) from None
    history = await asyncio.to_thread(
        user_history, body.user_id, s.limit_history, engine=service.engine
    )
    found = retrieve(gen, body.user_id, history, body.k, list(body.exclude))
    items = await asyncio.to_thread(
        items_by_ids, [i for i, _ in found.items], engine=service.engine
    )
    titles = {i: (items[i].title if i in items else None) for i, _ in found.items}
    scores = dict(found.items)
    order, model, fallback, log_propensity = [i for i, _ in found.items], None, False, None
    request_id = _request_id(request)
    if len(order) > 1:
        shown = history[-HISTORY_SHOWN:]
        req = RankRequest(
            task=s.task,
            candidates=tuple(
                Candidate(
                    id=i,
                    text=titles[i] or i,
                    score=scores[i],
                    signals={ABSTAIN_SIGNAL: gen.interactions(i)},
                )
                for i in order
            ),
            history=tuple(h.title or h.item_id for h in shown),
            history_ids=tuple(h.item_id for h in shown),
            mode=body.mode,
            deadline_ms=body.deadline_ms if body.deadline_ms is not None else s.default_deadline_ms,
            request_id=request_id,
            temperature=body.temperature,
            seed=body.seed,
        )
        try:
            result = await _ranked(service, req, "/v1/recommend", request.state)
            order, model, fallback = result.order, result.model, result.fallback
            log_propensity = result.log_propensity
            _log(service, request_id, body.user_id, req, result)
        except Exception:  # the ranker failed: the retrieval order, flagged
            log.exception("ranking failed for /v1/recommend; answering in the retrieval order")
            service.metrics.fallbacks.labels(endpoint="/v1/recommend", reason="error").inc()
            fallback = True
    return RecommendAnswer(
        request_id=request_id, user_id=body.user_id,
        items=[RecommendedItem(id=i, title=titles[i], score=scores[i]) for i in order],
        model=model, index_version=index_version, fallback=fallback,
        cold_start=found.cold_start, log_propensity=log_propensity,
        elapsed_ms=(time.perf_counter() - start) * 1000,
    )  # fmt: skip


# ---------------------------------------------------------------- /v1/events


def _store_events(service: "Service", events: list[Any]) -> EventsAnswer:
    import hashlib
    from datetime import UTC, datetime

    from recsys.db.events import InteractionRecord, log_interactions

    unique = {e.event_id: e for e in reversed(events)}  # the first of repeated ids wins
    records = [
        InteractionRecord(
            user_id=e.user_id, item_id=e.item_id, event=e.kind, value=e.value,
            timestamp=datetime.fromtimestamp(e.timestamp, UTC), source="api",
            key=hashlib.blake2b(f"api\x1f{e.event_id}".encode(), digest_size=16).hexdigest(),
        )
        for e in unique.values()
    ]  # fmt: skip
    stored = log_interactions(records, engine=service.engine)
    return EventsAnswer(received=len(events), stored=stored, duplicates=len(events) - stored)
