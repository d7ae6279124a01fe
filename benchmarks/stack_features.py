"""Cache the LM and LambdaMART features of lambdamart-lm (recsys.eval.stacked) for one task:
stacking groups and held-out instances.
Usage: python benchmarks/stack_features.py TASK MODEL OUT.pkl"""

import pickle
import sys
from pathlib import Path

import numpy as np

from recsys import runtime
from recsys.eval import tasks
from recsys.eval.ltr import fit_feature_models, training_groups
from recsys.eval.stacked import StackedLMRanker
from recsys.settings import get_settings

task, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
s = get_settings()
ts = tasks.build_task(task, tasks.default_data(task, s.data_dir), 7)
held = tasks.for_users(ts, "heldout", 7)
eng = runtime.load_ranker(model=model, fusion_alpha=0.0)
r = StackedLMRanker(eng, seed=7)
groups = training_groups(ts, 7, hard_negatives=False)
xs = [groups.models.features(i.user_id, i.history_ids, i.ids) for i in groups.instances]
labels = [np.array([i.relevance.get(c.id, 0.0) for c in i.candidates]) for i in groups.instances]
stack = [k for k, i in enumerate(groups.instances) if r._lm_unseen(i)]
lm_stack = r._lm_features([groups.instances[k] for k in stack], progress=True)
full = fit_feature_models(ts.train, ts, 7)
ex = [full.features(i.user_id, i.history_ids, i.ids) for i in held.instances]
ey = [np.array([i.relevance.get(c.id, 0.0) for c in i.candidates]) for i in held.instances]
lm_eval = r._lm_features(held.instances, progress=True)
Path(out).write_bytes(
    pickle.dumps(
        dict(
            xs=xs,
            labels=labels,
            stack=stack,
            lm_stack=lm_stack,
            ex=ex,
            ey=ey,
            lm_eval=lm_eval,
            users=[i.user_id for i in groups.instances],
            eval_ids=[i.id for i in held.instances],
        ),
    )
)
print("done", len(stack), len(ex))
