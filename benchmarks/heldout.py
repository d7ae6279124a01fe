"""The held-out users' task set and the LambdaMART (seed 7) the probes beside this file
compare with: what `recsys eval --users heldout --ranker lambdamart` ranks."""

from __future__ import annotations

from typing import Any

SEED = 7


def heldout_with_lambdamart(task: str) -> tuple[Any, Any]:
    """(the held-out task set, a prepared LambdaMART scorer: `.scores(instance)`)."""
    from recsys.eval.fit_cache import FitCache
    from recsys.eval.instances import for_users
    from recsys.eval.rankers import make_baseline
    from recsys.eval.tasks import build_task, default_data
    from recsys.settings import get_settings

    settings = get_settings()
    taskset = for_users(
        build_task(task, default_data(task, settings.data_dir), SEED), "heldout", SEED
    )
    scorer = make_baseline("lambdamart", seed=SEED, cache=FitCache(settings.resolved_fit_cache_dir))
    scorer.prepare(taskset)
    return taskset, scorer
