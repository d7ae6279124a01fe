"""The API contract: pydantic models of every request and answer, built from the limits in
the settings, so the OpenAPI document (`/openapi.json`) says exactly what is accepted.

What the schema cannot say is checked after it and answered with a documented status:
409 when a request's fields contradict each other (duplicate candidate ids, a passage
without a query, fusion asked of the free-text mode), 404 for catalogue ids the database
does not know, 413 for a body or prompt over its limit.
"""

from types import SimpleNamespace
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ranking.types import MAX_ABSTAIN, MODES, TASKS
from recsys.settings import Settings

Task = Literal[TASKS]  # type: ignore[valid-type]
Mode = Literal[MODES]  # type: ignore[valid-type]
# at least one character that is not ASCII white space (JSON Schema's regex dialect and
# Python's disagree on Unicode white space; the engine refuses blank text with a 409)
NON_BLANK = r"[^ \t\n\r\f\v]"
Id = Annotated[str, Field(min_length=1, max_length=255, pattern=NON_BLANK)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong and how to fix it")
    detail: list[dict] | None = Field(None, description="per-field errors (422)")


class Step(BaseModel):
    eliminated: str
    prob: float | None
    remaining: int
    prompt: str | None
    response: str | None
    matched: str


class RankAnswer(BaseModel):
    request_id: str
    order: list[str] = Field(description="every candidate id once, best first")
    steps: list[Step]
    mode: str
    model: str
    elapsed_ms: float
    log_propensity: float | None
    fallback: bool = Field(description="true: the retrieval order (deadline or failure)")
    invalid_answers: int
    generated_tokens: int
    prompt: str | None
    fusion_alpha: float | None = Field(
        description="the score-fusion weight applied (0: none); null: the retrieval order "
        "itself (an infinite weight, the serving default of a zero-shot model: every step "
        "with probability 1, no model call)"
    )
    fusion_note: str | None
    fusion_abstained: list[str] = Field(
        default_factory=list,
        description="candidates the ranker gave no opinion on (fusion_abstain_below)",
    )
    fusion_abstain_below: int = Field(
        0, description="the abstention threshold applied with fusion (0: none)"
    )


class RecommendedItem(BaseModel):
    id: str
    title: str | None
    score: float = Field(description="the fused retrieval score")


class RecommendAnswer(BaseModel):
    request_id: str
    user_id: str
    items: list[RecommendedItem]
    model: str | None = Field(description="the ranker that ordered the items; null: retrieval")
    index_version: str
    fallback: bool = Field(description="true: the retrieval order (deadline or failure)")
    cold_start: bool = Field(description="true: the user has no usable history in the index")
    log_propensity: float | None
    elapsed_ms: float


class EventsAnswer(BaseModel):
    received: int
    stored: int = Field(description="events new to the database")
    duplicates: int = Field(description="event ids already stored (idempotent retries)")


class ModelAnswer(BaseModel):
    model: str
    version: str | None
    batches: int
    requests: int
    largest_batch: int
    queue_depth: int


class ReloadAnswer(BaseModel):
    model: str
    version: str | None
    reloaded: bool


def build(settings: Settings) -> SimpleNamespace:
    """The request models, their limits taken from `settings`."""
    Text = Annotated[
        str, Field(min_length=1, max_length=settings.limit_text_chars, pattern=NON_BLANK)
    ]
    Deadline = Annotated[float, Field(ge=0, le=settings.limit_deadline_ms)]

    class CandidateIn(Strict):
        id: Id
        text: Text | None = Field(None, description="omit to use the catalogue title of `id`")
        score: float | None = Field(None, allow_inf_nan=False)
        signals: dict[str, float] = Field(
            default_factory=dict, max_length=16, description="facts a prompt may show"
        )

    class RankBody(Strict):
        task: Task
        candidates: list[CandidateIn] = Field(min_length=1, max_length=settings.limit_candidates)
        history: list[Text] = Field(default_factory=list, max_length=settings.limit_history)
        history_ids: list[Id] = Field(
            default_factory=list,
            max_length=settings.limit_history,
            description="catalogue ids of the history (titles come from the database when "
            "`history` is empty)",
        )
        query: Text | None = None
        mode: Mode = "incremental"
        deadline_ms: Deadline | None = None
        temperature: float = Field(0.0, ge=0, le=2)
        show_signals: bool = False
        seed: int | None = Field(None, ge=0, le=2**31 - 1)
        fusion_alpha: float | None = Field(None, ge=0, le=1e6, allow_inf_nan=False)
        fusion_abstain_below: int | None = Field(
            None, ge=0, le=MAX_ABSTAIN,
            description="with fusion, the ranker gives no opinion of its own on candidates "
            "whose signal 'interactions' is below this (0: never; null: the server's "
            "RECSYS_FUSION_ABSTAIN_BELOW; docs/ranking.md)",
        )  # fmt: skip
        user_id: Id | None = Field(None, description="log the impressions for this user")
        audit: bool = Field(False, description="keep prompts and responses in the answer")

    class RecommendBody(Strict):
        user_id: Id
        k: int = Field(10, ge=1, le=settings.limit_k)
        exclude: list[Id] = Field(default_factory=list, max_length=settings.limit_history)
        deadline_ms: Deadline | None = None
        mode: Literal["incremental", "score", "direct"] = "incremental"
        temperature: float = Field(
            0.0, ge=0, le=10, allow_inf_nan=False,
            description="0: the ranker's best order; > 0: a draw (exploration, for off-policy "
            "learning), its propensity logged",
        )  # fmt: skip
        seed: int | None = Field(None, ge=0, le=2**31 - 1, description="seed of the draw")

    class EventIn(Strict):
        event_id: Id = Field(description="the client's id; a retried event is stored once")
        user_id: Id
        item_id: Id
        kind: Annotated[str, Field(min_length=1, max_length=64, pattern=NON_BLANK)] = "click"
        value: float | None = Field(None, allow_inf_nan=False, ge=-1e9, le=1e9)
        timestamp: float = Field(
            ge=0, le=4_102_444_800, description="when it happened: seconds since 1970 UTC"
        )

    class EventsBody(Strict):
        events: list[EventIn] = Field(min_length=1, max_length=settings.limit_events)

    return SimpleNamespace(
        CandidateIn=CandidateIn,
        RankBody=RankBody,
        RecommendBody=RecommendBody,
        EventIn=EventIn,
        EventsBody=EventsBody,
    )
