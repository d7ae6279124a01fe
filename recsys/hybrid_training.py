"""`recsys train-ranker`: train a hybrid ranker (CF soft tokens) on a rec task, on a CPU.

Data, for task T (rec-movie, rec-game; `recsys eval --task T --seed S` builds the same):

* the training log: every interaction except the evaluated targets (`TaskSet.train`);
* item vectors: LightFM WARP factors and bias fitted on that log, standardised per column;
  with `--vectors lightfm+text` also the first `TEXT_DIMS` principal components of the
  titles' all-MiniLM-L6-v2 embeddings, standardised (what a title says, without its tokens
  in the prompt);
* users: held-out users (`recsys eval --users heldout`, a seeded hash of the user id) are
  never trained on; a further 5% of users are the validation set. `--users all` trains on
  the held-out users' logs as well (the same-log protocol, docs/training.md): their
  evaluated targets are not in the log, so no evaluated target is trained on, and the
  LM then sees what LambdaMART's feature models and training groups already see;
* episodes: every prefix of each training user's sequence with at least `min_history`
  items before it (`--positions N`: the last N only; `--min-items M`: users with at least
  M items in the log only) — the next item is the truth, the 20 items before it the history, 19
  negatives the user never interacted with (4 hard ones from the CF top-100, the rest
  uniform), shuffled; the teacher eliminates the negatives in the reverse order of the
  z(LightFM) + z(transitions) ensemble, the truth last.

The model folder (`ranking.hybrid`) holds the LoRA adapter, the projector, the item
vectors and a card; `recsys eval --model FOLDER` and `RECSYS_MODEL=FOLDER` serve it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ranking.rl.episodes import Episode
from ranking.types import Candidate, RankRequest
from recsys.errors import UserError

VAL_FRACTION = 0.05  # of the non-held-out users, by the same hash, above the held-out share
VECTOR_KINDS = ("lightfm", "lightfm+text")
TRAIN_USERS = ("train", "all")  # `--users`: the non-held-out users, or every user of the log
TEXT_DIMS = 32  # principal components of the title embeddings kept


@dataclass
class HybridTrainOptions:
    task: str = "rec-movie"
    out: Path = Path("models/hybrid-rec-movie")
    work_dir: Path | None = None  # checkpoints and logs (default: OUT.work)
    base: str = "default"
    inject_layer: int = 22
    title_chars: int | None = 0
    min_history: int = 5
    history: int = 20  # history items an episode shows (recsys.eval.instances.HISTORY_LEN)
    hard_negatives: int = 4
    supervised_steps: int = 1000
    rl_steps: int = 250
    batch_size: int = 8
    lr: float = 5e-4
    lora_r: int = 16
    seed: int = 7
    device: str | None = None  # None: the settings' (recsys.runtime)
    resume: bool = True
    export_only: bool = False  # write the model folder from the last checkpoint, no training
    fusion_alpha: float | None = None  # the measured serving weight, recorded in the card
    init: Path | None = None  # start a new run from an exported model folder's weights
    batch_offset: int = 0  # batches drawn from this index of the seed's stream on
    bundle: Path | None = None  # pack the run for another machine (ranking.rl.bundle) instead
    vectors: str = "lightfm"  # one of VECTOR_KINDS
    cache_dir: Path | None = None  # title embeddings cached here (lightfm+text)
    fit_cache_dir: Path | None = None  # fitted LambdaMART kept here (recsys.eval.fit_cache)
    # > 0: train the policy fused with LambdaMART at this weight (recsys.hybrid_residual)
    residual_alpha: float = 0.0
    residual_positions: int = 10  # its episodes: each training user's last N items
    ce_weight: float = 0.5  # RL stage: weight of the supervised loss kept
    # residual episodes ranked with item vectors fitted without them (recsys.hybrid_residual)
    honest_vectors: bool = False
    trajectory: str = "teacher"  # the states trained on (ranking.rl.supervised)
    reward: str = "step"  # the RL stage's reward term (ranking.rl.supervised.REWARDS)
    users: str = "train"  # one of TRAIN_USERS
    positions: int = 0  # > 0: each user's last N items only
    val_positions: int = 1  # each validation user's last N items are validation episodes
    min_items: int = 0  # users with fewer items in the training log are skipped

    def __post_init__(self) -> None:
        """Every option checked here, named as `recsys train-ranker` spells it, so a bad one
        fails before the minutes-long episode build (a UserError, not a stack trace)."""
        from ranking.folders import replaceable
        from ranking.hybrid import MANIFEST
        from ranking.rl.bundle import BUNDLE_MANIFEST
        from ranking.rl.supervised import REWARDS, TRAJECTORIES
        from recsys.eval.instances import HISTORY_LEN, N_NEGATIVES

        checks = [
            (self.vectors in VECTOR_KINDS, f"--vectors {self.vectors!r}: use one of "
             f"{', '.join(VECTOR_KINDS)}"),
            (self.trajectory in TRAJECTORIES, f"--trajectory {self.trajectory!r}: use one of "
             f"{', '.join(TRAJECTORIES)}"),
            (self.reward in REWARDS, f"--reward {self.reward!r}: use one of {', '.join(REWARDS)}"),
            (0 <= self.residual_alpha <= 1000,
             f"--residual-alpha {self.residual_alpha}: use a weight in [0, 1000]"),
            (0 <= self.ce_weight <= 100, f"--ce-weight {self.ce_weight}: use a weight in [0, 100]"),
            (1 <= self.history <= 200, f"--history {self.history}: use 1 to 200"),
            (self.history == HISTORY_LEN or not self.residual_alpha,
             "--history applies to the plain and served-trajectory runs; a --residual-alpha "
             f"run's episodes show {HISTORY_LEN} items, as LambdaMART's training groups"),
            (0 <= self.hard_negatives <= N_NEGATIVES,
             f"--hard-negatives {self.hard_negatives}: use 0 to {N_NEGATIVES}"),
            (1 <= self.residual_positions <= 1000,
             f"--residual-positions {self.residual_positions}: use 1 to 1000"),
            (self.users in TRAIN_USERS, f"--users {self.users!r}: use one of "
             f"{', '.join(TRAIN_USERS)}"),
            (0 <= self.positions <= 1000, f"--positions {self.positions}: use 0 (all) to 1000"),
            (0 <= self.min_items <= 10000, f"--min-items {self.min_items}: use 0 to 10000"),
            (1 <= self.val_positions <= 100,
             f"--val-positions {self.val_positions}: use 1 to 100"),
            (not self.residual_alpha
             or (self.users == "train" and not self.positions and not self.min_items
                 and self.val_positions == 1),
             "--users all, --positions, --min-items and --val-positions apply to the plain and "
             "served-trajectory runs; a --residual-alpha run takes its episodes from "
             "--residual-positions"),
            (self.bundle is not None or replaceable(self.out, MANIFEST),
             f"--out {self.out} exists and is not a hybrid model folder (no {MANIFEST}); "
             "exporting there would replace its contents: name a new or empty folder"),
            (self.bundle is None or replaceable(self.bundle, BUNDLE_MANIFEST),
             f"--bundle {self.bundle} exists and is not a bundle folder (no "
             f"{BUNDLE_MANIFEST}); writing there would replace its contents: name a new or "
             "empty folder"),
            (not self.honest_vectors or bool(self.residual_alpha),
             "--honest-vectors applies to --residual-alpha runs (their episodes are the items "
             "a separate fit leaves out); add --residual-alpha A"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise UserError(message)


@dataclass
class EpisodeSet:
    train: list[Episode]
    val: list[Episode]
    item_ids: list[str]
    vectors: np.ndarray  # what the exported model serves with
    info: dict[str, Any]
    # what the episodes are ranked with in training when that differs from `vectors`
    # (`--honest-vectors`: a fit without the episodes' items, recsys.hybrid_residual)
    train_vectors: np.ndarray | None = None


def build_episodes(
    task: str, data_dir: Path, opts: HybridTrainOptions, *, vectors_only: bool = False
) -> EpisodeSet:
    """Training and validation episodes and the item vectors (module doc); with
    `vectors_only` (exporting a checkpoint) the vectors alone."""
    from recsys.eval.ltr import cf_ranked
    from recsys.eval.tasks import HELDOUT_FRACTION, rng_for, user_fold

    taskset, models, item_ids, vectors = task_and_vectors(task, data_dir, opts)
    train, titles = taskset.train, taskset.catalogue
    assert train is not None and titles is not None
    catalogue = np.array(sorted(titles))
    out_train, out_val, skipped = [], [], 0
    users = train.group_by("user_id", maintain_order=True).agg("item_id")
    for user, items in [] if vectors_only else users.iter_rows():
        fold = user_fold(str(user), opts.seed)
        if (fold < HELDOUT_FRACTION and opts.users == "train") or len(items) < opts.min_items:
            continue  # held-out users: evaluation only (unless --users all)
        is_val = HELDOUT_FRACTION <= fold < HELDOUT_FRACTION + VAL_FRACTION
        rng = rng_for(opts.seed, f"hybrid:{user}")
        pool = catalogue[~np.isin(catalogue, items)]
        hard_pool = cf_ranked(models, str(user), pool, 100)
        for t in episode_positions(len(items), is_val, opts):
            ep = _episode(task, str(user), items, t, pool, hard_pool, rng, models, titles, opts)
            if ep is None:
                skipped += 1
                continue
            (out_val if is_val else out_train).append(ep)
    if not out_train and not vectors_only:
        raise UserError(f"{task}: no training episodes (users with > {opts.min_history} items?)")
    info = {"task": task, "train_episodes": len(out_train), "val_episodes": len(out_val),
            "skipped": skipped, "item_vectors": VECTOR_INFO[opts.vectors],
            "heldout_fraction": HELDOUT_FRACTION, "seed": opts.seed, "users": opts.users,
            "positions": opts.positions or "all", "min_items": opts.min_items,
            "history": opts.history,
            "val_positions": opts.val_positions}  # fmt: skip
    return EpisodeSet(out_train, out_val, item_ids, vectors, info)


def episode_positions(n_items: int, is_val: bool, opts: HybridTrainOptions) -> range:
    """The indices t of a user's log whose item is an episode's truth (items[:t] before it):
    a validation user's last `val_positions` items (never fewer than `min_history` before);
    else every t >= `min_history`, or the last `positions` of them."""
    if is_val:
        return range(max(opts.min_history, n_items - opts.val_positions), n_items)
    first = (
        opts.min_history if not opts.positions else max(opts.min_history, n_items - opts.positions)
    )
    return range(first, n_items)


def task_and_vectors(
    task: str, data_dir: Path, opts: HybridTrainOptions
) -> tuple[Any, Any, list[str], np.ndarray]:
    """The task (`recsys eval`'s, same seed), the feature models fitted on its training log,
    and the item ids with their vectors (module doc)."""
    from recsys.eval.ltr import fit_feature_models
    from recsys.eval.tasks import build_task, default_data

    if not task.startswith("rec-"):
        raise UserError(f"train-ranker trains on rec tasks; got {task!r}")
    taskset = build_task(task, default_data(task, data_dir), opts.seed)
    assert taskset.train is not None and taskset.catalogue is not None
    models = fit_feature_models(taskset.train, taskset, opts.seed)
    item_ids = models.item_order
    vectors = cf_vectors(models)
    if opts.vectors == "lightfm+text":
        titles = taskset.catalogue
        text = title_components([titles.get(i, i) for i in item_ids], TEXT_DIMS, opts.cache_dir)
        vectors = np.column_stack([vectors, _standardised(text)])
    return taskset, models, item_ids, vectors


VECTOR_INFO = {
    "lightfm": "lightfm-warp-64f+bias, standardised",
    "lightfm+text": f"lightfm-warp-64f+bias + {TEXT_DIMS} PCs of all-MiniLM-L6-v2 title "
    "embeddings, standardised",
}


def cf_vectors(models: Any) -> np.ndarray:
    """The LightFM part of the item vectors: factors and bias, standardised per column, in
    the feature models' item order."""
    return _standardised(np.column_stack([models.cf.item_factors, models.cf.item_biases[:, None]]))


def _standardised(raw: np.ndarray) -> np.ndarray:
    return ((raw - raw.mean(0)) / (raw.std(0) + 1e-6)).astype(np.float32)


def title_components(
    titles: list[str], dims: int, cache_dir: Path | None = None, encoder: Any = None
) -> np.ndarray:
    """(len(titles), dims): the titles' sentence embeddings projected on their first
    `dims` principal components (numpy SVD of the centred matrix)."""
    from retrieval.embeddings import TextEmbedder

    emb = TextEmbedder(encoder, cache_dir=cache_dir).embed(titles, progress=len(titles) > 1000)
    centred = emb - emb.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[: min(dims, vt.shape[0])].T).astype(np.float32)


def _episode(task, user, items, t, pool, hard_pool, rng, models, titles, opts) -> Episode | None:  # type: ignore[no-untyped-def]
    from recsys.eval.ltr import mixed_negatives
    from recsys.eval.tasks import N_NEGATIVES

    target, history = items[t], items[max(0, t - opts.history) : t]
    if len(pool) < N_NEGATIVES:
        return None
    ids = [target, *mixed_negatives(hard_pool, pool, N_NEGATIVES, opts.hard_negatives, rng)]
    ids = [ids[i] for i in rng.permutation(len(ids))]
    return scored_episode(task, user, t, target, history, ids, titles,
                          teacher_scores=models.ensemble(user, history, ids))  # fmt: skip


def scored_episode(  # type: ignore[no-untyped-def]
    task, user, t, target, history, ids, titles, *, teacher_scores, candidate_scores=None
) -> Episode:
    """The episode of user's item t: the teacher eliminates by ascending `teacher_scores`,
    the truth last; `candidate_scores` (the fusion signal) ride on the candidates."""
    given = [None] * len(ids) if candidate_scores is None else [float(s) for s in candidate_scores]
    teacher = [ids[i] for i in np.argsort(teacher_scores, kind="stable") if ids[i] != target]
    request = RankRequest(
        task=task,
        candidates=tuple(
            Candidate(id=i, text=titles[i], score=g) for i, g in zip(ids, given, strict=True)
        ),
        history=tuple(titles.get(h, h) for h in history),
        history_ids=tuple(history),
        request_id=f"{task}:{user}:{t}",
    )
    return Episode(request=request, ground_truth=target, user=user,
                   teacher_order=(*teacher, target))  # fmt: skip


EpisodeBuilder = Callable[[str, Path, HybridTrainOptions], EpisodeSet]


def train_hybrid(
    opts: HybridTrainOptions,
    data_dir: Path,
    echo: Callable[[str], None] = print,
    episodes: EpisodeBuilder | None = None,
) -> dict[str, Any]:
    """Build episodes (`build_episodes`, or `episodes`, e.g.
    `recsys.hybrid_residual.build_residual_episodes`), train (resuming from the work
    folder's checkpoint), export. Exporting needs the vectors only."""
    import torch

    from ranking.hybrid import Hybrid, HybridConfig
    from ranking.rl.supervised import SupervisedConfig, SupervisedTrainer, saved_config
    from recsys import runtime
    from recsys.provenance import code_version

    work = opts.work_dir or opts.out.with_name(opts.out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    t0, code = time.perf_counter(), code_version()  # the code this run loaded, not later edits
    if opts.residual_alpha and episodes is None and not opts.export_only:
        raise UserError(
            "residual_alpha trains on scored episodes: pass episodes="
            "recsys.hybrid_residual.build_residual_episodes (what `recsys train-ranker "
            "--residual-alpha` does)"
        )
    if opts.export_only or episodes is None:
        data = build_episodes(opts.task, data_dir, opts, vectors_only=opts.export_only)
    else:
        data = episodes(opts.task, data_dir, opts)
    echo(f"episodes: {data.info['train_episodes']} train, {data.info['val_episodes']} val "
         f"({time.perf_counter() - t0:.0f}s)")  # fmt: skip
    base = runtime.load_backend(
        model=opts.base, device=opts.device, backend="transformers", cache=False
    )
    config = HybridConfig(
        base=opts.base,
        inject_layer=opts.inject_layer,
        vector_dim=data.vectors.shape[1],
        title_chars=opts.title_chars,
        vector_kind=opts.vectors,
    )
    cfg = SupervisedConfig(supervised_steps=opts.supervised_steps, rl_steps=opts.rl_steps,
                           batch_size=opts.batch_size, lr=opts.lr, lora_r=opts.lora_r,
                           seed=opts.seed, batch_offset=opts.batch_offset,
                           fusion_alpha=opts.residual_alpha, ce_weight=opts.ce_weight,
                           trajectory=opts.trajectory, reward=opts.reward)  # fmt: skip
    if opts.bundle is not None:
        return _write_bundle(opts, data, base, config, cfg, echo)
    torch.manual_seed(opts.seed)
    trained_with = data.vectors if data.train_vectors is None else data.train_vectors
    hybrid = Hybrid(base.model, base.tokenizer, data.item_ids, trained_with, config)
    trainer = SupervisedTrainer(base.model, hybrid, data.train, data.val, cfg, work,
                                progress=_progress_line(cfg.total_steps, echo))  # fmt: skip
    if opts.export_only:
        if not trainer.load_checkpoint(check=False):  # whatever it was trained with
            raise UserError(f"--export-only: no checkpoint under {work}; train first")
        echo(f"exporting the checkpoint of step {trainer.step}/{cfg.total_steps}")
    else:
        from ranking.rl.supervised import CheckpointMismatch

        try:
            if opts.init is not None and not (opts.resume and trainer.load_checkpoint()):
                _init_from(trainer, opts.init)  # a fresh run only; a checkpoint is further along
                echo(f"initialised from {opts.init}")
            trainer.run(resume=opts.resume)
        except CheckpointMismatch as exc:
            raise UserError(f"{exc} (--restart starts over in {work})") from None
    # the model serves the vectors of the whole training log (honest for served requests,
    # whose target is never in it), whatever the episodes were ranked with
    hybrid.vectors = torch.as_tensor(data.vectors, device=hybrid.vectors.device)
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines() if line]
    card = {"options": {k: str(v) for k, v in asdict(opts).items()}, "data": data.info,
            "steps_done": trainer.step, "episodes_seen": trainer.step * cfg.batch_size,
            "fusion_alpha": opts.fusion_alpha,
            "trained_with": asdict(trainer.cfg) if not opts.export_only else saved_config(work),
            "final": next((r for r in reversed(log) if "val_mrr_first_step" in r), {}),
            "episodes_per_s": float(np.median([r["episodes_per_s"] for r in log[-200:]])),
            "wall_s": round(time.perf_counter() - t0, 1), "code": code}  # fmt: skip
    folder = trainer.export(opts.out, extra={"card.json": json.dumps(card, indent=2) + "\n"})
    echo(f"wrote {folder}")
    return card


def _write_bundle(opts, data, base, config, cfg, echo) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The run packed for a GPU machine (ranking.rl.bundle), not trained here."""
    from ranking.rl.bundle import write_bundle

    assert opts.bundle is not None
    if opts.title_chars != 0:
        raise UserError("--bundle carries no titles: use --title-chars 0")
    if data.train_vectors is not None:
        raise UserError("--bundle carries one vector table: train --honest-vectors runs here")
    t0 = time.perf_counter()
    folder = write_bundle(opts.bundle, model=base.model, tokenizer=base.tokenizer,
                          config=config, item_ids=data.item_ids, vectors=data.vectors,
                          train=data.train, val=data.val, training=cfg, init=opts.init,
                          info=data.info)  # fmt: skip
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    echo(
        f"wrote the bundle {folder} ({size / 2**20:.1f} MiB, {time.perf_counter() - t0:.0f}s); "
        f"train it with `python -m ranking.rl.bundle {folder} --out DIR --device cuda`"
    )
    return {"bundle": str(folder), "bytes": size, "data": data.info}


def _init_from(trainer: Any, init: Path) -> None:
    try:
        trainer.init_from(init)
    except ValueError as exc:  # a model that does not fit (ranking.rl.supervised.widened)
        raise UserError(f"--init {init}: {exc}") from None


def _progress_line(total: int, echo: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """A line every 25 steps: step, loss, episodes/s, ETA (and validation when measured)."""
    start = time.perf_counter()
    first: list[int] = []

    def show(rec: dict[str, Any]) -> None:
        step = rec["step"] + 1
        if not first:
            first.append(step - 1)
        if step % 25 and "val_mrr_first_step" not in rec:
            return
        done = step - first[0]
        rate = done / max(1e-9, time.perf_counter() - start)
        eta = (total - step) / rate if rate else float("inf")
        extra = f" val_mrr {rec['val_mrr_first_step']:.4f}" if "val_mrr_first_step" in rec else ""
        extra += f" served {rec['val_mrr_served']:.4f}" if "val_mrr_served" in rec else ""
        echo(f"[{rec['stage']}] step {step}/{total} loss {rec['loss']:.4f} "
             f"{rec['episodes_per_s']:.1f} ep/s  eta {eta / 60:.1f} min{extra}")  # fmt: skip

    return show


def plot_logs(work_dirs: list[Path], out: Path, references: dict[str, float] | None = None) -> Path:
    """Training curves of train-ranker runs: step loss (moving average over 25 batches)
    and the validation MRR (first step; served, where the run measured it), against
    episodes seen; `references`: named validation MRRs drawn as horizontal lines (e.g. the
    model a run started from, served on the same episodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for work in work_dirs:
        path = Path(work) / "log.jsonl"
        if not path.is_file():
            raise UserError(f"{path}: no training log (is {work} a train-ranker work folder?)")
        log = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
        eps = np.cumsum([r.get("batch", 8) for r in log])
        ce = np.convolve([r["ce"] for r in log], np.ones(25) / 25, mode="valid")
        name = Path(work).name.removesuffix(".work")
        (line,) = ax_loss.plot(eps[24:], ce, label=name)
        for key, style in (("val_mrr_first_step", "o-"), ("val_mrr_served", "s--")):
            val = [(e, r[key]) for e, r in zip(eps, log, strict=True) if key in r]
            if val:
                kind = "served" if key == "val_mrr_served" else "first step"
                ax_val.plot(*zip(*val, strict=True), style, color=line.get_color(),
                            label=f"{name} ({kind})")  # fmt: skip
        rl = next((e for e, r in zip(eps, log, strict=True) if r["stage"] == "rl"), None)
        if rl is not None:
            ax_loss.axvline(rl, ls=":", c="grey")
    for k, (name, mrr) in enumerate((references or {}).items()):
        ax_val.axhline(mrr, ls=(0, (1, 2 + k)), c="black", lw=1, label=name)
    ax_loss.set(xlabel="episodes", ylabel="step cross-entropy (25-batch mean)",
                title="supervised | RL (dotted line)")  # fmt: skip
    ax_val.set(xlabel="episodes", ylabel="validation MRR", title="validation users")
    for ax in (ax_loss, ax_val):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
