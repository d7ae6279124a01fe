"""RL fine-tuning of the ranker, composed: episodes -> split -> Trainer -> artifact -> registry.

Episode sources:

* `rec-movie`, `rec-game` — exactly the evaluation harness's instances of the paper's Rec
  protocol (`recsys eval --task rec-movie --seed 7`: last interaction = ground truth, the
  20 before it the history, 19 random unseen negatives). Every candidate carries the score
  of a classical recommender fitted on all interactions except the evaluated targets
  (item transitions by default) and `signals` = {cf_rank}; `show_signals` renders
  "(CF rank r, retrieval score s)".
* a JSONL file of episodes (`ranking.rl.episodes.write_episodes` format);
* the database: logged impressions (what was shown, with propensities) and the
  interactions that followed them (`episodes_from_database`).

Validation users are split off by a seeded hash of the user id, so they are never trained on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ranking.folders import write_whole
from ranking.fusion import RETRIEVAL_ORDER
from ranking.rl.episodes import (
    Episode,
    read_episodes,
    reciprocal_ranks,
    retrieval_elimination_order,
    split_by_user,
    teacher_elimination_order,
    with_teacher,
)
from ranking.types import Candidate, RankRequest
from recsys.errors import UserError
from recsys.gate import ValidationResults
from recsys.hybrid_loop import base_kind, refuse_committee
from recsys.progress import Progress

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from recsys.db.events import LoggedRequest

# ----------------------------------------------------------------------------- eval tasks


def task_episodes(
    task: str,
    data_dir: Path,
    *,
    seed: int = 7,
    show_signals: bool = False,
    signal: str = "transitions",
    history_len: int | None = None,
) -> list[Episode]:
    """Episodes on exactly the evaluation harness's instances of a rec task (`recsys eval
    --task rec-movie --seed 7` ranks the same users, histories and candidates), each
    candidate scored by a classical recommender fitted on the task's training interactions
    (every interaction except the evaluated targets): `score` is that recommender's score,
    `signals` = {cf_rank}. `history_len` keeps only the most recent history items."""
    from recsys.eval.baselines import scored_candidates
    from recsys.eval.rankers import make_baseline
    from recsys.eval.tasks import build_task, default_data

    if not task.startswith("rec-"):
        raise UserError(f"training episodes come from rec tasks; got {task!r}")
    taskset = build_task(task, default_data(task, data_dir), seed)
    scorer = make_baseline(signal, seed)
    scorer.fit(taskset)
    out = []
    for inst in taskset.instances:
        cands = scored_candidates(inst, scorer.scores(inst))
        history = inst.history[-history_len:] if history_len else inst.history
        request = RankRequest(
            task=inst.request_task,
            candidates=cands,
            history=history,
            show_signals=show_signals,
            request_id=inst.id,
        )
        out.append(Episode(request=request, ground_truth=inst.target, user=str(inst.user_id)))
    return out


# ----------------------------------------------------------------------------- database


def episode_from_logged(logged: LoggedRequest, *, show_signals: bool = False) -> Episode:
    """Logged traffic (a `recsys.db.events.LoggedRequest`) as a ranking Episode: the shown
    candidates (with their retrieval scores and signals), the history with its item ids
    (hybrid prompts read them), the item the user then chose as ground truth,
    the logged order and its propensity. The one conversion; training and replay use it."""
    candidates = tuple(
        Candidate(c.item_id, c.text, score=c.score, signals=dict(c.signals))
        for c in logged.candidates
    )
    ids = logged.history_ids if len(logged.history_ids) == len(logged.history) else ()
    request = RankRequest(
        task=logged.task,
        candidates=candidates,
        history=logged.history,
        history_ids=ids,
        show_signals=show_signals,
    )
    return Episode(
        request=request,
        ground_truth=logged.ground_truth,
        user=logged.user_id,
        logged_order=logged.shown or None,
        logged_log_propensity=logged.log_propensity,
        logged_fusion_alpha=logged.fusion_alpha,
        logged_abstain_below=logged.fusion_abstain_below,
    )


def episodes_from_database(
    engine: Engine, show_signals: bool = False, since: str | None = None
) -> list[Episode]:
    """Episodes from logged impressions (`recsys.db.events.logged_requests`), shown at or
    after `since` (ISO-8601) when given. Impressions with no interaction among the shown
    items carry no reward signal and are skipped."""
    from datetime import datetime

    from recsys.db.events import logged_requests

    start = datetime.fromisoformat(since) if since else None
    logged = logged_requests(engine=engine, since=start)
    return [episode_from_logged(r, show_signals=show_signals) for r in logged]


# ----------------------------------------------------------------------------- runs


# the learning rate a run uses unless given one, by the base's kind (recsys.hybrid_loop
# .base_kind): the plain LM's full-layer or LoRA updates, and a hybrid's adapter and
# projector (what trained models/hybrid-rec-*-dagger)
DEFAULT_LR = {"plain": 1e-5, "hybrid": 2e-4}


@dataclass
class TrainingOptions:
    source: str = "rec-movie"  # rec-movie | rec-game (eval instances) | db | JSONL file
    since: str | None = None  # source db: traffic shown from then on (ISO-8601)
    signal: str = "transitions"  # the retrieval scorer of eval-task episodes
    algo: str = "distill"
    steps: int = 50
    batch_size: int = 4
    lr: float | None = None  # None: DEFAULT_LR of the base's kind
    group_size: int = 4
    users: int | None = None  # cap on training users
    val_users: int = 100
    val_fraction: float = 0.22
    show_signals: bool = False
    history_len: int = 20
    teacher: str = "retrieval"  # retrieval | none
    expected_weight: float = 1.0
    fusion_alpha: float = 0.0  # validated, registered and served at this weight (finite)
    # the weight the base model is served with now; the gate's baseline is the base served
    # so (RETRIEVAL_ORDER: the retrieval order itself). None: a zero-shot packaged base's
    # (recsys.resolver: the retrieval order), any other base's `fusion_alpha`
    base_served_alpha: float | None = None
    train_fused: bool = False  # train the fused policy (needs fusion_alpha)
    extra_alphas: tuple[float, ...] = ()  # more fusion weights measured (val_mrr_fused@a)
    eval_every: int = 25
    checkpoint_every: int | None = None  # None: TrainConfig's
    lora: bool = False
    model: str = "default"
    device: str | None = None  # None: the settings' (recsys.runtime)
    seed: int = 7
    run_name: str | None = None
    resume: bool = True
    register: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _base_served_alpha(opts: TrainingOptions) -> float:
    """The weight the base is served with (TrainingOptions.base_served_alpha), checked; and
    the training weights checked: training needs a finite weight (at the retrieval order the
    ranker has no influence, nothing to learn)."""
    from ranking.model_spec import PACKAGED_MODELS
    from ranking.types import is_valid_alpha
    from recsys.resolver import UNVALIDATED_SERVING_ALPHA

    for name, alpha in [("fusion_alpha", opts.fusion_alpha),
                        *(("extra_alphas", a) for a in opts.extra_alphas)]:  # fmt: skip
        if not is_valid_alpha(alpha):
            raise UserError(
                f"{name} {alpha!r}: training and validation need a finite weight >= 0 "
                "(the zero-shot default is tuned at "
                "recsys.resolver.UNVALIDATED_TRAINING_ALPHA)"
            )
    alpha = opts.base_served_alpha
    if alpha is None:
        alpha = UNVALIDATED_SERVING_ALPHA if opts.model in PACKAGED_MODELS else opts.fusion_alpha
    if not is_valid_alpha(alpha, retrieval_order=True):
        raise UserError(
            f"base_served_alpha {alpha!r}: a finite weight >= 0, or RETRIEVAL_ORDER (inf)"
        )
    return float(alpha)  # type: ignore[arg-type]


def _baseline_name(alpha: float) -> str:
    """What a version's `val_rr_baseline` measured: the base as it was served."""
    if alpha == RETRIEVAL_ORDER:
        return "retrieval order (the base's serving weight)"
    return f"base fused at alpha {alpha:g}" if alpha else "base alone"


def load_episodes(opts: TrainingOptions, data_dir: Path) -> list[Episode]:
    if opts.source.startswith("rec-"):
        eps = task_episodes(
            opts.source,
            data_dir,
            seed=opts.seed,
            show_signals=opts.show_signals,
            signal=opts.signal,
            history_len=opts.history_len,
        )
    elif opts.source == "db":
        from recsys.db.engine import get_engine

        eps = episodes_from_database(get_engine(), opts.show_signals, opts.since)
    else:
        path = Path(opts.source)
        if not path.exists():
            raise UserError(
                f"episode file {path} not found; use rec-movie, rec-game, db or a JSONL path"
            )
        eps = read_episodes(path)
    if not eps:
        raise UserError(f"no training episodes from source {opts.source!r}")
    if opts.teacher not in ("retrieval", "none"):
        raise UserError(f"--teacher {opts.teacher!r}: use retrieval or none")
    if opts.teacher == "retrieval":
        eps = [
            with_teacher(e, teacher_elimination_order(e.request, opts.seed), gt_last=True)
            for e in eps
        ]
    return eps


def split(opts: TrainingOptions, eps: list[Episode]) -> tuple[list[Episode], list[Episode]]:
    """Training and validation episodes, split by a seeded hash of the user (never a user on
    both sides); a UserError when either side is empty. Validation keeps each user's last
    episode only: its numbers are per user (`reciprocal_ranks`, the gate's paired
    bootstrap), so a user's earlier episodes would be ranked and then overwritten."""
    train, val = split_by_user(eps, opts.val_fraction, seed=opts.seed)
    val = list({e.user: e for e in val}.values())
    if opts.users:
        train = train[: opts.users]
    if not train or not val:
        raise UserError(
            f"the split by user gave {len(train)} training and {len(val)} validation "
            f"episodes: validation takes the users a hash seeded with --seed {opts.seed} puts "
            f"below {opts.val_fraction}. Too few users, or a file of the users a held-out rule "
            "with the same seed keeps (`recsys index-episodes --users train` hashes with "
            "--heldout-seed), leaves one side empty: pass another --seed, or more users"
        )
    return train, val[: opts.val_users]


def retrieval_orders(eps: Sequence[Episode]) -> list[list[str]]:
    out = []
    for e in eps:
        elim = retrieval_elimination_order(e.request)
        out.append(list(reversed(elim)) if elim else list(e.request.ids))
    return out


def run_training(
    opts: TrainingOptions,
    log: Callable[[dict[str, Any]], None] | None = None,
    report: Callable[[float], None] | None = None,
    *,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train, evaluate on held-out users (zero-shot before, tuned after, retrieval order,
    fused), export the model and register it as a candidate ranker version.

    Progress (recsys.progress) counts episodes: each validation episode ranked before and
    after training, and `batch_size` per optimizer step. `report(fraction)` gets it
    (job_runs under Celery), throttled and increasing, 1.0 when the run is registered;
    `show_progress` also shows it on stderr (a bar on a terminal, else a line every 30 s).
    The records passed to `log` carry `episodes_per_s` and `eta_s` (seconds left for the
    whole run at the rate so far), and a step's also `steps_per_s`; log.jsonl keeps the
    trainer's records as they are."""
    import torch

    from ranking.convert import ensure_hf_dir
    from ranking.rl.policy import greedy_orders
    from ranking.rl.trainer import TrainConfig, Trainer
    from recsys import runtime
    from recsys.settings import get_settings

    settings = get_settings()
    base_alpha = _base_served_alpha(opts)
    kind = base_kind(opts.model)
    if kind == "committee":
        refuse_committee(opts.model)
    if opts.lr is None:
        opts = replace(opts, lr=DEFAULT_LR[kind])
    if kind == "hybrid":
        return _run_hybrid(opts, base_alpha, settings.data_dir, report, show_progress)
    try:
        config = TrainConfig(
            algo=opts.algo,
            steps=opts.steps,
            batch_size=opts.batch_size,
            lr=opts.lr,
            group_size=opts.group_size,
            expected_weight=opts.expected_weight,
            eval_every=opts.eval_every,
            **({"checkpoint_every": opts.checkpoint_every} if opts.checkpoint_every else {}),
            seed=opts.seed,
            fusion_alpha=opts.fusion_alpha,
            train_fused=opts.train_fused,
            lora=opts.lora,
            **opts.extra,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    eps = load_episodes(opts, settings.data_dir)
    train, val = split(opts, eps)
    name, out_dir = _run_dir(opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a GGUF model cannot be saved after training: train a de-quantised HF copy (made once)
    base_dir = ensure_hf_dir(opts.model, settings.resolved_model_cache_dir)
    backend = runtime.load_backend(
        settings, model=str(base_dir), device=opts.device, backend="transformers", cache=False
    )
    model = backend.model
    for p in model.parameters():  # fp32 master weights (GPU loads bf16; autocast does the rest)
        p.data = p.data.float()
    (out_dir / "options.json").write_text(json.dumps(asdict(opts), indent=2, default=str))
    base_path = out_dir / "zero_shot.json"
    resumed = min(_checkpoint_step(out_dir), opts.steps) if opts.resume else 0
    progress = Progress(
        (0 if base_path.exists() else len(val))
        + opts.steps * opts.batch_size
        + (len(val) if opts.steps > 0 else 0),
        "training",
        "episodes",
        show=show_progress,
        report=report,
        initial=resumed * opts.batch_size,
    )
    loop_started = [time.monotonic()]

    def on_record(rec: dict[str, Any]) -> None:
        """A trainer record (validation at step 0, or one optimizer step) -> progress, and
        the caller's `log` with rate and ETA added (a copy: the trainer keeps its own)."""
        if "loss" in rec:
            progress.update(opts.batch_size)
        if log is None:
            return
        shown = {**rec, **_speed(progress)}
        if "loss" in rec:
            elapsed = time.monotonic() - loop_started[0]
            shown["steps_per_s"] = round((rec["step"] - resumed) / elapsed, 4) if elapsed else None
        log(shown)

    trainer = Trainer(model, backend.tokenizer, train, val, config, out_dir, log=on_record)

    alphas = (0.0, opts.fusion_alpha, *opts.extra_alphas) if opts.fusion_alpha else (0.0,)
    if base_alpha != RETRIEVAL_ORDER and base_alpha not in alphas:
        alphas = (*alphas, base_alpha)  # the base as served, for the gate's baseline

    def evaluate(what: str) -> list[dict[str, float]]:
        """Reciprocal ranks per user, for the plain and (optionally) the fused ranking."""
        trainer.model.eval()
        orders: list[list[list[str]]] = []
        t0 = time.time()
        with torch.no_grad():
            for k, e in enumerate(val):
                seq = trainer.sequence(e, -1 - k)
                scores = [c.score for c in e.request.candidates]
                orders.append(greedy_orders(trainer.model, seq, scores, alphas))
                progress.update(1)
                if log and ((k + 1) % 10 == 0 or k + 1 == len(val)):
                    log(
                        {
                            "evaluating": what,
                            "done": k + 1,
                            "of": len(val),
                            "seconds": round(time.time() - t0, 1),
                            **_speed(progress),
                        }
                    )
        return [reciprocal_ranks([o[j] for o in orders], val) for j in range(len(alphas))]

    if base_path.exists():  # a resumed run keeps the zero-shot numbers of its start
        base = json.loads(base_path.read_text())
    else:
        rrs = evaluate("zero-shot")
        base = {
            "rr": rrs[0],
            **{f"rr_fused@{a}": r for a, r in zip(alphas[1:], rrs[1:], strict=True)},
        }
        base_path.write_text(json.dumps(base))
    started = time.time()
    loop_started[0] = time.monotonic()
    trainer.run(resume=opts.resume)
    wall = time.time() - started
    rrs = (
        evaluate("tuned")
        if opts.steps > 0
        else [base["rr"]] + [base[f"rr_fused@{a}"] for a in alphas[1:]]
    )  # steps 0: a zero-shot measurement, nothing new to evaluate
    tuned = {"rr": rrs[0], **{f"rr_fused@{a}": r for a, r in zip(alphas[1:], rrs[1:], strict=True)}}
    (out_dir / "tuned_fused.json").write_text(json.dumps(tuned))
    retrieval = reciprocal_ranks(retrieval_orders(val), val)

    def served_at(alpha: float) -> str:
        """The key of the results at weight `alpha` (as it is spelled in `alphas`)."""
        return next((f"rr_fused@{a}" for a in alphas[1:] if a == alpha), "rr")

    # what the gate reads (recsys.gate). A version with a fusion_alpha is SERVED fused
    # (recsys.resolver), so its per-user results are the fused ones; the baseline is the
    # model it was tuned from as that is served now: fused at its own weight, or, for a
    # zero-shot packaged base, the retrieval order itself.
    baseline = retrieval if base_alpha == RETRIEVAL_ORDER else base[served_at(base_alpha)]
    validation = ValidationResults(
        rr=tuned[served_at(opts.fusion_alpha)], baseline=baseline, retrieval=retrieval
    )
    metrics: dict[str, Any] = {
        "task": opts.source,
        "signal": opts.signal,
        "n_train": len(train),
        "n_val": len(val),
        "steps": opts.steps,
        "algo": opts.algo,
        "show_signals": opts.show_signals,
        "train_seconds": round(wall, 1),
        "val_mrr": _mrr(tuned["rr"]),
        "val_mrr_zero_shot": _mrr(base["rr"]),
        "val_mrr_retrieval": _mrr(retrieval),
        # what val_rr_baseline is: the base served at the retrieval order, or at a weight
        "val_baseline": _baseline_name(base_alpha),
        **validation.to_metrics(),
    }
    if opts.fusion_alpha:
        metrics.update(
            {
                "fusion_alpha": opts.fusion_alpha,
                "val_mrr_fused": _mrr(tuned[f"rr_fused@{opts.fusion_alpha}"]),
                "val_mrr_zero_shot_fused": _mrr(base[f"rr_fused@{opts.fusion_alpha}"]),
            }
        )
        for a in alphas[1:]:
            metrics[f"val_mrr_fused@{a}"] = _mrr(tuned[f"rr_fused@{a}"])
            metrics[f"val_mrr_zero_shot_fused@{a}"] = _mrr(base[f"rr_fused@{a}"])
        metrics["val_rr_ranker_alone"] = tuned["rr"]
    metrics["val_mrr_served"] = _mrr(validation.rr)
    _save_and_register(opts, name, out_dir, trainer.export(out_dir / "model"), metrics)
    progress.close()
    return metrics


def _run_dir(opts: TrainingOptions) -> tuple[str, Path]:
    """The run's name (a version's, when registered) and its artifact folder."""
    from recsys.settings import get_settings

    name = opts.run_name or time.strftime("ranker-%Y%m%d-%H%M%S")
    return name, get_settings().resolved_artifact_dir / "training" / name


def _mrr(rr: dict[str, float]) -> float:
    """Per-user reciprocal ranks as MRR x 100."""
    return 100 * sum(rr.values()) / max(1, len(rr))


def _save_and_register(
    opts: TrainingOptions, name: str, out_dir: Path, model_dir: Path, metrics: dict[str, Any]
) -> None:
    """metrics.json beside the run; then `metrics` names the exported folder and version,
    registered when `opts.register`."""
    write_whole(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    metrics["artifact"], metrics["version"] = str(model_dir), name
    if opts.register:
        _register(name, model_dir, metrics)


def _run_hybrid(
    opts: TrainingOptions,
    base_alpha: float,
    data_dir: Path,
    report: Callable[[float], None] | None,
    show_progress: bool,
) -> dict[str, Any]:
    """A hybrid base's run (recsys.hybrid_loop) on this run's episodes, with its progress
    (`batch_size` per optimizer step, then the validation users ranked twice: the candidate
    and the base, each as served) and the metrics and registration of a plain run."""
    from recsys.hybrid_loop import run_hybrid_training

    train, val = split(opts, load_episodes(opts, data_dir))
    name, out_dir = _run_dir(opts)
    total = opts.steps * opts.batch_size + 2 * len(val)
    with Progress(total, "training", "episodes", show=show_progress, report=report) as progress:
        run = run_hybrid_training(opts, base_alpha, train, val, out_dir, progress=progress.update)
    retrieval = reciprocal_ranks(retrieval_orders(val), val)
    baseline = retrieval if run.baseline is None else run.baseline
    validation = ValidationResults(rr=run.served, baseline=baseline, retrieval=retrieval)
    metrics: dict[str, Any] = {
        "task": opts.source, "signal": opts.signal, "n_train": len(train), "n_val": len(val),
        "steps": opts.steps, "algo": "hybrid-served-rr", "base_kind": "hybrid",
        "train_seconds": run.train_seconds, "val_mrr": _mrr(run.served),
        "val_mrr_zero_shot": _mrr(baseline), "val_mrr_retrieval": _mrr(retrieval),
        "val_baseline": _baseline_name(base_alpha), "val_mrr_served": _mrr(run.served),
        **validation.to_metrics(),
    }  # fmt: skip
    if opts.fusion_alpha:
        metrics["fusion_alpha"] = opts.fusion_alpha
    _save_and_register(opts, name, out_dir, run.model_dir, metrics)
    return metrics


def _checkpoint_step(out_dir: Path) -> int:
    """The optimizer steps a resumed run starts from (its checkpoint's; 0 without one)."""
    from ranking.rl.trainer import checkpoint_path

    path = checkpoint_path(out_dir)
    if path is None:
        return 0
    return int(json.loads((path / "state.json").read_text()).get("step", 0))


def _speed(progress: Progress) -> dict[str, float | None]:
    rate, eta = progress.rate, progress.eta_s
    return {
        "episodes_per_s": None if rate is None else round(rate, 4),
        "eta_s": None if eta is None else round(eta, 1),
    }


def _register(version: str, model_dir: Path, metrics: dict[str, Any]) -> None:
    from recsys import registry
    from recsys.db.engine import get_engine
    from recsys.db.migrate import ensure_schema
    from recsys.db.registry import register_model

    ensure_schema(None)
    stored = {k: v for k, v in metrics.items() if k not in ("artifact", "version")}
    register_model(
        "ranker",
        version,
        str(model_dir),
        sha256=registry.sha256_of(model_dir),
        metrics=stored,
        engine=get_engine(None),
    )
