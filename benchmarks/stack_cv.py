"""Choose the lambdamart-lm stack by 5-fold CV on the stacking groups (x_{T-1} targets), never
on the evaluated x_T. Usage: python benchmarks/stack_cv.py OUT.pkl (from stack_features.py)"""

import pickle
import sys
from pathlib import Path

import numpy as np

from ranking.fusion import zscores
from recsys.eval.stacked import out_of_fold_z
from retrieval.ltr import LambdaMART

SEED = 7
d = pickle.loads(Path(sys.argv[1]).read_bytes())
stack, lm = d["stack"], d["lm"]


def mrr(scores, y):
    o = np.argsort(-scores, kind="stable")
    return 1.0 / (1 + int(np.where(y[o] > 0)[0][0]))


# out-of-fold first-stage scores, as the module computes them
bz = out_of_fold_z(d["labelled"], stack, SEED)
y = [d["labelled"][k][1] for k in stack]
S = list(range(len(stack)))
print(
    "stack groups",
    len(S),
    "base oof MRR",
    np.mean([mrr(bz[j], y[j]) for j in S]),
    "LM alone MRR on stack groups",
    np.mean([mrr(lm[j][:, 0], y[j]) for j in S]),
)
rng = np.random.default_rng(0)
cv = rng.permutation(len(S)) % 5


def cv_score(fit_score):
    out = []
    for f in range(5):
        tr = [j for j in S if cv[j] != f]
        te = [j for j in S if cv[j] == f]
        sc = fit_score(tr)
        out += [mrr(sc(j), y[j]) for j in te]
    return np.mean(out)


def linear(w, col=0):
    return lambda tr: lambda j: bz[j] + w * zscores(lm[j][:, col])


for w in [0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]:
    print("linear keep w", w, round(cv_score(linear(w)), 4))


def lgb(cols, **p):
    def fit(tr):
        rows = [(np.column_stack([bz[j], lm[j]])[:, cols], y[j]) for j in tr]
        m = LambdaMART.fit(rows, [f"c{c}" for c in cols], seed=SEED, **p)
        return lambda j: m.scores(np.column_stack([bz[j], lm[j]])[:, cols])

    return fit


P = {"n_estimators": 150, "num_leaves": 7, "min_child_samples": 40}
print("lgb A (module)", round(cv_score(lgb([0, 1, 2], **P)), 4))
print("lgb mono", round(cv_score(lgb([0, 1, 2], monotone_constraints=[1, 1, 1], **P)), 4))
print(
    "lgb small",
    round(
        cv_score(
            lgb([0, 1, 2], n_estimators=60, num_leaves=4, min_child_samples=60, learning_rate=0.05)
        ),
        4,
    ),
)
