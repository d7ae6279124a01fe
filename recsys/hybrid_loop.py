"""`recsys train` (and so the closed loop, `recsys loop`) on a hybrid ranker: fine-tune a
hybrid model folder (CF soft tokens, `ranking.hybrid`) on the same episodes a plain LM gets
(logged traffic from the database, or a rec task's instances) and measure it as served;
`recsys.training` turns the result into a version's metrics and registers it, as for a
plain run, and the gate reads them the same way.

A hybrid reads each item through its collaborative vector, so the plain trainer
(`ranking.rl.trainer`, text prompts) cannot tune it: it would train a prompt the model is
never served with. This path uses the hybrid trainer (`ranking.rl.supervised`) instead:

* **start**: the folder's adapter and projector (`SupervisedTrainer.init_from`), its item
  vectors and manifest unchanged, so the candidate serves the same catalogue;
* **objective**: the RL stage only (`--steps` batches of `--batch-size`): the expected-step
  loss weighted by reciprocal rank (`reward="rr"`) on the *served* trajectory — the greedy
  elimination of the weights being trained, fused at the base's training weight — where
  the truth is the item the user chose; with `--teacher retrieval` (the episodes' teacher
  order, `recsys.training.load_episodes`: the reverse retrieval order, truth last) also the
  cross-entropy toward it (weight `CE_WEIGHT`), which keeps the policy near the ranking it
  re-ranks while the logs are few. What trained
  `models/hybrid-rec-*-dagger` (docs/training.md);
* **validation, as the gate reads it** (`recsys.gate.ValidationResults`): per validation
  user, the reciprocal rank of the candidate served at its weight, of the base folder as it
  is served now, and of the retrieval order — each through the serving engine;
* **resume**: the work folder's checkpoint (`<artifacts>/training/<run>/work`), exact.

A request with a candidate the folder's vector table lacks (an item new since it was
trained) is laid out as the engine serves it: letter labels instead of item tokens
(`ranking.prompts.item_labels`); retrain with `recsys train-ranker` when the catalogue moves.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranking.fusion import RETRIEVAL_ORDER
from ranking.rl.episodes import Episode, reciprocal_ranks
from recsys.errors import UserError

CE_WEIGHT = 0.5  # with --teacher retrieval: the cross-entropy toward the retrieval order


def base_kind(model: str) -> str:
    """'hybrid', 'committee' or 'plain' for a training base spec (a packaged name, a path)."""
    from ranking.backends.committee import is_committee_dir
    from ranking.hybrid import is_hybrid_dir
    from ranking.model_spec import resolve_model

    path = resolve_model(model).path
    if is_committee_dir(path):
        return "committee"
    return "hybrid" if is_hybrid_dir(path) else "plain"


def refuse_committee(model: str) -> None:
    raise UserError(
        f"{model} is a committee (several trained rankers pooled as one policy): there is no "
        "one model to fine-tune. Fine-tune a member (`recsys train --model MEMBER`, or "
        "`recsys train-ranker --init MEMBER`) and pool the result with `recsys committee`; "
        "to run the loop, promote a single model"
    )


@dataclass(frozen=True)
class HybridRun:
    """What a hybrid run hands back to `recsys.training` (which turns it into a version's
    metrics and registers it): the exported folder, the per-user reciprocal ranks of it
    and of the base as each is served (`baseline` None: the base is served at the
    retrieval order, which the caller measures), and the training time."""

    model_dir: Path
    served: dict[str, float]
    baseline: dict[str, float] | None
    train_seconds: float


def run_hybrid_training(
    opts: Any,  # recsys.training.TrainingOptions
    base_alpha: float,
    train: Sequence[Episode],
    val: Sequence[Episode],
    out_dir: Path,
    *,
    progress: Callable[[int], None] = lambda n: None,
) -> HybridRun:
    """Fine-tune the hybrid folder `opts.model` into `out_dir` (module doc)."""
    import torch

    from ranking.hybrid import Hybrid, read_manifest
    from ranking.model_spec import resolve_model
    from ranking.rl.supervised import CheckpointMismatch, SupervisedConfig, SupervisedTrainer
    from recsys import runtime
    from recsys.settings import get_settings

    folder = resolve_model(opts.model).path
    config, item_ids = read_manifest(folder)
    vectors = _vectors(folder)
    cfg = SupervisedConfig(
        supervised_steps=0, rl_steps=opts.steps, batch_size=opts.batch_size, lr=opts.lr,
        seed=opts.seed, fusion_alpha=opts.fusion_alpha, trajectory="served", reward="rr",
        ce_weight=CE_WEIGHT if opts.teacher == "retrieval" else 0.0,
        warmup_steps=min(50, max(1, opts.steps // 10)),
        eval_every=max(opts.steps, 1), checkpoint_every=opts.checkpoint_every or 50,
        val_episodes=len(val), validate_served=False,  # measured below, as exported
    )  # fmt: skip
    base = runtime.load_backend(get_settings(), model=config.base, device=opts.device,
                                backend="transformers", cache=False)  # fmt: skip
    torch.manual_seed(opts.seed)
    hybrid = Hybrid(base.model, base.tokenizer, item_ids, vectors, config)
    trainer = SupervisedTrainer(base.model, hybrid, train, val, cfg, out_dir / "work",
                                progress=lambda rec: progress(opts.batch_size))  # fmt: skip
    started = time.time()
    try:
        if not (opts.resume and trainer.load_checkpoint()):
            trainer.init_from(folder)
        trainer.run(resume=opts.resume)
    except CheckpointMismatch as exc:
        raise UserError(f"{exc} (name another --run-name)") from None
    wall = time.time() - started
    card = {**_users_trained_on(folder, [*train, *val]), "fusion_alpha": opts.fusion_alpha,
            "tuned_from": str(folder),
            "tuning": {k: str(v) for k, v in dataclasses.asdict(opts).items()},
            "trained_with": dataclasses.asdict(cfg), "n_train": len(train),
            "n_val": len(val)}  # fmt: skip
    card_text = json.dumps(card, indent=2) + "\n"
    model_dir = trainer.export(out_dir / "model", extra={"card.json": card_text})
    del trainer, hybrid, base  # the engine loads the exported folder afresh
    served = served_rr(model_dir, opts.fusion_alpha, val, opts.device)
    progress(len(val))
    baseline = None
    if base_alpha != RETRIEVAL_ORDER:
        baseline = served_rr(folder, base_alpha, val, opts.device)
    progress(len(val))
    return HybridRun(model_dir, served, baseline, round(wall, 1))


def _users_trained_on(base: Path, episodes: Sequence[Episode]) -> dict[str, Any]:
    """The card's record of whose logs the run read. The base's held-out rule is kept when
    no episode is a user it holds out (`recsys index-episodes --users train`), so the demo
    and `recsys eval --users heldout` still measure the result on users it never saw;
    otherwise `options.users` "all": the episodes may hold any user's logs (logged traffic),
    and an evaluation on held-out users labels the model a same-log one
    (recsys.resolver.trained_on_users)."""
    from recsys.eval.instances import is_heldout
    from recsys.resolver import heldout_rule

    rule = heldout_rule(str(base))
    if rule is None or any(is_heldout(e.user, rule[1], rule[0]) for e in episodes):
        return {"options": {"users": "all"}}
    return {"options": {"users": "train"},
            "data": {"heldout_fraction": rule[0], "seed": rule[1]}}  # fmt: skip


def served_rr(
    folder: Path, alpha: float, episodes: Sequence[Episode], device: str | None
) -> dict[str, float]:
    """Per user, the reciprocal rank of the truth when `folder` serves each episode's
    request greedily at weight `alpha` (through the engine, as `/v1/rank` would)."""
    from ranking.engine import Ranker
    from ranking.loading import load_backend

    ranker = Ranker(load_backend(folder, device=device or "cpu", cache=False), fusion_alpha=alpha)
    requests = [dataclasses.replace(e.request, temperature=0.0, deadline_ms=None) for e in episodes]
    return reciprocal_ranks([r.order for r in ranker.rank_batch(requests)], episodes)


def _vectors(folder: Path):  # type: ignore[no-untyped-def]
    import numpy as np

    path = folder / "vectors.npy"
    if not path.is_file():
        raise UserError(f"{folder}: no vectors.npy (is it an exported hybrid model folder?)")
    return np.load(path)
