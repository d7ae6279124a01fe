"""Which code produced a result: the git commit of the checkout and the Python files that
differed from it, recorded in every results file (`recsys eval --out`) and model card
(`recsys train-ranker`).

A number measured while code was being changed may not reproduce from any commit; a
non-empty `uncommitted` list says so when the number is read later, instead of a
re-measurement finding out (docs/RESULTS.md 0c has two such cases).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

MAX_LISTED = 20  # uncommitted files named; the count is always exact
ROOT = Path(__file__).resolve().parent.parent


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version(root: Path = ROOT) -> dict[str, Any]:
    """{"commit": HEAD, or None unless `root` is the top of a git checkout, "uncommitted":
    the .py files that are modified, added or untracked (at most MAX_LISTED),
    "uncommitted_count": how many}."""
    lines = (_git(root, "rev-parse", "--show-toplevel", "HEAD") or "").splitlines()
    # an installed package inside some other checkout (a venv in a project) is not that code
    if len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():
        return {"commit": None, "uncommitted": [], "uncommitted_count": 0}
    status = _git(root, "status", "--porcelain", "--untracked-files=all", "--", "*.py") or ""
    changed = sorted(line[3:].strip() for line in status.splitlines() if line.strip())
    return {"commit": lines[1].strip(), "uncommitted": changed[:MAX_LISTED],
            "uncommitted_count": len(changed)}  # fmt: skip


def numeric_kernels() -> list[str]:
    """The BLAS libraries numpy computes with, as "library version architecture"
    (threadpoolctl; e.g. "openblas 0.3.31.188.0 SkylakeX"). OpenBLAS picks its
    kernels by CPU generation, and sums in another order on another one: a fit that
    thresholds on those sums (LambdaMART's trees) can come out different on another machine
    from the same code and data (docs/eval.md, "Which fit a served run fused with")."""
    import numpy  # noqa: F401 (loads its BLAS, which threadpoolctl reports only once loaded)

    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # a dependency of scikit-learn; absent only in a stripped install
        return []
    fields = ("internal_api", "version", "architecture")
    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return sorted(" ".join(str(lib.get(k) or "-") for k in fields) for lib in blas)
