"""Versioned artifacts (models, indexes, id maps), written atomically and checked on load.

Layout under a root directory:

    <root>/<name>/<version>/...files...  manifest.json   (sha256 of every file)
    <root>/<name>/LATEST                                 (the newest complete version)

A save writes every file into a hidden temporary directory next to the target, records
their sha256 in manifest.json, flushes them to disk, and only then renames the directory to
its version name (one atomic rename) and replaces LATEST (temporary file, then rename). A
crash or an exception at any point before the rename leaves no trace but the temporary
directory, and the previous versions stay loadable. Versions are immutable: saving an
existing version is refused. Loading verifies the checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retrieval.errors import RetrievalError

MANIFEST = "manifest.json"
LATEST = "LATEST"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Artifact:
    name: str
    version: str
    path: Path
    sha256: str  # digest of the manifest: one checksum for the whole version
    meta: dict[str, Any]


def new_version() -> str:
    """A sortable, unique version name: UTC time plus a short random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def save(
        self,
        name: str,
        version: str,
        write: Callable[[Path], None],
        *,
        meta: dict[str, Any] | None = None,
    ) -> Artifact:
        """Call `write(directory)` to fill a temporary directory, then publish it as `version`."""
        _check_name(name, "artifact name")
        _check_name(version, "version")
        target = self.root / name / version
        if target.exists():
            raise RetrievalError(
                f"{name} version {version!r} already exists; versions are immutable, "
                "save under a new version (retrieval.artifacts.new_version())"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=target.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; artifacts are read by other processes
            write(tmp)
            files = {
                p.relative_to(tmp).as_posix(): sha256_file(p)
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            manifest = {"name": name, "version": version, "files": files, "meta": meta or {}}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            _fsync_tree(tmp)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _write_atomic(target.parent / LATEST, version)
        return self.load(name, version)

    def versions(self, name: str) -> list[str]:
        """Complete versions of `name`, oldest first."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / MANIFEST).exists())

    def latest(self, name: str) -> str | None:
        pointer = self.root / name / LATEST
        if pointer.exists():
            return pointer.read_text().strip() or None
        versions = self.versions(name)
        return versions[-1] if versions else None

    def load(self, name: str, version: str | None = None) -> Artifact:
        """The verified artifact `version` of `name` (the latest when None or 'latest')."""
        if version in (None, "latest"):
            version = self.latest(name)
            if version is None:
                raise RetrievalError(
                    f"no saved {name} artifact under {self.root}; build one first "
                    "(e.g. `recsys demo`)"
                )
        path = self.root / name / version
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            known = self.versions(name)
            raise RetrievalError(
                f"{name} version {version!r} does not exist under {self.root}; "
                f"available: {known or 'none'}"
            )
        manifest_text = manifest_path.read_text()
        manifest = json.loads(manifest_text)
        for rel, expected in manifest["files"].items():
            file = path / rel
            if not file.exists() or sha256_file(file) != expected:
                raise RetrievalError(
                    f"{name} version {version!r} is corrupt: {rel} is missing or its checksum "
                    "does not match; rebuild it or load another version"
                )
        digest = hashlib.sha256(manifest_text.encode()).hexdigest()
        return Artifact(name, version, path, digest, manifest.get("meta", {}))


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not _VERSION_RE.match(value):
        raise RetrievalError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (max 128)"
        )


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
