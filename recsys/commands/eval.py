"""`recsys eval`: the nine-task evaluation (JSON + markdown table); `recsys eval-table`:
one rankers x tasks table from several results files. See docs/eval.md."""

from __future__ import annotations

from pathlib import Path

import typer

from ranking.folders import write_whole

MAX_DIFF_FILES = 50  # eval-diff: at most 49 results against one
MAX_SWEEP = 12  # eval: at most this many --fusion-alpha values in one run


def parse_data_options(values: list[str], tasks: list[str]) -> dict[str, Path]:
    """`--data PATH` (every selected task) or `--data TASK=PATH` (one task)."""
    from recsys.errors import UserError
    from recsys.eval.tasks import ALL_TASKS

    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in ALL_TASKS:
            out[name] = Path(path).expanduser()
        elif sep and not Path(value).exists():
            raise UserError(f"--data {value!r}: {name!r} is not a task; use TASK=PATH or PATH")
        else:
            for task in tasks:
                out[task] = Path(value).expanduser()
    return out


def _check_fusion_alpha(alpha: float | None, ranker: str) -> float | None:
    """An explicit --fusion-alpha must be a weight an engine mode can fuse with."""
    from ranking.types import is_valid_alpha
    from recsys.errors import UserError
    from recsys.eval.harness import STACKED

    if alpha is None:
        return None
    if not is_valid_alpha(alpha):
        raise UserError(f"--fusion-alpha must be a finite number >= 0, got {alpha}")
    if alpha > 0 and ranker == "reason":
        raise UserError("--fusion-alpha needs a mode with step probabilities; reason cannot fuse")
    if alpha > 0 and ranker == STACKED:
        raise UserError(
            f"--fusion-alpha does not apply to {STACKED} (it learns the combination); leave it out"
        )
    return alpha


def _check_sweep(alphas: list[float], ranker: str) -> list[float]:
    """Repeated --fusion-alpha: one run per weight, each a weight an engine mode can fuse
    with; none given: [] (the served default, resolved by the caller)."""
    from recsys.errors import UserError
    from recsys.eval.harness import BASELINES

    if len(alphas) > MAX_SWEEP:
        raise UserError(f"{len(alphas)} --fusion-alpha values; a sweep takes at most {MAX_SWEEP}")
    if len(set(alphas)) < len(alphas):
        raise UserError(f"--fusion-alpha values repeat ({alphas}); give each weight once")
    if len(alphas) > 1 and ranker in BASELINES:
        raise UserError(f"--fusion-alpha applies to engine modes, not {ranker!r}")
    return [float(_check_fusion_alpha(a, ranker)) for a in alphas]  # type: ignore[arg-type]


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        task: list[str] = typer.Option(
            ...,
            "--task",
            "-t",
            help="rec-movie|rec-music|rec-game|router-perf|router-balance|"
            "router-cost|passage-5|passage-7|passage-9|passage-rerank|passage-rerank-100|all",
        ),
        ranker: str = typer.Option(
            "incremental",
            "--ranker",
            "-r",
            help="engine mode (incremental|score|reason|direct), lambdamart-lm (LambdaMART "
            "stacked on the LM of --model) or baseline "
            "(random|bm25|first-stage|popularity|lightfm|cf|transitions|ensemble|lambdamart|"
            "lambdamart-text|knn-router)",
        ),
        model: str = typer.Option(
            "default",
            "--model",
            "-m",
            help="default | promoted | a registered version | HF dir | .gguf file",
        ),
        data: list[str] = typer.Option(
            [], "--data", help="PATH for every selected task, or TASK=PATH (repeatable)"
        ),
        limit: int | None = typer.Option(
            None, "--limit", "-n", help="evaluate a seeded random subset of N instances per task"
        ),
        seed: int = typer.Option(7, "--seed", help="task building, sampling, bootstrap"),
        out: Path | None = typer.Option(None, "--out", "-o", help="write results JSON here"),
        candidates: str = typer.Option(
            "random", "--candidates", help="random (paper protocol) | retrieval (production)"
        ),
        tie_break: str = typer.Option(
            "file", "--rec-tie-break", help="rec tasks, equal timestamps: file | item-id"
        ),
        batch_size: int | None = typer.Option(
            None, "--batch-size", help="engine requests per forward pass (RECSYS_BATCH_SIZE)"
        ),
        max_new_tokens: int | None = typer.Option(
            None, "--max-new-tokens", help="reason mode: tokens per step cap"
        ),
        write_tasks: Path | None = typer.Option(
            None, "--write-tasks", help="also write each task's instances (JSON lines) here"
        ),
        fusion_alpha: list[float] = typer.Option(
            [],
            "--fusion-alpha",
            help="score fusion weight for engine modes (default: RECSYS_FUSION_ALPHA, then "
            "the registered version's, then 0); repeat it for a sweep, one run per weight "
            "on the same instances (`recsys eval-crossfit` chooses among them); see "
            "docs/ranking.md",
        ),
        fusion_signal: str = typer.Option(
            "transitions",
            "--fusion-signal",
            help="with fusion, the baseline scoring candidates that have no score (rec tasks "
            "with random negatives), as `recsys train --signal`; none: require scores",
        ),
        users: str = typer.Option(
            "all",
            "--users",
            help="rec tasks: all | heldout (the users `recsys train-ranker` never trains on) "
            "| train",
        ),
        use_fit_cache: bool = typer.Option(
            True,
            "--fit-cache/--no-fit-cache",
            help="keep the slow fitted baselines (LambdaMART, as a ranker or fusion signal) "
            "between runs under RECSYS_FIT_CACHE_DIR (default <var_dir>/cache), keyed by "
            "data, options and code: docs/eval.md",
        ),
        fusion_abstain_below: int | None = typer.Option(
            None,
            "--fusion-abstain-below",
            help="with fusion, the LM gives no opinion of its own on candidates with fewer "
            "training interactions than this (ranking.fusion; docs/ranking.md); 0: never; "
            "default: RECSYS_FUSION_ABSTAIN_BELOW where fusion is on",
        ),
        lgb_bag: int = typer.Option(
            1,
            "--lgb-bag",
            help="LambdaMART (ranker or fusion signal) averages this many LightGBM fits, seeds "
            "seed..seed+N-1 (docs/eval.md); 1: one fit",
        ),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Measure a ranker on the evaluation tasks; print a table, write JSON."""
        import json
        import platform
        import time

        from recsys import runtime
        from recsys.errors import UserError
        from recsys.eval import harness, report, tasks
        from recsys.eval.fit_cache import FitCache
        from recsys.provenance import code_version, numeric_kernels
        from recsys.resolver import serving_fusion_alpha, trained_on_users
        from recsys.settings import get_settings

        settings = get_settings()
        code = code_version()  # at the start: the code this process loaded, not edits since
        names = tasks.expand_tasks(task)
        if candidates not in ("random", "retrieval"):
            raise UserError(f"--candidates must be random or retrieval, got {candidates!r}")
        paths = parse_data_options(data, names)
        skipped_tasks = {}
        if "all" in task and "rec-music" not in paths:
            names.remove("rec-music")
            skipped_tasks["rec-music"] = "no data shipped; pass --data rec-music=PATH (RecBole)"
        sweep = _check_sweep(fusion_alpha, ranker)
        model_path, alpha = model, (sweep[0] if sweep else None)
        if ranker not in harness.BASELINES:
            resolved = runtime.resolve(settings, model)
            model_path = resolved.model
            setting = settings.fusion_alpha if alpha is None else alpha
            # eval measures the model itself: a zero-shot packaged model is not given its
            # serving default (resolver.UNVALIDATED_SERVING_ALPHA, the retrieval order,
            # which would measure retrieval, not the LM): it ranks alone unless asked
            measured = None if resolved.unvalidated else resolved.fusion_alpha
            alpha = serving_fusion_alpha(setting, measured)
            if ranker == harness.STACKED:  # it learns how to combine; the LM ranks alone
                alpha = 0.0
        model_users = None if ranker in harness.BASELINES else trained_on_users(model_path)
        if users == "heldout" and model_users == "all":
            typer.echo(f"note: {model} was trained on every user's log, the held-out users' "
                       "included (their evaluated targets excluded): this measures the "
                       "same-log protocol, not users the LM never saw")  # fmt: skip
        if fusion_abstain_below is None:  # the setting, where it can apply
            fusion_abstain_below = settings.fusion_abstain_below if alpha else 0
        cache = FitCache(settings.resolved_fit_cache_dir) if use_fit_cache else None
        evaluator = harness.make_ranker(
            ranker,
            model=model_path,
            device=settings.device,
            batch_size=batch_size or settings.batch_size,
            seed=seed,
            reason_max_new_tokens=max_new_tokens or settings.reason_max_new_tokens,
            fusion_alpha=alpha or 0.0,
            fusion_signal=fusion_signal,
            fit_cache=cache,
            lgb_bag=lgb_bag,
            fusion_abstain_below=fusion_abstain_below,
        )
        runs = []
        for name in names:
            where = paths.get(name, tasks.default_data(name, settings.data_dir))
            built = tasks.build_task(name, where, seed, tie_break=tie_break)
            if write_tasks is not None:
                write_tasks.mkdir(parents=True, exist_ok=True)
                tasks.write_task_file(built, write_tasks / f"{name}.jsonl")
            if users != "all":
                built = tasks.for_users(built, users, seed)
            chosen = built.limited(limit, seed)
            if candidates == "retrieval":
                chosen = tasks.with_retrieval_candidates(chosen)
            for weight in sweep if len(sweep) > 1 else [None]:
                if weight is not None:  # a sweep: the same ranker, one weight per run
                    evaluator.use_fusion_alpha(weight)
                run = harness.evaluate(evaluator, chosen, progress=progress, seed=seed)
                runs.append(run.to_dict())
                typer.echo(f"{name}: {run.ranker} n={run.n} {harness.headline(run):.2f} "
                           f"({run.wall_s:.1f}s)")  # fmt: skip
        typer.echo(report.run_table(runs))
        if cache is not None and (cache.hits or cache.misses):
            typer.echo(f"fit cache {cache.root}: {cache.hits} loaded, {cache.misses} fitted")
        if skipped_tasks:
            typer.echo(f"not run: {skipped_tasks}")
        if out is not None:
            payload = {
                "config": {
                    "tasks": names, "ranker": ranker, "model": model, "model_path": model_path,
                    "model_id": evaluator.model, "model_trained_on": model_users,
                    "data": {k: str(v) for k, v in paths.items()},
                    "limit": limit, "users": users, "seed": seed, "candidates": candidates,
                    "rec_tie_break": tie_break, "batch_size": batch_size or settings.batch_size,
                    "fusion_alpha": alpha or 0.0, "fusion_signal": fusion_signal,
                    "lgb_bag": lgb_bag, "fusion_abstain_below": fusion_abstain_below,
                    **({"fusion_alphas": sweep} if len(sweep) > 1 else {}),
                    "fit_cache": None if cache is None else {"loaded": cache.hits,
                                                             "fitted": cache.misses},
                    "host": platform.node(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                       time.gmtime()),
                    "code": code, "kernels": numeric_kernels(),
                },
                "not_run": skipped_tasks,
                "runs": runs,
            }  # fmt: skip
            write_whole(out, json.dumps(payload, indent=2) + "\n")
            typer.echo(f"wrote {out}")

    @app.command("eval-diff")
    def eval_diff(
        files: list[Path] = typer.Argument(
            ..., help="results JSONs (recsys eval --out): each of the first against the last"
        ),
        metric: str = typer.Option("mrr", "--metric", help="mrr | ndcg@10 | hit@5 | ..."),
        out: Path | None = typer.Option(None, "--out", "-o", help="also write JSON here"),
        plot: Path | None = typer.Option(
            None, "--plot", help="also draw a PNG: each A - B with its interval, per task"
        ),
        goal: float | None = typer.Option(
            None, "--goal", help="with --plot, a dashed line at this difference (metric x 100)"
        ),
        slices: str = typer.Option(
            "both", "--slices", help="all (every shared instance) | cold-start | both"
        ),
    ) -> None:
        """Paired A - B per task on the shared instances, bootstrap 95% interval
        (`eval-diff A B`, or `eval-diff A1 A2 ... B`: each A against B)."""
        import json
        from dataclasses import asdict, replace

        from recsys.errors import UserError
        from recsys.eval import compare, report

        if len(files) < 2:
            raise UserError("eval-diff needs at least two results files: A... B")
        if slices not in ("all", "cold-start", "both"):
            raise UserError(f"--slices {slices!r}: use all, cold-start or both")
        if len(files) > MAX_DIFF_FILES:
            raise UserError(f"{len(files)} results files; eval-diff compares at most "
                            f"{MAX_DIFF_FILES - 1} against one")  # fmt: skip
        results = [report.read_results(path) for path in files]  # each file read once
        for path, data in zip(files, results, strict=True):
            if (note := report.uncommitted_note(path, data)) is not None:
                typer.echo(note, err=True)
        base = results[-1]["runs"]
        diffs = []
        for path, data in zip(files[:-1], results[:-1], strict=True):
            for note in report.signal_notes(path, data, files[-1], results[-1]):
                typer.echo(note, err=True)
            table = compare.paired_table(data["runs"], base, metric)
            table = [d for d in table if slices in ("both", d.slice)]
            if len(files) > 2:
                typer.echo(f"\nA = {path}, B = {files[-1]}")
            typer.echo(compare.HEADER)
            for d in table:
                typer.echo(d.row())
            # a file with several runs of a task (a --fusion-alpha sweep): label each run
            several = len(table) > len({(d.task, d.slice) for d in table})
            diffs += [replace(d, label=f"{path.stem} {d.a}" if several else path.stem)
                      for d in table]  # fmt: skip
        if out is not None:
            write_whole(out, json.dumps([asdict(d) for d in diffs], indent=2) + "\n")
        if plot is not None:
            compare.plot_differences(diffs, plot, goal)
            typer.echo(f"wrote {plot}")

    @app.command("eval-crossfit")
    def eval_crossfit(
        files: list[Path] = typer.Argument(
            ...,
            help="results JSONs whose runs (one task, same instances) are the variants "
            "to choose among, e.g. a sweep `recsys eval --fusion-alpha 3 --fusion-alpha 5`",
        ),
        out: Path = typer.Option(
            ..., "--out", "-o", help="write the combined run here (`recsys eval-diff` pairs it)"
        ),
        folds: int = typer.Option(5, "--folds", help="user folds (2-20)"),
        metric: str = typer.Option("mrr", "--metric", help="what the choice maximises"),
        seed: int = typer.Option(7, "--seed", help="the fold split and the bootstrap"),
        task: str | None = typer.Option(
            None, "--task", help="only this task's runs (files that hold several tasks)"
        ),
    ) -> None:
        """Choose a variant per user fold on the other folds and report each fold from its
        choice: a number no choice was tuned on (docs/eval.md, "Choosing a weight")."""
        import json

        from recsys.errors import UserError
        from recsys.eval import crossfit, report

        if len(files) > MAX_DIFF_FILES:
            raise UserError(f"{len(files)} results files; eval-crossfit reads at most "
                            f"{MAX_DIFF_FILES}")  # fmt: skip
        runs = [{**run, "source": str(path.with_suffix(""))} for path in files
                for run in report.read_results(path)["runs"]
                if task is None or run["task"] == task]  # fmt: skip
        if not runs:
            raise UserError(f"no run of task {task!r} in these files")
        fit = crossfit.cross_fit(runs, folds=folds, metric=metric, seed=seed)
        typer.echo(f"| variant | {metric} x 100, every instance (in-sample: diagnosis only) |")
        typer.echo("| --- | --- |")
        for name, value in fit.in_sample.items():
            typer.echo(f"| {name} | {100 * value:.2f} |")
        m = fit.run["metrics"][metric]
        typer.echo(f"chosen per fold: {', '.join(fit.chosen)}")
        typer.echo(f"{fit.run['task']}: cross-fitted {metric} {100 * m['mean']:.2f} "
                   f"[{100 * m['low']:.2f}, {100 * m['high']:.2f}] (n={fit.run['n']})")  # fmt: skip
        payload = {"config": {"crossfit": [str(f) for f in files], "folds": folds,
                              "metric": metric, "seed": seed}, "not_run": {},
                   "runs": [fit.run]}  # fmt: skip
        write_whole(out, json.dumps(payload, indent=2) + "\n")
        typer.echo(f"wrote {out}")

    @app.command("eval-table")
    def eval_table(
        results: list[Path] = typer.Argument(..., help="results JSON files from recsys eval"),
        all_columns: bool = typer.Option(
            False, "--all-columns", help="a column for every task, measured or not"
        ),
        plot: Path | None = typer.Option(
            None, "--plot", help="also draw a PNG: one panel per task, 95% intervals"
        ),
    ) -> None:
        """Print one rankers x tasks markdown table (headline metric x 100) from results."""
        from recsys.eval import report
        from recsys.eval.tasks import ALL_TASKS

        runs = report.load_runs(results)
        typer.echo(report.summary_table(runs, ALL_TASKS if all_columns else None))
        if plot is not None:
            report.plot_runs(runs, plot)
            typer.echo(f"wrote {plot}")
