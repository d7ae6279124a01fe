"""The closed loop, one turn: logged traffic -> fine-tune -> candidate -> gate -> promote ->
servers reload -> replay report. Celery beat runs it on `RECSYS_LOOP_SCHEDULE`
(jobs.tasks.improve_ranker); `recsys loop` runs one turn from the command line.

1. **Traffic.** The logged requests with an outcome since the promoted version was promoted
   (all of them before anything is promoted). Fewer than `min_requests`, or nothing new
   since the last turn's candidate (refused, or waiting for a person), and the turn stops,
   saying so: fine-tuning on a handful of requests would only fit noise, and on the same
   requests again would only repeat the refused candidate.
2. **Fine-tune** (recsys.training, source `db`) from the promoted version (else the
   settings' model) at the base's training weight (`ResolvedRanker.training_alpha`: a
   version's measured weight; 10 for the zero-shot default, which is served at the
   retrieval order itself); the result is registered as a candidate ranker version, to be
   served at that weight, with per-user results on held-out users of that traffic (users
   split off by hash, never trained on).
3. **Gate** (recsys.gate): the candidate, as it would be served, must beat the promoted
   version — or, with nothing promoted, the model it was tuned from as it is served now
   (the retrieval order, for the zero-shot default) — on those users by
   `RECSYS_GATE_MARGIN` with a paired bootstrap interval above zero, and not rank worse
   than retrieval. With `RECSYS_LOOP_OFFLINE_TASK` (e.g. rec-movie) it must also not
   regress on the offline evaluation: base and candidate on the same seeded instances,
   refused when the paired ΔMRR interval lies below zero.
4. **Promote** when the gate passes and `RECSYS_AUTO_PROMOTE` is on. Servers started with
   `RECSYS_MODEL=promoted` see the new version at their next registry poll
   (`RECSYS_RELOAD_POLL_S`) and swap it in without a failed request (recsys.api.serving).
   A refused candidate stays registered, never promoted, and the turn's result says why.
5. **Replay** the new version against the old on the same traffic (recsys.replay.run); the
   report's path is in the result, which `recsys jobs show` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from recsys.progress import within
from recsys.settings import Settings


@dataclass
class LoopConfig:
    min_requests: int = 50
    steps: int = 50
    batch_size: int = 8
    lr: float | None = None  # None: the base's kind's default (recsys.training.DEFAULT_LR)
    # the paper's expected-step RL on the logged outcome; no teacher order (the retrieval
    # order a teacher would follow is what the served ranking already started from)
    algo: str = "expected"
    teacher: str = "none"
    val_fraction: float = 0.3
    auto_promote: bool | None = None  # None: the settings' RECSYS_AUTO_PROMOTE
    replay: bool = True
    replay_draws: int = 8  # sampled rankings per policy for the per-position estimates
    offline_task: str | None = None  # e.g. rec-movie: also gate on the offline evaluation
    offline_users: int = 100
    device: str | None = None
    run_name: str | None = None
    training: dict[str, Any] = field(default_factory=dict)  # more TrainingOptions fields
    progress: bool = False  # training and replay progress on stderr (`recsys loop` sets it)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LoopConfig:
        """The settings' loop knobs (RECSYS_LOOP_*), then the `overrides` that are not None:
        what the scheduled task and `recsys loop` both run."""
        values = {
            "min_requests": settings.loop_min_requests,
            "steps": settings.loop_steps,
            "lr": settings.loop_lr,
            "replay_draws": settings.loop_replay_draws,
            "offline_task": settings.loop_offline_task,
            "offline_users": settings.loop_offline_users,
        }
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


Report = Callable[[float], None]


def improve(
    config: LoopConfig, *, settings: Settings, engine: Engine, report: Report = lambda p: None
) -> dict[str, Any]:
    """One turn of the loop (module docstring); returns what each step did. `report`
    (job_runs.progress under Celery) gets 0.05 before fine-tuning, the training's own
    progress within 0.05..0.6, 0.6, 0.7, 0.8 after each step, the replay's within 0.8..1.0."""
    from recsys.db.events import logged_requests
    from recsys.db.registry import current_model

    promoted = current_model("ranker", engine=engine)
    since = promoted.promoted_at if promoted is not None else None
    base = promoted.version if promoted is not None else settings.model
    steps: dict[str, Any] = {"base": base, "since": since.isoformat() if since else None}
    n = len(logged_requests(engine=engine, since=since))
    steps["logged_requests"] = n
    last = _last_candidate(since, engine)
    if last is not None and not logged_requests(engine=engine, since=last.created_at, limit=1):
        return {
            **steps,
            "status": "skipped",
            "reason": f"no new logged traffic since candidate {last.version} was tuned on "
            "the same requests; the next turn waits for more",
        }
    if n < config.min_requests:
        return {
            **steps,
            "status": "skipped",
            "reason": f"{n} logged requests with an outcome since {_when(since)}; "
            f"the loop needs {config.min_requests} (RECSYS_LOOP_MIN_REQUESTS)",
        }
    report(0.05)
    metrics = _fine_tune(config, base, since, settings, within(report, 0.05, 0.6))
    candidate = metrics["version"]
    steps["candidate"] = candidate
    steps["val_mrr"] = {k: metrics.get(k) for k in ("val_mrr_served", "val_mrr_zero_shot")}
    report(0.6)
    offline = None
    if config.offline_task:
        offline = steps["offline"] = offline_check(config, base, candidate, settings)
    report(0.7)
    steps["gate"], steps["promoted"] = _gate_and_promote(
        config, candidate, settings, engine, offline
    )
    report(0.8)
    if config.replay:
        steps["replay_report"] = _replay(
            config, base, candidate, since, settings, engine, within(report, 0.8, 1.0)
        )
    passed = steps["gate"]["allowed"]
    steps["status"] = "promoted" if steps["promoted"] else "passed" if passed else "refused"
    return steps


def _last_candidate(since: datetime | None, engine: Engine):  # type: ignore[no-untyped-def]
    """The newest ranker version registered after the promotion (a turn's candidate)."""
    from recsys.db.registry import list_models

    versions = list_models("ranker", engine=engine)
    newest = versions[0] if versions else None
    if newest is None or newest.promoted_at is not None:
        return None
    if since is not None and newest.created_at <= since:
        return None
    return newest


def _when(since: datetime | None) -> str:
    return f"the promotion at {since:%Y-%m-%d %H:%M:%S}" if since else "the start"


def _fine_tune(
    config: LoopConfig,
    base: str,
    since: datetime | None,
    settings: Settings,
    report: Report | None = None,
) -> dict[str, Any]:
    from recsys.resolver import resolve_ranker
    from recsys.training import TrainingOptions, run_training

    resolved = resolve_ranker(base)
    # tuned, validated and registered at the base's training weight (its measured serving
    # weight; for a zero-shot packaged base, which is served at the retrieval order and so
    # has no weight to learn at, UNVALIDATED_TRAINING_ALPHA), and gated against the base as
    # it is served now: the gate compares what would be served with what is served
    options = TrainingOptions(
        fusion_alpha=resolved.training_alpha or 0.0,
        base_served_alpha=resolved.fusion_alpha or 0.0,
        source="db",
        since=since.isoformat() if since else None,
        model=resolved.model,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        algo=config.algo,
        teacher=config.teacher,
        val_fraction=config.val_fraction,
        device=config.device,
        run_name=config.run_name,
        resume=config.run_name is not None,
        **config.training,
    )
    return run_training(options, report=report, show_progress=config.progress)


def offline_check(
    config: LoopConfig, base: str, candidate: str, settings: Settings
) -> dict[str, Any]:
    """The offline evaluation: base and candidate, each at its serving weight (the zero-shot
    default: the order of the fusion signal, its retrieval order here), on the same
    seeded `offline_users` instances of `offline_task` (recsys.eval); the paired ΔMRR x100
    with its bootstrap interval. `allowed` is False when the candidate is worse with the
    whole interval below zero: a regression on the standard protocol."""
    from recsys.eval.harness import evaluate, make_ranker
    from recsys.eval.tasks import build_task, default_data
    from recsys.resolver import resolve_ranker
    from recsys.stats import paired_difference

    task = build_task(
        config.offline_task, default_data(config.offline_task, settings.data_dir), seed=7
    ).limited(config.offline_users, 7)
    rr = {}
    for name, spec in (("base", base), ("candidate", candidate)):
        resolved = resolve_ranker(spec)
        ranker = make_ranker(
            "incremental",
            model=resolved.model,
            device=config.device,
            fusion_alpha=resolved.fusion_alpha or 0.0,
        )
        run = evaluate(ranker, task, progress=False)
        rr[name] = {i["id"]: i["mrr"] for i in run.instances}
    ids = sorted(rr["base"])
    ci = paired_difference([rr["candidate"][i] for i in ids], [rr["base"][i] for i in ids], seed=0)
    diff, low, high = 100 * ci.mean, 100 * ci.low, 100 * ci.high
    return {
        "task": config.offline_task,
        "instances": len(ids),
        "allowed": high >= 0,
        "reason": f"offline {config.offline_task}: ΔMRR {diff:+.2f} [{low:+.2f}, "
        f"{high:+.2f}] over {len(ids)} instances vs {base}",
    }


def _gate_and_promote(
    config: LoopConfig,
    candidate: str,
    settings: Settings,
    engine: Engine,
    offline: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    from recsys.db.registry import current_model, get_model
    from recsys.gate import evaluation_gate
    from recsys.registry import promote, promotion_decision

    info = get_model("ranker", candidate, engine=engine)
    decision = promotion_decision(info, current_model("ranker", engine=engine), [evaluation_gate])
    gate = {"allowed": decision.allowed, "reason": decision.reason}
    if decision.allowed and offline is not None:
        gate = {
            "allowed": offline["allowed"],
            "reason": f"{decision.reason}; {offline['reason']}"
            + ("" if offline["allowed"] else ": worse than the promoted version"),
        }
    auto = settings.auto_promote if config.auto_promote is None else config.auto_promote
    if not gate["allowed"]:
        return gate, False
    if not auto:
        gate["reason"] += "; not promoted: RECSYS_AUTO_PROMOTE is off"
        return gate, False
    promote("ranker", candidate, extra_gates=[evaluation_gate], engine=engine)
    return gate, True


def _replay(
    config: LoopConfig,
    base: str,
    candidate: str,
    since: datetime | None,
    settings: Settings,
    engine: Engine,
    report: Report | None = None,
) -> str:
    from recsys.replay.run import ReplayConfig, run_replay

    out = Path(settings.resolved_artifact_dir) / "replay" / candidate
    run_replay(
        ReplayConfig(
            a=base,
            b=candidate,
            since=since,
            slate_draws=config.replay_draws,
            logging_model=base,
            device=config.device,
            out=out,
            progress=config.progress,
        ),
        engine=engine,
        report=report,
    )
    return str(out / "report.md")
