"""The end-to-end pipeline: database -> retrieval -> IRanker -> stored recommendations.

`run_demo(DemoConfig(...))` is the main job behind `recsys demo`:

1. ingest a MovieLens folder into the database (idempotent: a re-run adds nothing);
2. read its interactions back and hold out each user's last interaction;
3. train CF, embed the item texts, build the FAISS indexes (retrieval.CandidateGenerator),
   save them as a versioned artifact and register it in model_versions (kind `index`);
4. retrieve the top-K candidates for every user (recall@K over all users);
5. re-rank a sample of users' candidates with IRanker (incremental mode);
6. store the final lists as a recommendation run;
7. return the metrics (retrieval-only vs retrieval + IRanker), examples and stage times.

The building blocks (`training_data`, `leave_last_out`, `retrieve`, `rank_requests`,
`evaluate`) are shared with batch jobs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from ranking.fusion import ABSTAIN_SIGNAL
from ranking.metrics import hit_at_k, ndcg_at_k, reciprocal_rank
from ranking.types import Candidate, RankRequest
from recsys.errors import UserError
from retrieval.fusion import FusedCandidate
from retrieval.generator import CandidateGenerator, GeneratorConfig, source_weights

log = logging.getLogger(__name__)

EMBEDDINGS = ("minilm", "hashing", "off")


@dataclass
class DemoConfig:
    data: Path
    users: int = 20  # users re-ranked by IRanker (a seeded sample); 0 = all
    k: int = 20
    history: int = 20  # history titles shown to the ranker
    seed: int = 7
    model: str | None = None  # None: the settings' (recsys.runtime)
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None
    rerank: bool = True
    ltr: bool = True  # the LambdaMART stage between fusion and the LM, as `recsys batch`
    next_source: bool = True  # retrieval also fuses the `next` source, as `recsys batch`
    embeddings: str = "minilm"
    cf_factors: int = 64
    cf_epochs: int = 30
    examples: int = 3
    progress: bool = True
    database_url: str | None = None
    artifact_dir: Path = Path("var/artifacts")


@dataclass
class Interactions:
    users: list[str]
    items: list[str]
    timestamps: np.ndarray  # unix seconds
    titles: dict[str, str]  # item id -> title
    texts: dict[str, str]  # item id -> text to embed
    genres: dict[str, str] = field(default_factory=dict)  # item id -> "A|B|C", where known


@dataclass
class DemoReport:
    run_id: str
    retrieval_version: str
    model_version: str | None
    n_users: int
    n_items: int
    n_interactions: int
    evaluated_users: int
    metrics: dict[str, dict[str, float]]
    timings: dict[str, float]  # wall seconds per stage
    cpu: dict[str, float]  # CPU seconds per stage (all threads): the cost on a quiet machine
    examples: list[dict[str, Any]] = field(default_factory=list)
    stored: int = 0
    # re-ranked minus retrieval order on the sampled users: metric -> mean, low, high
    paired: dict[str, dict[str, float]] = field(default_factory=dict)
    # the same on those of them the ranker never trained on (when its card says who)
    paired_unseen: dict[str, dict[str, float]] = field(default_factory=dict)
    # per sampled user: the target's 1-based rank in the retrieval order and in the stored
    # list (None: not retrieved), so two reports can be compared user by user
    target_ranks: dict[str, dict[str, int | None]] = field(default_factory=dict)


# -- data ------------------------------------------------------------------------------------


def ingest_dataset(path: Path, engine: Engine, *, progress: bool) -> str:
    """Load a MovieLens folder (idempotent); returns the source name its events carry."""
    from recsys.db.migrate import ensure_schema
    from recsys.ingest import ingest

    if not path.exists():
        raise UserError(
            f"data folder {path} does not exist; pass --data PATH to a MovieLens folder "
            "(u.data + u.item) or set RECSYS_DATA_DIR"
        )
    ensure_schema(engine.url.render_as_string(hide_password=False))
    report = ingest(path, "movielens", progress=progress, engine=engine)
    return report.source


def training_data(engine: Engine, source: str | None) -> Interactions:
    """All interactions (of one source, or every source when None), in time order, with item
    titles and embedding texts."""
    from recsys.db.catalogue import all_items
    from recsys.db.events import interaction_log

    events = interaction_log(engine=engine, source=source)
    if not events.users:
        where = f" from source {source!r}" if source is not None else ""
        raise UserError(f"no interactions{where} in the database; load some with `recsys ingest`")
    seen_items = set(events.items)
    titles, texts, genres = {}, {}, {}
    for item in all_items(engine=engine):
        if item.item_id in seen_items:
            titles[item.item_id] = item.title or item.item_id
            texts[item.item_id] = item_text(item.title or item.item_id, item.text, item.attributes)
            if item.attributes.get("genres"):
                genres[item.item_id] = str(item.attributes["genres"])
    return Interactions(
        users=events.users,
        items=events.items,
        timestamps=np.array(events.seconds, dtype=np.float64),
        titles=titles,
        texts=texts,
        genres=genres,
    )


def item_text(title: str, text: str | None, attributes: Mapping[str, Any]) -> str:
    """What the text embedding sees: title, genres, description."""
    parts = [title]
    genres = attributes.get("genres")
    if genres:
        parts.append("Genres: " + str(genres).replace("|", ", "))
    if text:
        parts.append(text)
    return ". ".join(parts)


def leave_last_out(data: Interactions, cut: int = 1) -> tuple[list[int], dict[str, str]]:
    """Row numbers to train on and each user's target: with `cut` 1, the last item of every
    user with >= 2 events; with `cut` c, the item c from the end of every user with > c
    events, whose last c items are all left out (the target and what came after it), so the
    index knows nothing of it or of the user's future (`recsys.index_episodes`).

    `data` is in time order (ties by insertion order), so a user's last row is their latest."""
    if cut < 1:
        raise UserError(f"cut {cut}: leave out at least the last item (cut >= 1)")
    rows: dict[str, list[int]] = {}
    for row, user in enumerate(data.users):
        rows.setdefault(user, []).append(row)
    held: set[int] = set()
    targets: dict[str, str] = {}
    for user, mine in rows.items():
        if len(mine) > cut:
            held.update(mine[-cut:])
            targets[user] = data.items[mine[-cut]]
    train = [row for row in range(len(data.users)) if row not in held]
    return train, targets


# -- retrieval, ranking, metrics -----------------------------------------------------------------


def retrieve(
    gen: CandidateGenerator, users: Sequence[str], k: int, *, progress: bool = False
) -> dict[str, list[FusedCandidate]]:
    from tqdm import tqdm

    return {
        u: gen.candidates(u, k)
        for u in tqdm(users, desc="retrieve", unit="user", disable=not progress)
    }


def rank_requests(
    gen: CandidateGenerator,
    candidates: Mapping[str, list[FusedCandidate]],
    titles: Mapping[str, str],
    *,
    history: int,
    task: str = "rec-movie",
    job: str = "demo",
) -> dict[str, RankRequest]:
    """One incremental-mode IRanker request per user: the recent items (titles and ids) and
    the retrieved candidates; request ids are `{job}-{user}` (demo, batch, index)."""
    requests = {}
    for user, cands in candidates.items():
        if not cands:
            continue
        recent = gen.history(user, history)
        requests[user] = RankRequest(
            task=task,
            history=tuple(titles.get(i, i) for i in recent),
            # the ids too: a hybrid model reads each history item as its CF soft token, as it
            # was trained (ranking.prompts.PromptStyle.item); titles alone it never saw
            history_ids=tuple(recent),
            candidates=tuple(
                Candidate(
                    id=str(c.item),
                    text=titles.get(str(c.item), str(c.item)),
                    score=float(c.score),
                    signals=signals(gen, c),
                )
                for c in cands
            ),
            mode="incremental",
            request_id=f"{job}-{user}",
        )
    return requests


def signals(gen: CandidateGenerator, cand: FusedCandidate) -> dict[str, float | int | str]:
    out: dict[str, float | int | str] = {f"{s}_rank": r for s, r in cand.ranks.items()}
    # the count again under the name ranking.fusion's abstention rule reads
    out["popularity"] = out[ABSTAIN_SIGNAL] = gen.interactions(str(cand.item))
    return out


def evaluate(
    orders: Mapping[str, Sequence[str]], targets: Mapping[str, str], k: int
) -> dict[str, float]:
    """Mean recall@k (= hit@k with one target), MRR, NDCG@10, Hit@10 over `orders`' users."""
    users = [u for u in orders if u in targets]
    if not users:
        return {"users": 0}

    def mean(f: Callable[[str], float]) -> float:
        return round(float(np.mean([f(u) for u in users])), 4)

    return {
        "users": len(users),
        f"recall@{k}": mean(lambda u: hit_at_k(orders[u], targets[u], k)),
        "mrr": mean(lambda u: reciprocal_rank(orders[u], targets[u])),
        "ndcg@10": mean(lambda u: ndcg_at_k(orders[u], targets[u], 10)),
        "hit@10": mean(lambda u: hit_at_k(orders[u], targets[u], 10)),
    }


def paired_gain(
    reranked: Mapping[str, Sequence[str]],
    before: Mapping[str, Sequence[str]],
    targets: Mapping[str, str],
) -> dict[str, dict[str, float]]:
    """MRR and NDCG@10 of `reranked` minus `before` on the same users (those of `reranked`
    with a target), each with its paired bootstrap 95% interval (recsys.stats)."""
    from recsys.stats import paired_difference

    users = [u for u in reranked if u in targets]
    if not users:
        return {}
    metrics = {"mrr": reciprocal_rank, "ndcg@10": lambda o, t: ndcg_at_k(o, t, 10)}
    out = {}
    for name, metric in metrics.items():
        diff = paired_difference(
            [metric(reranked[u], targets[u]) for u in users],
            [metric(before[u], targets[u]) for u in users],
        )
        out[name] = {"mean": diff.mean, "low": diff.low, "high": diff.high, "users": len(users)}
    return out


def unseen_by(served: Any, orders: Mapping[str, Sequence[str]]) -> dict[str, Sequence[str]]:
    """The users of `orders` the served ranker never trained on, by its card's held-out
    rule (`recsys.resolver.heldout_rule`); none when the card does not say."""
    from recsys.eval.instances import is_heldout
    from recsys.resolver import heldout_rule

    rule = heldout_rule(served.resolved.model)
    if rule is None:
        return {}
    fraction, seed = rule
    return {u: o for u, o in orders.items() if is_heldout(u, seed, fraction)}


# -- the main job ---------------------------------------------------------------------------


class _Stages:
    """Times each stage and logs a line when one starts (progress for long runs)."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.echo = echo

    def run(self, name: str, what: str, fn: Callable[[], Any]) -> Any:
        self.echo(f"[{len(self.timings) + 1}] {what} ...")
        started, cpu = time.perf_counter(), time.process_time()
        result = fn()
        self.timings[name] = round(time.perf_counter() - started, 2)
        self.cpu[name] = round(time.process_time() - cpu, 2)
        return result

    def split(self, name: str, parts: Mapping[str, float]) -> None:
        """Replace stage `name` by its parts (wall `x`, CPU `x_cpu`)."""
        del self.timings[name], self.cpu[name]
        for key, value in parts.items():
            if not key.endswith("_cpu"):
                self.timings[key] = round(value, 2)
                self.cpu[key] = round(parts.get(f"{key}_cpu", 0.0), 2)


def make_embedder(kind: str, cache_dir: Path):  # type: ignore[no-untyped-def]
    from retrieval.embeddings import HashingEncoder, TextEmbedder

    if kind not in EMBEDDINGS:
        raise UserError(f"unknown --embeddings {kind!r}; use one of {list(EMBEDDINGS)}")
    if kind == "off":
        return None
    encoder = HashingEncoder(64) if kind == "hashing" else None
    return TextEmbedder(encoder, cache_dir=cache_dir)


def build_index(
    data: Interactions,
    rows: Sequence[int],
    config: GeneratorConfig,
    embedder: Any,
    *,
    progress: bool = False,
    timings: dict[str, float] | None = None,
) -> CandidateGenerator:
    """A retrieval index on the interactions `rows` of `data` (`recsys batch`, `recsys
    demo` and `recsys index-episodes` build theirs here)."""
    picked = list(rows)
    return CandidateGenerator.build(
        [data.users[r] for r in picked],
        [data.items[r] for r in picked],
        data.timestamps[picked],
        data.texts,
        embedder=embedder,
        config=config,
        progress=progress,
        timings=timings,
        titles=data.titles,
        genres=data.genres,
    )


def check_ltr_options(*, ltr: bool, ltr_text: bool, ltr_bag: int, embeddings: str) -> None:
    """The LambdaMART stage's options as `recsys batch` and `recsys index-episodes` take them,
    checked before any build (a UserError that says what to pass)."""
    from retrieval.ltr import MAX_BAG, valid_bag

    if ltr_text and (not ltr or embeddings == "off"):
        raise UserError(
            "--ltr-text adds title-embedding features to the LambdaMART stage: it needs "
            "--ltr and --embeddings minilm|hashing"
        )
    if not valid_bag(ltr_bag):
        raise UserError(f"--ltr-bag {ltr_bag!r}: give a whole number of LightGBM fits "
                        f"from 1 to {MAX_BAG} (1: one fit, as before)")  # fmt: skip
    if ltr_bag > 1 and not ltr:
        raise UserError("--ltr-bag averages the LambdaMART stage's fits: it needs --ltr")


def production_index_config(
    *,
    cf_factors: int = 64,
    cf_epochs: int = 30,
    seed: int = 7,
    ltr: bool = True,
    ltr_text: bool = False,
    ltr_bag: int = 1,
    next_source: bool = True,
) -> GeneratorConfig:
    """The production index's settings as `recsys batch`, `recsys demo` and `recsys
    index-episodes` build it: reciprocal rank fusion of CF, text, popularity and (by
    default) `next`, then the LambdaMART stage."""
    return GeneratorConfig(
        cf_factors=cf_factors,
        cf_epochs=cf_epochs,
        seed=seed,
        ltr=ltr,
        ltr_text=ltr_text,
        ltr_bag=ltr_bag,
        weights=source_weights(next_source),
    )


def run_demo(config: DemoConfig, echo: Callable[[str], None] = print) -> DemoReport:
    from recsys.db.engine import get_engine
    from recsys.db.registry import register_model
    from recsys.db.runs import write_recommendations
    from recsys.registry import sha256_of
    from retrieval.artifacts import ArtifactStore, new_version

    _check(config)
    engine = get_engine(config.database_url)
    stages = _Stages(echo)
    source = stages.run(
        "ingest",
        f"ingest {config.data} into {engine.url.render_as_string()}",
        lambda: ingest_dataset(config.data, engine, progress=config.progress),
    )
    data = stages.run("load", "read interactions", lambda: training_data(engine, source))
    train_rows, targets = leave_last_out(data)
    build_timings: dict[str, float] = {}
    embedder = stages.run(
        "load_embedder",
        f"load text embedder ({config.embeddings})",
        lambda: make_embedder(config.embeddings, config.artifact_dir / "embedding-cache"),
    )
    gen = stages.run(
        "build",
        f"train CF (WARP, {config.cf_factors} factors, {config.cf_epochs} epochs), "
        "embed items, build indexes",
        lambda: build_index(
            data,
            train_rows,
            production_index_config(
                cf_factors=config.cf_factors,
                cf_epochs=config.cf_epochs,
                seed=config.seed,
                ltr=config.ltr,
                next_source=config.next_source,
            ),
            embedder,
            progress=config.progress,
            timings=build_timings,
        ),
    )
    stages.split("build", build_timings)

    users = sorted(targets, key=_natural)
    candidates = stages.run(
        "retrieve",
        f"retrieve top-{config.k} for {len(users)} users",
        lambda: retrieve(gen, users, config.k, progress=config.progress),
    )
    retrieval_orders = {u: [str(c.item) for c in cands] for u, cands in candidates.items()}
    all_users_metrics = evaluate(retrieval_orders, targets, config.k)

    version = new_version()
    store = ArtifactStore(config.artifact_dir)
    artifact = stages.run(
        "save",
        "save retrieval artifact",
        lambda: gen.save(store, version, meta={"source": source, **all_users_metrics}),
    )
    register_model(
        "index",
        version,
        str(artifact.path.resolve()),
        sha256=sha256_of(artifact.path),
        metrics={"source": source, **all_users_metrics},
        engine=engine,
    )

    sample = _sample(users, config.users, config.seed)
    sample_candidates = {u: candidates[u] for u in sample}
    final_orders = {u: retrieval_orders[u] for u in sample}
    model_version = None
    served = _served_ranker(config, engine, echo) if config.rerank else None
    rerank = served is not None
    if rerank:
        requests = rank_requests(gen, sample_candidates, data.titles, history=config.history)
        ranker = stages.run(
            "load_ranker",
            f"load ranker {config.model!r}" if config.model else "load ranker (RECSYS_MODEL)",
            lambda: _load_ranker(config, engine, served),
        )
        model_version = ranker.model_id
        results = stages.run(
            "rerank",
            f"re-rank {len(requests)} users with IRanker (incremental)",
            lambda: ranker.rank_batch(list(requests.values()), progress=config.progress),
        )
        for user, result in zip(requests, results, strict=True):
            final_orders[user] = list(result.order)

    run_id = f"demo-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    score_of = {u: {str(c.item): float(c.score) for c in candidates[u]} for u in sample}
    stored = stages.run(
        "store",
        f"store recommendations (run {run_id})",
        lambda: write_recommendations(
            run_id,
            {u: [(i, score_of[u][i]) for i in order] for u, order in final_orders.items()},
            model_version=model_version or f"retrieval:{version}",
            engine=engine,
        ),
    )
    metrics = {
        f"retrieval, all {all_users_metrics['users']} users": all_users_metrics,
        f"retrieval only, {len(sample)} sampled users": evaluate(
            {u: retrieval_orders[u] for u in sample}, targets, config.k
        ),
    }
    paired: dict[str, dict[str, float]] = {}
    paired_unseen: dict[str, dict[str, float]] = {}
    if rerank:
        metrics[f"retrieval + IRanker, {len(sample)} sampled users"] = evaluate(
            final_orders, targets, config.k
        )
        paired = paired_gain(final_orders, retrieval_orders, targets)
        paired_unseen = paired_gain(unseen_by(served, final_orders), retrieval_orders, targets)
    return DemoReport(
        paired=paired,
        paired_unseen=paired_unseen,
        target_ranks={u: _ranks(retrieval_orders[u], final_orders[u], targets[u]) for u in sample},
        run_id=run_id,
        retrieval_version=version,
        model_version=model_version,
        n_users=len(gen.user_ids),
        n_items=len(gen.item_ids),
        n_interactions=len(data.users),
        evaluated_users=len(sample),
        metrics=metrics,
        timings=stages.timings,
        cpu=stages.cpu,
        examples=[
            {
                "user": u,
                "history": [data.titles.get(i, i) for i in gen.history(u, 5)],
                "target": data.titles.get(targets[u], targets[u]),
                "recommended": [data.titles.get(i, i) for i in final_orders[u][:10]],
                "target_rank": _rank(final_orders[u], targets[u]),
            }
            for u in sample[: config.examples]
        ],
        stored=stored,
    )


def _check(config: DemoConfig) -> None:
    """Refuse bad options before any work is done."""
    if config.embeddings not in EMBEDDINGS:
        raise UserError(
            f"unknown --embeddings {config.embeddings!r}; use one of {list(EMBEDDINGS)}"
        )
    if config.k < 1 or config.users < 0 or config.history < 1:
        raise UserError(
            f"--k and history must be >= 1 and --users >= 0 (got k={config.k}, "
            f"users={config.users}, history={config.history})"
        )


def _served_ranker(config: DemoConfig, engine: Engine, echo: Callable[[str], None]):  # type: ignore[no-untyped-def]
    """The ranker resolved once, or None when it is served at the retrieval order (the
    zero-shot default): its ranking is the retrieval order, so it is neither loaded nor
    called."""
    from recsys import runtime

    served = runtime.served_ranker(engine=engine, model=config.model)
    if not served.follows_retrieval:
        return served
    echo(
        f"re-ranking skipped: {served.resolved.model!r} is served at the retrieval order "
        "(zero-shot, no trained weight); --model a trained ranker (models/README.md) to re-rank"
    )
    return None


def _load_ranker(config: DemoConfig, engine: Engine, served=None):  # type: ignore[no-untyped-def]
    from recsys import runtime

    return runtime.load_ranker(engine=engine, served=served, model=config.model,
                               device=config.device, dtype=config.dtype,
                               batch_size=config.batch_size)  # fmt: skip


def _rank(order: Sequence[str], target: str) -> int | None:
    return order.index(target) + 1 if target in order else None


def _ranks(retrieved: Sequence[str], served: Sequence[str], target: str) -> dict[str, int | None]:
    return {"retrieval": _rank(retrieved, target), "served": _rank(served, target)}


def _sample(users: list[str], n: int, seed: int) -> list[str]:
    if n <= 0 or n >= len(users):
        return list(users)
    picked = np.random.default_rng(seed).choice(len(users), n, replace=False)
    return [users[i] for i in sorted(picked)]


def _natural(user: str) -> tuple[int, str]:
    return (int(user), "") if user.isdigit() else (0, user)


def format_report(report: DemoReport) -> str:
    """The human-readable summary `recsys demo` prints."""
    lines = [""]
    lines.append(
        f"data: {report.n_users} users, {report.n_items} items, "
        f"{report.n_interactions} interactions (last one per user held out)"
    )
    lines.append(f"retrieval artifact: index/{report.retrieval_version}")
    lines.append(f"ranker: {report.model_version or 'none (retrieval order)'}")
    lines.append("")
    lines.append("== examples ==")
    for ex in report.examples:
        lines.append(f"user {ex['user']}  (held-out: {ex['target']})")
        lines.append("  recent history: " + " | ".join(ex["history"]))
        for pos, title in enumerate(ex["recommended"], 1):
            mark = "  <- held-out" if title == ex["target"] else ""
            lines.append(f"  {pos:>2}. {title}{mark}")
    lines.append("")
    lines.append("== metrics on the held-out last interaction ==")
    keys = [k for k in next(iter(report.metrics.values())) if k != "users"]
    lines.append(f"{'':<44}" + "".join(f"{k:>10}" for k in keys))
    for name, values in report.metrics.items():
        lines.append(f"{name:<44}" + "".join(f"{values.get(k, 0.0):>10.4f}" for k in keys))
    for who, gains in (("users", report.paired), ("never trained on", report.paired_unseen)):
        for name, d in gains.items():
            lines.append(
                f"re-ranked - retrieval, {name} (paired, {d['users']:.0f} {who}): "
                f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
            )
    lines.append("")
    lines.append("== time per stage ==")
    lines.append(f"  {'stage':<14}{'wall s':>8}{'CPU s':>8}")
    for name, seconds in report.timings.items():
        lines.append(f"  {name:<14}{seconds:>8.2f}{report.cpu.get(name, 0.0):>8.2f}")
    total_wall, total_cpu = sum(report.timings.values()), sum(report.cpu.values())
    lines.append(f"  {'total':<14}{total_wall:>8.2f}{total_cpu:>8.2f}")
    lines.append(f"stored {report.stored} recommendations as run {report.run_id}")
    return "\n".join(lines)
