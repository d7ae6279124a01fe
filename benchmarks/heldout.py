"""The held-out users' task set and the LambdaMART (seed 7) the probes beside this file
compare with: what `recsys eval --users heldout --ranker lambdamart` ranks."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

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


def probe_parser(doc: str) -> argparse.ArgumentParser:
    """The options every held-out probe takes: --task, --model, --alpha (the served
    weight); the probe adds its own."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--alpha", type=float, default=5.0, help="the served fusion weight")
    return parser


def reciprocal_ranks(
    engine: Any, instances: Sequence[Any], targets: Sequence[str], alpha: float
) -> tuple[np.ndarray, float]:
    """Each instance ranked incrementally at fusion weight `alpha`: the reciprocal rank of
    its target, and the pass's process CPU seconds per request."""
    requests = [i.to_request("incremental", fusion_alpha=alpha) for i in instances]
    start = time.process_time()
    results = engine.rank_batch(requests, progress=True)
    cpu = (time.process_time() - start) / len(requests)
    rr = [1.0 / (r.order.index(t) + 1) for r, t in zip(results, targets, strict=True)]
    return np.array(rr), cpu
