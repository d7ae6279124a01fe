"""`recsys train`: RL fine-tuning of the ranker; the result is registered as a candidate."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    register_report(app)

    @app.command("train")
    def train(
        steps: int = typer.Option(50, "--steps", help="optimizer updates"),
        source: str = typer.Option(
            "rec-movie",
            "--source",
            help="rec-movie | rec-game (the eval harness's instances), db (logged), or a JSONL",
        ),
        signal: str = typer.Option(
            "transitions", "--signal", help="retrieval scorer for rec tasks: transitions|lightfm"
        ),
        users: str = typer.Option(
            "all", "--users", help="training users: 'all', N (first N), or N:M (N train, M val)"
        ),
        algo: str = typer.Option("distill", "--algo", help="grpo | expected | distill | logged"),
        mode: str = typer.Option("incremental", "--mode", help="incremental (reason: not yet)"),
        signals: bool = typer.Option(
            False, "--signals/--titles-only", help="render retrieval signals in the prompt"
        ),
        lr: float | None = typer.Option(
            None, "--lr", help="learning rate (default: 1e-5, or 2e-4 for a hybrid folder)"
        ),
        batch_size: int = typer.Option(4, "--batch-size", help="episodes per update"),
        group_size: int = typer.Option(4, "--group-size", help="GRPO trajectories per episode"),
        teacher: str = typer.Option(
            "retrieval", "--teacher", help="distill target: retrieval (reverse, truth last) | none"
        ),
        history: int = typer.Option(20, "--history", help="history items in the prompt"),
        expected_weight: float = typer.Option(
            1.0, "--expected-weight", help="distill: weight of the expected-reward term"
        ),
        fusion_alpha: float = typer.Option(
            0.0,
            "--fusion-alpha",
            help="score-fusion weight: validation also ranks fused with retrieval scores, and "
            "the registered version is served (and gated) fused with it",
        ),
        train_fused: bool = typer.Option(
            False, "--train-fused", help="train the fused policy itself (needs --fusion-alpha)"
        ),
        extra_alphas: str = typer.Option(
            "", "--extra-alphas", help="more fusion weights to measure, comma-separated"
        ),
        eval_every: int = typer.Option(
            25, "--eval-every", help="in-loop validation every N steps (0 = none)"
        ),
        checkpoint_every: int | None = typer.Option(
            None, "--checkpoint-every", min=1, help="steps between checkpoints (TrainConfig's)"
        ),
        val_limit: int = typer.Option(0, "--val-limit", help="in-loop validation episodes (0=all)"),
        lora: bool = typer.Option(False, "--lora", help="train LoRA adapters (peft) only"),
        train_layers: int = typer.Option(
            0, "--train-layers", help="fine-tune only the top N decoder layers (0 = all)"
        ),
        model: str = typer.Option("default", "--model"),
        device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda (settings)"),
        seed: int = typer.Option(7, "--seed"),
        name: str | None = typer.Option(None, "--name", help="run name = registered version"),
        resume: bool = typer.Option(True, "--resume/--restart"),
        do_register: bool = typer.Option(True, "--register/--no-register"),
    ) -> None:
        """Fine-tune the ranker on episodes, validate on held-out users, register the result."""
        from recsys.errors import UserError
        from recsys.training import TrainingOptions, run_training

        if mode != "incremental":
            raise UserError(
                f"--mode {mode}: only 'incremental' training is implemented; the reason-mode "
                "rewards exist in ranking.rewards but no generation-based trainer uses them yet"
            )
        n_users, n_val = _parse_users(users)
        opts = TrainingOptions(
            source=source,
            signal=signal,
            algo=algo,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            group_size=group_size,
            users=n_users,
            show_signals=signals,
            teacher=teacher,
            history_len=history,
            expected_weight=expected_weight,
            fusion_alpha=fusion_alpha,
            train_fused=train_fused,
            extra_alphas=tuple(float(a) for a in extra_alphas.split(",") if a.strip()),
            eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            lora=lora,
            model=model,
            device=device,
            seed=seed,
            run_name=name,
            resume=resume,
            register=do_register,
            extra={
                **({"val_limit": val_limit} if val_limit else {}),
                **({"train_layers": train_layers} if train_layers else {}),
            },
        )
        if n_val is not None:
            opts.val_users = n_val

        def progress(rec: dict) -> None:
            shown = {
                k: round(v, 4) if isinstance(v, float) else v
                for k, v in rec.items()
                if k not in ("time",)
            }
            typer.echo(json.dumps(shown), err=True)

        metrics = run_training(opts, log=progress)
        summary = {k: v for k, v in metrics.items() if not k.startswith("val_rr")}
        typer.echo(json.dumps(summary, indent=2))


def register_report(app: typer.Typer) -> None:
    @app.command("train-report")
    def train_report(
        runs: list[str] = typer.Argument(..., help="training run folders (artifacts/training/*)"),
        plot: str | None = typer.Option(None, "--plot", help="write the curves to this PNG"),
        baselines: str = typer.Option(
            "", "--baselines", help="also compare with these recommenders, e.g. lightfm,transitions"
        ),
    ) -> None:
        """Held-out MRR table (markdown) and training curves of finished runs."""
        from pathlib import Path

        from recsys.training_report import plot_runs, runs_deltas, runs_table

        dirs = [Path(r) for r in runs]
        names = [b.strip() for b in baselines.split(",") if b.strip()]
        typer.echo(runs_table(dirs) + "\n\n" + runs_deltas(dirs, names))
        if plot:
            typer.echo(f"curves: {plot_runs(dirs, Path(plot))}")


def _parse_users(spec: str) -> tuple[int | None, int | None]:
    from recsys.errors import UserError

    text = spec.strip().lower()
    if text == "all":
        return None, None
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            return (None if a == "all" else int(a)), int(b)
        return int(text), None
    except ValueError as exc:
        raise UserError(f"--users {spec!r}: use 'all', N or N:M (train:validation)") from exc
