"""`recsys train-ranker`: supervised-then-RL training of a hybrid (CF soft token) ranker."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("train-ranker")
    def train_ranker(
        task: str = typer.Option("rec-movie", "--task", help="rec-movie | rec-game | rec-music"),
        out: Path = typer.Option(
            None, "--out", "-o", help="model folder to write (default models/hybrid-TASK)"
        ),
        supervised_steps: int = typer.Option(1000, "--supervised-steps", help="stage 1 batches"),
        rl_steps: int = typer.Option(250, "--rl-steps", help="stage 2 (expected-step RL) batches"),
        batch_size: int = typer.Option(8, "--batch-size", help="episodes per update"),
        lr: float = typer.Option(5e-4, "--lr"),
        inject_layer: int = typer.Option(
            22, "--inject-layer", help="decoder layer the CF vectors enter (LoRA from it up)"
        ),
        title_chars: int = typer.Option(
            0, "--title-chars", help="title characters shown beside each soft token (0: none)"
        ),
        base: str = typer.Option("default", "--base", help="base model spec"),
        resume: bool = typer.Option(True, "--resume/--restart", help="continue a checkpoint"),
        seed: int = typer.Option(7, "--seed", help="same seed as `recsys eval` (held-out users)"),
        export_only: bool = typer.Option(
            False, "--export-only", help="write OUT from the last checkpoint (a stopped run)"
        ),
        fusion_alpha: float | None = typer.Option(
            None,
            "--fusion-alpha",
            help="record the serving fusion weight chosen on validation users in the card",
        ),
        init: Path = typer.Option(
            None, "--init", help="start from this exported model folder (e.g. RL after supervised)"
        ),
        batch_offset: int = typer.Option(
            0,
            "--batch-offset",
            help="draw batches from index N of the seed's stream on (a run --init'ed from a "
            "model trained on batches 0..N-1 then sees new ones)",
        ),
        bundle: Path = typer.Option(
            None,
            "--bundle",
            help="write the run as a training bundle to this folder instead of training: "
            "`python -m ranking.rl.bundle BUNDLE --out DIR --device cuda` trains it on a "
            "machine without the data or the base model",
        ),
        vectors: str = typer.Option(
            "lightfm",
            "--vectors",
            help="item vectors behind each soft token: lightfm | lightfm+text (+ the "
            "titles' MiniLM embeddings, 32 principal components); with --init from a "
            "lightfm model the projector's new inputs start at zero",
        ),
        residual_alpha: float = typer.Option(
            0.0,
            "--residual-alpha",
            help="train what is served: each step fused with LambdaMART at this weight "
            "(serve with --fusion-alpha the same, --fusion-signal lambdamart); episodes are "
            "each training user's last --residual-positions items, scored by feature models "
            "fitted without them (docs/training.md)",
        ),
        ce_weight: float = typer.Option(
            0.5, "--ce-weight", help="RL stage: weight of the supervised loss kept beside it"
        ),
        residual_positions: int = typer.Option(
            10, "--residual-positions", help="with --residual-alpha: episodes per training user"
        ),
        honest_vectors: bool = typer.Option(
            False,
            "--honest-vectors",
            help="with --residual-alpha: rank the episodes with item vectors fitted without "
            "their items (the served model keeps the whole log's; docs/training.md)",
        ),
        trajectory: str = typer.Option(
            "teacher",
            "--trajectory",
            help="the states trained on: teacher (forced along the teacher's order, the "
            "truth last) | served (along the order the engine serves the weights being "
            "trained, each step's target the teacher's choice among those left: DAgger; "
            "docs/training.md)",
        ),
        history: int = typer.Option(
            20,
            "--history",
            help="history items each episode shows (the last N before its truth; the eval "
            "and the served requests show 20 unless a caller sends more)",
        ),
        hard_negatives: int = typer.Option(
            4,
            "--hard-negatives",
            help="of each episode's 19 negatives, how many come from the user's CF top-100 "
            "(the rest uniform from unseen items)",
        ),
        reward: str = typer.Option(
            "step",
            "--reward",
            help="RL stage's reward term: step (IRanker: every elimination step alike) | rr "
            "(each step weighted by what it is worth to the reciprocal rank)",
        ),
        users: str = typer.Option(
            "train",
            "--users",
            help="whose logs the episodes come from: train (every user but the held-out "
            "ones) | all (the held-out users' logs too; their evaluated targets are not in "
            "the log: the same-log protocol, docs/training.md)",
        ),
        positions: int = typer.Option(
            0, "--positions", help="episodes from each user's last N items only (0: every prefix)"
        ),
        min_items: int = typer.Option(
            0, "--min-items", help="users with fewer items in the training log give no episodes"
        ),
        val_positions: int = typer.Option(
            1,
            "--val-positions",
            help="validation episodes from each validation user's last N items (1: the last "
            "item only; more: a steadier validation curve, at N times its cost)",
        ),
    ) -> None:
        """Train a hybrid ranker; checkpoints and log under OUT.work, resumable."""
        # HybridTrainOptions checks every flag before the minutes-long episode build
        from recsys.hybrid_training import HybridTrainOptions, train_hybrid
        from recsys.settings import get_settings

        settings = get_settings()
        opts = HybridTrainOptions(
            task=task,
            out=out or Path("models") / f"hybrid-{task}",
            base=base,
            inject_layer=inject_layer,
            title_chars=title_chars or 0,
            supervised_steps=supervised_steps,
            rl_steps=rl_steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=None,  # the settings' (RECSYS_DEVICE)
            resume=resume,
            export_only=export_only,
            fusion_alpha=fusion_alpha,
            init=init,
            batch_offset=batch_offset,
            bundle=bundle,
            vectors=vectors,
            cache_dir=settings.resolved_artifact_dir / "embedding-cache",
            fit_cache_dir=settings.resolved_fit_cache_dir,
            residual_alpha=residual_alpha,
            residual_positions=residual_positions,
            ce_weight=ce_weight,
            honest_vectors=honest_vectors,
            trajectory=trajectory,
            reward=reward,
            hard_negatives=hard_negatives,
            history=history,
            users=users,
            positions=positions,
            min_items=min_items,
            val_positions=val_positions,
        )
        from recsys.hybrid_residual import build_residual_episodes

        builder = build_residual_episodes if residual_alpha else None
        train_hybrid(opts, settings.data_dir, echo=typer.echo, episodes=builder)

    @app.command("train-ranker-plot")
    def train_ranker_plot(
        work: list[Path] = typer.Argument(..., help="train-ranker work folders (OUT.work)"),
        out: Path = typer.Option(Path("docs/hybrid_training.png"), "--out", "-o"),
        reference: list[str] = typer.Option(
            [],
            "--reference",
            help="NAME=MRR: a validation MRR drawn as a line (e.g. the starting model served "
            "on the same episodes, `benchmarks/residual_probe.py val`); repeatable",
        ),
    ) -> None:
        """Plot the training curves of train-ranker runs."""
        from recsys.hybrid_training import plot_logs

        refs = dict(_reference(r) for r in reference)
        typer.echo(f"wrote {plot_logs(list(work), out, refs)}")


def _reference(text: str) -> tuple[str, float]:
    from recsys.errors import UserError

    name, _, value = text.rpartition("=")
    try:
        mrr = float(value) if name else None
    except ValueError:
        mrr = None
    if mrr is None:
        raise UserError(f"--reference {text!r}: use NAME=MRR, e.g. 'control served=0.7752'")
    if not 0 <= mrr <= 1:
        raise UserError(f"--reference {text!r}: an MRR is in [0, 1]")
    return name, mrr
