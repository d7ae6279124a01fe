"""`recsys batch`: the nightly batch recommendations (also the Celery task
`jobs.tasks.batch_recommendations`, scheduled by beat)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("batch")
    def batch(
        run_id: str | None = typer.Option(None, help="run name; default batch-YYYYMMDD"),
        k: int = typer.Option(20, help="items per user"),
        rerank: bool = typer.Option(True, help="re-rank retrieval's top-K with IRanker"),
        model: str | None = typer.Option(None, help="default | promoted | version | path"),
        device: str | None = typer.Option(None, help="auto | cpu | cuda"),
        shard: str = typer.Option("0/1", help="this worker's part, I/N (users split by hash)"),
        shards: int | None = typer.Option(
            None,
            min=1,
            max=1024,
            help="fan out: build the index once, then enqueue N shard tasks for the workers "
            "(RECSYS_BROKER_URL; without a broker they run here, one after another)",
        ),
        limit_users: int | None = typer.Option(None, help="only the first N users of the shard"),
        index_version: str | None = typer.Option(
            None, help="use this registered retrieval index instead of rebuilding it"
        ),
        embeddings: str = typer.Option("minilm", help="minilm | hashing | off"),
        ltr: bool = typer.Option(
            True, help="build the index with the LambdaMART stage (fusion -> LambdaMART -> LM)"
        ),
        ltr_text: bool = typer.Option(
            False,
            help="the LambdaMART stage also reads title-embedding similarities (needs "
            "--embeddings minilm|hashing; docs/retrieval.md)",
        ),
        ltr_bag: int = typer.Option(
            1,
            help="the LambdaMART stage averages this many LightGBM fits (seeds seed..seed+N-1): "
            "steadier quality from one rebuild to the next, N times the fit and scoring time",
        ),
        next_source: bool = typer.Option(
            True,
            "--next-source/--no-next-source",
            help="a built index also fuses the `next` source (items that followed the user's "
            "last items), its LambdaMART stage trained for it: recall@20 +0.030 on ml-100k "
            "(docs/retrieval.md)",
        ),
        url: str | None = typer.Option(None, "--url", help="database URL"),
    ) -> None:
        """Write a recommendation list for every user (resumable: users already in the run
        are skipped)."""
        from recsys.batch import BatchConfig, run_batch
        from recsys.db.engine import get_engine
        from recsys.db.migrate import ensure_schema
        from recsys.errors import UserError
        from recsys.settings import get_settings

        try:
            index, count = (int(x) for x in shard.split("/"))
        except ValueError:
            raise UserError(f"--shard {shard!r} must look like I/N, e.g. 0/4") from None
        # the options' own checks, before the index build or a fan-out can start
        BatchConfig(embeddings=embeddings, ltr=ltr, ltr_text=ltr_text, ltr_bag=ltr_bag)
        settings = get_settings()
        ensure_schema(url)
        if shards is not None:
            _fan_out(
                shards,
                run_id=run_id,
                k=k,
                rerank=rerank,
                model=model,
                device=device,
                limit_users=limit_users,
                embeddings=embeddings,
                ltr=ltr,
                ltr_text=ltr_text,
                ltr_bag=ltr_bag,
                next_source=next_source,
            )
            return
        report = run_batch(
            BatchConfig(
                run_id=run_id,
                k=k,
                rerank=rerank,
                model=model,
                device=device,
                shard=index,
                shards=count,
                limit_users=limit_users,
                index_version=index_version,
                embeddings=embeddings,
                ltr=ltr,
                ltr_text=ltr_text,
                ltr_bag=ltr_bag,
                next_source=next_source,
                artifact_dir=Path(settings.resolved_artifact_dir),
            ),
            engine=get_engine(url),
        )
        typer.echo(
            f"run {report.run_id}: {report.users_written} users written, "
            f"{report.users_skipped} skipped (already in the run or no candidates) of "
            f"{report.users_in_shard} in shard {shard}; retrieval {report.retrieval_version}, "
            f"ranker {report.model_version}"
        )


def _fan_out(shards: int, **options: object) -> None:
    from recsys.settings import get_settings

    options = {k: v for k, v in options.items() if v is not None}
    if get_settings().broker_url is None:
        from jobs.tasks import fan_out_here

        typer.echo(f"fanned out {shards} shards in process: {fan_out_here(shards, **options)}")
        return
    from jobs.tasks import nightly_batch

    result = nightly_batch.delay(shards=shards, **options)
    typer.echo(
        f"enqueued task {result.id}: the index, then {shards} shards; "
        "follow it with `recsys jobs list`"
    )
