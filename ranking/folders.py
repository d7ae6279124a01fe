"""Folders written whole or not at all: training checkpoints, exported models, bundles.

A model folder is several files (manifest, vectors, projector, adapter, card) that only make
sense together. Written in place, a crash or a full disk halfway leaves a folder that mixes
two versions, which a server may then load. Here every such folder is written into a hidden
sibling first and swapped in by two renames:

    FOLDER/        the current version
    .FOLDER.tmp/   the one being written (removed if the writing fails)
    .FOLDER.old/   the previous version, only between the two renames of the swap

A crash before the swap leaves FOLDER untouched; a crash between the two renames leaves the
previous version as `.FOLDER.old`, which `readable` finds. Both renames stay on one file
system (siblings), where rename is atomic.

Replacing a folder deletes what it held, so only an earlier version of the same kind is
replaced: an existing, non-empty FOLDER must hold the `marker` file its kind always writes
(a hybrid model's manifest, a checkpoint's state). Anything else (`--out models` for
`--out models/new`, say) raises `ForeignFolderError` before a byte is written.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ForeignFolderError", "readable", "replaceable", "write_whole", "written_whole"]


class ForeignFolderError(FileExistsError):
    """The folder to write exists and holds something other than an earlier version."""


def replaceable(folder: str | Path, marker: str) -> bool:
    """Whether `written_whole(folder, marker)` may replace `folder`: absent, empty, or an
    earlier version (it holds `marker`)."""
    folder = Path(folder)
    if not folder.exists():
        return True
    return folder.is_dir() and (not any(folder.iterdir()) or (folder / marker).exists())


def _siblings(folder: Path) -> tuple[Path, Path]:
    return folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")


@contextmanager
def written_whole(folder: str | Path, marker: str) -> Iterator[Path]:
    """Yield an empty folder to write into; when the block ends without an error it
    replaces `folder` (created with its parents if need be), the previous contents gone.
    When the block raises, `folder` is left as it was and the partial writing removed.
    `marker`: the file every version of this kind of folder holds (module doc). A
    symbolic link (`models/current` -> `models/v3`, say) keeps pointing where it did: the
    folder it names is the one replaced."""
    folder = Path(folder)
    if folder.is_symlink():
        folder = folder.resolve()
    if not replaceable(folder, marker):
        raise ForeignFolderError(
            f"{folder} exists and is not an earlier version of what is being written (it "
            f"has no {marker}); writing there would delete its contents: name a new or "
            "empty folder"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _siblings(folder)
    _remove(tmp)  # left by a process killed while writing
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    _remove(old)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    _remove(old)


def _remove(path: Path) -> None:
    """Whatever is at `path`, gone: a folder with its contents, a file or a link."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def readable(folder: str | Path) -> Path | None:
    """`folder` if it exists, else its previous version when a crash came between the two
    renames of `written_whole`; None when neither exists."""
    folder = Path(folder)
    for candidate in (folder, _siblings(folder)[1]):
        if candidate.is_dir():
            return candidate
    return None


def write_whole(path: str | Path, text: str) -> Path:
    """Write a text file whole or not at all: into a hidden sibling, then renamed over
    `path` (parents created). A crash mid-write leaves the previous file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
