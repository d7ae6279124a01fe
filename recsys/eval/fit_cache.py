"""A folder of fitted models, keyed by what they were fitted from and the code that fit them.

Why: the LambdaMART fusion signal costs about two minutes on rec-game (two LightFM fits, the
training queries' features, LightGBM) and every `recsys eval` of the same task — each run of
a weight sweep, each model compared — refits exactly the same model. Fitting is
deterministic (LightFM on one thread, LightGBM seeded), so a model fitted once can be loaded
instead.

The key is a SHA-256 over everything the fit reads: the training log, the catalogue, the
options, the source of the code that fits (every `.py` file of `retrieval/` and the caller's
module) and the versions of the libraries it calls. Change any of them and the key changes;
nothing is ever invalidated by hand. An entry is written into a temporary folder and renamed
into place, so a crash leaves no half entry; an entry that no longer loads is refitted and
replaced. At most `max_entries` entries are kept (least recently used go first); the folder
can be deleted at any time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import polars as pl

T = TypeVar("T")

MAX_ENTRIES = 8  # a rec-game LambdaMART entry is about 45 MB
LIBRARIES = ("lightfm-next", "lightgbm", "numpy", "scipy", "polars")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def library_versions(names: Iterable[str] = LIBRARIES) -> str:
    """Each library's version, and each compiled package's build (LightFM is compiled
    where it is installed: recsys.provenance.extension_digest)."""
    from recsys.provenance import COMPILED, extension_digest

    out = [f"{name}-build={extension_digest(name)}" for name in COMPILED]
    for name in names:
        try:
            out.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}=absent")
    return ",".join(out)


def source_digest(*paths: Path) -> str:
    """SHA-256 of the `.py` files at or under `paths` (relative names and contents)."""
    digest = hashlib.sha256()
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*.py")))
    for f in files:
        digest.update(f.relative_to(_PACKAGE_ROOT).as_posix().encode() + b"\0")
        digest.update(f.read_bytes() + b"\0")
    return digest.hexdigest()


def frame_digest(frame: pl.DataFrame, columns: Iterable[str]) -> str:
    """SHA-256 of the listed columns, row order included (a fit reads the log in order)."""
    digest = hashlib.sha256()
    for name in columns:
        digest.update(name.encode() + b"\0")
        digest.update("\x1f".join(map(str, frame[name].to_list())).encode() + b"\0")
    return digest.hexdigest()


def fit_key(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


class FitCache:
    """`load_or_fit(name, key, fit, save, load)`: the entry `name-key` if it loads, else
    `fit()` saved there. `hits` / `misses` count this object's answers."""

    def __init__(self, root: str | Path, max_entries: int = MAX_ENTRIES) -> None:
        self.root = Path(root)
        self.max_entries = max(1, max_entries)
        self.hits = self.misses = 0

    def entry(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key[:24]}"

    def load_or_fit(
        self,
        name: str,
        key: str,
        fit: Callable[[], T],
        save: Callable[[T, Path], object],
        load: Callable[[Path], T],
    ) -> T:
        folder = self.entry(name, key)
        if folder.is_dir():
            try:
                value = load(folder)
            except Exception:  # any entry that does not load (torn, old format) is refitted
                shutil.rmtree(folder, ignore_errors=True)
            else:
                os.utime(folder)  # recently used: evicted last
                self.hits += 1
                return value
        self.misses += 1
        value = fit()
        self._publish(folder, lambda tmp: save(value, tmp))
        return value

    def _publish(self, folder: Path, write: Callable[[Path], object]) -> None:
        """Write into a temporary sibling, then rename: readers see a whole entry or none.
        A cache that cannot be written (read-only disk, full disk) costs only the refit."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=self.root))
        except OSError:
            return
        try:
            write(tmp)
            os.replace(tmp, folder)
        except OSError:  # another process published it first, or the disk is full
            shutil.rmtree(tmp, ignore_errors=True)
            return
        self._evict()

    def _evict(self) -> None:
        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[self.max_entries :]:
            shutil.rmtree(old, ignore_errors=True)
        stale = time.time() - 24 * 3600  # temporary folders a killed process left behind
        for tmp in self.root.glob(".*"):
            if tmp.is_dir() and tmp.stat().st_mtime < stale:
                shutil.rmtree(tmp, ignore_errors=True)
