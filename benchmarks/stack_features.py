"""Cache what choosing the lambdamart-lm stack needs (recsys.eval.stacked) for one task: the
LambdaMART training groups and the LM's features on the stacking groups (users the LM never
trained on). Usage: python benchmarks/stack_features.py TASK MODEL OUT.pkl"""

import pickle
import sys
from pathlib import Path

from recsys import runtime
from recsys.eval import tasks
from recsys.eval.ltr import training_groups
from recsys.eval.stacked import lm_features, stacking_indices
from recsys.settings import get_settings

SEED = 7

task, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
taskset = tasks.build_task(task, tasks.default_data(task, get_settings().data_dir), SEED)
groups = training_groups(taskset, SEED, hard_negatives=False)
stack = stacking_indices(groups.instances, SEED)
engine = runtime.load_ranker(model=model, fusion_alpha=0.0)
lm = lm_features(engine, [groups.instances[k] for k in stack], progress=True)
Path(out).write_bytes(pickle.dumps({"labelled": groups.labelled, "stack": stack, "lm": lm}))
print(f"{len(stack)} stacking groups of {len(groups.instances)} -> {out}")
