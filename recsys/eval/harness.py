"""Run a ranker over task instances and measure it.

Per task: n, MRR, NDCG@1/5/10, Hit@1/5 (mean and bootstrap 95% interval over instances),
the analytic random MRR for the same candidate counts, invalid-answer and fallback counts
(engine modes), wall time and requests/s. Engine modes are fed through `rank_batch`, a
chunk of requests at a time, so the engine batches forward passes across requests.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranking.fusion import ABSTAIN_SIGNAL
from ranking.metrics import expected_random_mrr, ndcg_at_k
from ranking.types import MAX_ABSTAIN, MODES, RankResult, is_valid_abstain
from recsys.errors import UserError
from recsys.eval.baselines import EvalRanker, ScoreDigest, scored_candidates
from recsys.eval.fit_cache import FitCache
from recsys.eval.rankers import BASELINES, CACHED, check_bag, make_baseline
from recsys.eval.tasks import Instance, TaskSet
from recsys.stats import bootstrap_mean

STACKED = "lambdamart-lm"  # recsys.eval.stacked: needs an LM (--model), like the engine modes
BOOTSTRAP_SAMPLES = 1000  # the published tables were computed with 1000 resamples
COLD_START_MAX = 5  # a target with fewer training interactions is in the cold-start slice
METRICS = ("mrr", "ndcg@1", "ndcg@5", "ndcg@10", "hit@1", "hit@5")


class EngineRanker:
    """An engine mode (incremental, score, reason, direct) as an EvalRanker.

    With a score-fusion weight (the request field `fusion_alpha`, else the ranker's
    default) the candidates need retrieval scores: a task's own when it has them (passage
    BM25, rec tasks with `--candidates retrieval`), otherwise the scores of the baseline
    `fusion_signal` fitted on the task's training interactions — what `recsys train`
    fuses with on the same instances (`--signal`, transitions by default)."""

    def __init__(
        self,
        ranker: Any,
        mode: str,
        *,
        fusion_signal: str = "transitions",
        signal_seed: int = 7,
        signal_cache: FitCache | None = None,
        signal_bag: int = 1,
        **request_fields: Any,
    ) -> None:
        self.ranker, self.mode = ranker, mode
        self.fusion_signal, self.signal_seed = fusion_signal, signal_seed
        self.signal_cache, self.signal_bag = signal_cache, signal_bag
        self.request_fields = request_fields
        self.scorer: Any = None
        self.scored_task: TaskSet | None = None  # the task set `scorer` was fitted on
        # item -> training interactions, the abstention rule's signal (ranking.fusion)
        self.interactions: dict[str, int] | None = None
        self.prompt_tokens: list[int] = []  # per ranked request (reported in the run's info)
        self.signal_digest = ScoreDigest()

    @property
    def fusion_alpha(self) -> float:
        """The weight the engine fuses with (reason mode cannot fuse: 0)."""
        alpha = self.request_fields.get("fusion_alpha")
        alpha = self.ranker.fusion_alpha if alpha is None else alpha
        return 0.0 if self.mode == "reason" else float(alpha)

    def use_fusion_alpha(self, alpha: float) -> None:
        """Fuse at `alpha` from the next run on; the fitted signal is kept (a sweep fits it
        once per task)."""
        self.request_fields["fusion_alpha"] = alpha

    @property
    def name(self) -> str:
        alpha = self.fusion_alpha
        if not alpha:
            return self.mode
        below = self.request_fields.get("fusion_abstain_below") or 0
        return f"{self.mode}+fusion@{alpha:g}" + (f"+abstain<{below}" if below else "")

    @property
    def model(self) -> str:
        return str(self.ranker.model_id)

    def prepare(self, taskset: TaskSet) -> None:
        """Zero-shot: nothing to learn, except the fusion signal when the task's candidates
        carry no scores (fitted once per task set: a `--fusion-alpha` sweep reuses it)."""
        self.signal_digest = ScoreDigest()  # this run's fusion scores (reported in its info)
        self.interactions = None
        if self.request_fields.get("fusion_abstain_below"):
            if (counts := target_counts(taskset)) is None:
                raise UserError(f"--fusion-abstain-below needs the items' training "
                                f"interactions; {taskset.name!r} has no training log")  # fmt: skip
            self.interactions = counts
        if self.scorer is not None and self.scored_task is taskset:
            return
        self.scorer, self.scored_task = None, None
        scored = all(c.score is not None for i in taskset.instances for c in i.candidates)
        if not self.fusion_alpha or scored:
            return
        if self.fusion_signal == "none":
            raise UserError(
                f"--fusion-alpha needs candidate scores and {taskset.name!r} has none; pass "
                "--fusion-signal transitions|lightfm (rec tasks) or --fusion-alpha 0"
            )
        scorer = make_baseline(
            self.fusion_signal, seed=self.signal_seed, cache=self.signal_cache, bag=self.signal_bag
        )
        try:
            scorer.prepare(taskset)
        except UserError as exc:
            raise UserError(
                f"--fusion-alpha needs candidate scores and {taskset.name!r} has none; "
                f"--fusion-signal {self.fusion_signal}: {exc}"
            ) from None
        self.scorer, self.scored_task = scorer, taskset

    def rank_instances(self, instances: Sequence[Instance]) -> list[RankResult]:
        if self.scorer is not None and self.fusion_alpha:
            signal = [self.scorer.scores(i) for i in instances]
            for scores in signal:
                self.signal_digest.add(scores)
            instances = [
                dataclasses.replace(i, candidates=scored_candidates(i, scores))
                for i, scores in zip(instances, signal, strict=True)
            ]
        if self.interactions is not None:
            instances = [with_interactions(i, self.interactions) for i in instances]
        requests = [i.to_request(self.mode, **self.request_fields) for i in instances]
        self.prompt_tokens.extend(self._prompt_tokens(r) for r in requests)
        return self.ranker.rank_batch(requests)

    def run_info(self) -> dict[str, Any]:
        """The run's prompt tokens per request (mean, max) and `fusion_signal_sha256`, the
        digest of the fitted signal it fused with (when it fused with one); the token count
        starts afresh for the next run."""
        out: dict[str, Any] = {}
        if self.prompt_tokens:
            tokens = self.prompt_tokens
            out |= {"prompt_tokens_mean": round(float(np.mean(tokens)), 1),
                    "prompt_tokens_max": max(tokens)}  # fmt: skip
            self.prompt_tokens = []
        if self.signal_digest.count:
            out["fusion_signal_sha256"] = self.signal_digest.hexdigest()
        return out

    def _prompt_tokens(self, request: Any) -> int:
        """Tokens of the request's (first) prompt as this model is prompted."""
        from ranking.modes.incremental import build_sequence

        return len(build_sequence(request, self.ranker.backend).prompt_ids)


def make_ranker(
    name: str,
    *,
    model: str = "default",
    device: str | None = None,
    batch_size: int | None = None,
    seed: int = 7,
    reason_max_new_tokens: int | None = None,
    fusion_alpha: float = 0.0,
    fusion_signal: str = "transitions",
    fit_cache: FitCache | None = None,
    lgb_bag: int = 1,
    fusion_abstain_below: int = 0,
) -> EvalRanker:
    """A baseline by name, or an engine mode loading `model` (already resolved to
    'default' or a path by the caller) with the default score-fusion weight
    `fusion_alpha` (see EngineRanker for where candidate scores come from); options left
    None are the settings' (recsys.runtime). `fit_cache`: where slow baselines (as rankers
    or fusion signals) keep what they fitted (recsys.eval.fit_cache); `lgb_bag`: the LightGBM
    fits such a LambdaMART averages; `fusion_abstain_below`: ranking.fusion's abstention."""
    if name in BASELINES:
        for option, value in (("--fusion-alpha", fusion_alpha),
                              ("--fusion-abstain-below", fusion_abstain_below)):  # fmt: skip
            if value:
                raise UserError(f"{option} applies to engine modes {list(MODES)}, not {name!r}")
        return make_baseline(name, seed=seed, cache=fit_cache, bag=lgb_bag)
    if name not in MODES and name != STACKED:
        raise UserError(f"unknown ranker {name!r}; use an engine mode {list(MODES)}, "
                        f"{STACKED!r} (LambdaMART stacked on the LM: --model) "
                        f"or a baseline {sorted(BASELINES)}")  # fmt: skip
    check_bag(lgb_bag)
    check_abstain(fusion_abstain_below, fusion_alpha)
    if lgb_bag != 1 and (name == STACKED or BASELINES.get(fusion_signal) not in CACHED):
        raise UserError("--lgb-bag averages LambdaMART fits: with an LM it needs --fusion-signal "
                        "lambdamart or lambdamart-text")  # fmt: skip
    from recsys import runtime

    engine = runtime.load_ranker(
        model=model,
        device=device,
        batch_size=batch_size,
        reason_max_new_tokens=reason_max_new_tokens,
        fusion_alpha=fusion_alpha,
    )
    if name == STACKED:
        from recsys.eval.stacked import StackedLMRanker

        return StackedLMRanker(engine, seed=seed)
    return EngineRanker(
        engine, name, fusion_signal=fusion_signal, signal_seed=seed, signal_cache=fit_cache,
        signal_bag=lgb_bag, fusion_abstain_below=fusion_abstain_below,
    )  # fmt: skip


def relevant_ids(instance: Instance, min_grade: float) -> set[str]:
    return {cid for cid, g in instance.relevance.items() if g >= min_grade}


def instance_metrics(
    instance: Instance, order: Sequence[str], min_grade: float, *, linear_gain: bool = False
) -> dict[str, float]:
    """Metrics of one ranked list. MRR/Hit use the candidates with grade >= min_grade
    (the target for single-target tasks; grade >= 2 for TREC re-ranking, the usual
    binary cut); NDCG uses the graded relevance (linear gains for TREC, as trec_eval)."""
    relevant = relevant_ids(instance, min_grade)
    rel, lin = instance.relevance, linear_gain
    first = next((i for i, cid in enumerate(order) if cid in relevant), None)
    hit = lambda k: float(first is not None and first < k)  # noqa: E731
    return {
        "mrr": 0.0 if first is None else 1.0 / (first + 1),
        "ndcg@1": ndcg_at_k(order, rel, 1, linear_gain=lin),
        "ndcg@5": ndcg_at_k(order, rel, 5, linear_gain=lin),
        "ndcg@10": ndcg_at_k(order, rel, 10, linear_gain=lin),
        "hit@1": hit(1),
        "hit@5": hit(5),
    }


def is_permutation(result: RankResult, instance: Instance) -> bool:
    return len(result.order) == len(instance.candidates) and set(result.order) == set(instance.ids)


@dataclass
class TaskRun:
    """The outcome of one ranker on one task (what goes into results.json)."""

    task: str
    ranker: str
    model: str
    n: int
    metrics: dict[str, dict[str, float]]
    random_mrr: float
    skipped: dict[str, int]
    info: dict[str, Any]
    invalid_answers: int
    fallbacks: int
    bad_permutations: int
    prepare_s: float
    wall_s: float
    cpu_s: float  # process CPU time while ranking (all threads): honest on a shared machine
    requests_per_s: float
    # per instance: id, user, cold flag and every metric (for paired comparisons)
    instances: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    slices: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate(
    ranker: EvalRanker,
    taskset: TaskSet,
    *,
    chunk: int = 32,
    progress: bool = True,
    seed: int = 0,
    keep_results: list[dict[str, Any]] | None = None,
) -> TaskRun:
    """Rank every instance of `taskset` with `ranker` and aggregate the metrics.

    A result that is not a permutation of the candidates (never expected: every mode
    guarantees one) is counted in `bad_permutations` and scored as a miss."""
    instances = taskset.instances
    if not instances:
        raise UserError(f"{taskset.name}: no instances to evaluate ({taskset.skipped})")
    start = time.perf_counter()
    ranker.prepare(taskset)
    prepare_s = time.perf_counter() - start
    bar = _bar(len(instances), f"{taskset.name} / {ranker.name}", progress)
    results: list[RankResult] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for lo in range(0, len(instances), chunk):
        results.extend(ranker.rank_instances(instances[lo : lo + chunk]))
        if bar is not None:
            bar.update(min(chunk, len(instances) - lo))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if bar is not None:
        bar.close()
    trec = taskset.metric == "ndcg@10"  # TREC DL re-ranking: graded qrels
    min_grade = 2.0 if trec else 1e-9
    rows, bad = [], 0
    counts = target_counts(taskset)
    per_instance = []
    for inst, res in zip(instances, results, strict=True):
        if is_permutation(res, inst):
            rows.append(instance_metrics(inst, res.order, min_grade, linear_gain=trec))
        else:
            bad += 1
            rows.append(dict.fromkeys(METRICS, 0.0))
        if keep_results is not None:
            keep_results.append({"id": inst.id, "order": res.order, **rows[-1]})
        cold = counts is not None and counts.get(inst.target, 0) < COLD_START_MAX
        per_instance.append({"id": inst.id, "user": inst.user_id, "cold": cold,
                             **{k: round(v, 6) for k, v in rows[-1].items()}})  # fmt: skip
    metrics = summarise(rows, seed)
    cold_rows = [r for r, p in zip(rows, per_instance, strict=True) if p["cold"]]
    slices = {}
    if counts is not None:
        slices["cold-start"] = {
            "n": len(cold_rows),
            "definition": f"target has < {COLD_START_MAX} training interactions",
            "metrics": summarise(cold_rows, seed) if cold_rows else {},
        }
    return TaskRun(
        task=taskset.name,
        ranker=ranker.name,
        model=ranker.model,
        n=len(instances),
        metrics=metrics,
        random_mrr=float(np.mean([expected_random_mrr(len(i.candidates)) for i in instances])),
        skipped=dict(taskset.skipped),
        info={**taskset.info, **ranker.run_info()},
        invalid_answers=sum(r.invalid_answers for r in results),
        fallbacks=sum(bool(r.fallback) for r in results),
        bad_permutations=bad,
        prepare_s=round(prepare_s, 3),
        wall_s=round(wall, 3),
        cpu_s=round(cpu, 3),
        requests_per_s=round(len(instances) / wall, 3) if wall > 0 else float("inf"),
        instances=per_instance,
        slices=slices,
    )


def summarise(rows: Sequence[dict[str, float]], seed: int) -> dict[str, dict[str, float]]:
    """Mean and bootstrap 95% interval of every metric over the rows."""
    metrics = {}
    for name in METRICS:
        values = np.array([r[name] for r in rows])
        ci = bootstrap_mean(values, n_boot=BOOTSTRAP_SAMPLES, seed=seed)
        metrics[name] = {"mean": ci.mean, "low": ci.low, "high": ci.high}
    return metrics


def check_abstain(below: int, fusion_alpha: float) -> None:
    """`--fusion-abstain-below` is a count within RankRequest's limit, and needs fusion."""
    if not is_valid_abstain(below):
        raise UserError(f"--fusion-abstain-below {below!r}: give a whole number of "
                        f"interactions from 0 to {MAX_ABSTAIN} (0: never)")  # fmt: skip
    if below and not fusion_alpha:
        raise UserError("--fusion-abstain-below changes how the LM is fused with its signal: "
                        "it needs --fusion-alpha > 0")  # fmt: skip


def with_interactions(instance: Instance, counts: dict[str, int]) -> Instance:
    """The instance with each candidate's training interactions as its signal
    `interactions` (ranking.fusion's abstention rule reads it)."""
    candidates = tuple(
        dataclasses.replace(c, signals={**c.signals, ABSTAIN_SIGNAL: counts.get(c.id, 0)})
        for c in instance.candidates
    )
    return dataclasses.replace(instance, candidates=candidates)


def target_counts(taskset: TaskSet) -> dict[str, int] | None:
    """Rec tasks: item -> interactions in the training log (what "cold" is measured on)."""
    if taskset.train is None:
        return None
    return dict(taskset.train.group_by("item_id").len().iter_rows())


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="req")


def headline(run: TaskRun | dict[str, Any]) -> float:
    """The task's headline number x 100: nDCG@10 for TREC re-ranking, MRR otherwise."""
    data = run.to_dict() if isinstance(run, TaskRun) else run
    key = "ndcg@10" if str(data["task"]).startswith("passage-rerank") else "mrr"
    return 100 * data["metrics"][key]["mean"]
