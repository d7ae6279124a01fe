"""Which code produced a result: the git commit of the checkout and the Python files that
differed from it, recorded in every results file (`recsys eval --out`) and model card
(`recsys train-ranker`).

A number measured while code was being changed may not reproduce from any commit; a
non-empty `uncommitted` list says so when the number is read later, instead of a
re-measurement finding out (docs/RESULTS.md 0c has two such cases).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
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


COMPILED = ("lightfm",)  # packages whose compiled code a fit runs, built on the machine


def extension_digest(package: str) -> str:
    """SHA-256 (12 hex) of a package's compiled extension modules, "absent" without them.

    lightfm-next has no binary wheel: pip compiles it where it installs, by default with
    `-march=native -ffast-math`, so LightFM's factors (and every LambdaMART fitted on its
    scores) depend on the CPU it was built on. The Makefile builds it portably
    (LIGHTFM_NO_CFLAGS=1); this digest tells two builds apart in results and cache keys."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return "absent"
    digest = hashlib.sha256()
    folder = Path(next(iter(spec.submodule_search_locations)))
    for so in sorted(folder.glob("*.so")):
        stat = so.stat()
        digest.update(
            so.name.encode()
            + b"\0"
            + _file_sha256(str(so), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        )
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, inode: int, size: int, mtime_ns: int) -> bytes:
    """A file's SHA-256, read once per (path, inode, size, modification time): every
    fit-cache key and results file asks for the LightFM build, and a reinstall writes new
    files (pip removes the old ones), hence a new inode."""
    return hashlib.sha256(Path(path).read_bytes()).digest()


def numeric_kernels() -> list[str]:
    """The BLAS libraries numpy computes with, as "library version architecture"
    (threadpoolctl; e.g. "openblas 0.3.31.188.0 SkylakeX"), and the build of each compiled
    package a fit runs ("lightfm build 1a2b3c4d5e6f", `extension_digest`). Another build of
    LightFM fits other factors, and a LambdaMART on them can come out different from the
    same code and data (docs/eval.md, "Which fit a served run fused with")."""
    import numpy  # noqa: F401 (loads its BLAS, which threadpoolctl reports only once loaded)

    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # a dependency of scikit-learn; absent only in a stripped install
        return []
    fields = ("internal_api", "version", "architecture")
    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    builds = [f"{name} build {extension_digest(name)}" for name in COMPILED]
    return sorted(" ".join(str(lib.get(k) or "-") for k in fields) for lib in blas) + builds
