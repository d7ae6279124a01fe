"""Folders written whole or not at all (ranking.folders), and the writers that use it: a
crash mid-write leaves the previous model, checkpoint or bundle as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ranking.folders import ForeignFolderError, readable, replaceable, written_whole
from ranking.hybrid import MANIFEST, is_hybrid_dir

MARK = "kind.json"


def contents(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def version(folder: Path, text: str, *extra: str) -> None:
    with written_whole(folder, MARK) as tmp:
        (tmp / MARK).write_text(text)
        for name in extra:
            (tmp / name).write_text(text)


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def test_a_new_version_replaces_the_whole_folder(tmp_path) -> None:
    folder = tmp_path / "deep" / "m"
    version(folder, "v1", "only-in-v1.txt")
    version(folder, "v2")
    assert contents(folder) == {MARK: b"v2"}  # nothing of v1 is left
    assert siblings(folder) == []  # no .tmp or .old beside it


def test_an_error_while_writing_leaves_the_previous_version(tmp_path) -> None:
    folder = tmp_path / "m"
    version(folder, "v1", "a.txt")
    before = contents(folder)
    with pytest.raises(OSError, match="disk full"), written_whole(folder, MARK) as tmp:
        (tmp / MARK).write_text("v2")
        raise OSError("disk full")
    assert contents(folder) == before and siblings(folder) == []


def test_a_crash_between_the_renames_leaves_the_previous_version_readable(
    tmp_path, monkeypatch
) -> None:
    folder = tmp_path / "m"
    version(folder, "v1")
    real = Path.rename

    def rename(self: Path, target: Path) -> Path:
        if self.name == ".m.tmp":
            raise KeyboardInterrupt  # the process dies after moving the old version aside
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        version(folder, "v2")
    monkeypatch.undo()
    assert not folder.exists()
    assert readable(folder) == tmp_path / ".m.old" and contents(readable(folder)) == {MARK: b"v1"}
    version(folder, "v3")  # the next write cleans up
    assert readable(folder) == folder and contents(folder) == {MARK: b"v3"}
    assert siblings(folder) == []


def test_a_killed_writers_leftovers_are_removed_by_the_next_write(tmp_path) -> None:
    folder = tmp_path / "m"
    (tmp_path / ".m.tmp").mkdir()
    (tmp_path / ".m.tmp" / "half.bin").write_bytes(b"\0" * 10)
    version(folder, "v1")
    assert contents(folder) == {MARK: b"v1"} and siblings(folder) == []
    assert readable(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("setup", "allowed"),
    [
        ("absent", True),
        ("empty folder", True),
        ("earlier version", True),
        ("folder of other files", False),
        ("a file", False),
    ],
)
def test_only_an_earlier_version_of_the_same_kind_is_replaced(tmp_path, setup, allowed) -> None:
    folder = tmp_path / "m"
    if setup == "empty folder":
        folder.mkdir()
    elif setup == "earlier version":
        version(folder, "v1")
    elif setup == "folder of other files":
        folder.mkdir()
        (folder / "precious.csv").write_text("data")
    elif setup == "a file":
        folder.write_text("data")
    before = contents(folder) if folder.is_dir() else None
    assert replaceable(folder, MARK) is allowed
    if allowed:
        version(folder, "v2")
        assert contents(folder) == {MARK: b"v2"}
        return
    with pytest.raises(ForeignFolderError, match=f"has no {MARK}.*name a new or empty folder"):
        version(folder, "v2")
    if before is not None:
        assert contents(folder) == before  # nothing deleted


def test_a_hybrid_export_that_fails_leaves_the_served_model_intact(
    tiny_model_dir, tmp_path, monkeypatch
) -> None:
    from ranking.loading import load_backend
    from tests.test_hybrid import fresh_hybrid

    _, hybrid = fresh_hybrid(tiny_model_dir)
    folder = hybrid.save(tmp_path / "hyb", extra={"card.json": '{"v": 1}\n'})
    before = contents(folder)
    assert (folder / "card.json").read_text() == '{"v": 1}\n'  # written in the same swap
    with torch.no_grad():
        hybrid.projector.net[2].weight.add_(1.0)  # a newer model
    real = torch.save

    def save(obj, path, *a, **k):  # the disk fills after the vectors are written
        if str(path).endswith("projector.pt"):
            raise OSError("No space left on device")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        hybrid.save(folder, extra={"card.json": '{"v": 2}\n'})
    monkeypatch.undo()
    assert contents(folder) == before and is_hybrid_dir(folder)
    load_backend(folder, device="cpu", cache=False)  # still loads
    with pytest.raises(ForeignFolderError, match=f"no {MANIFEST}"):
        hybrid.save(tmp_path)  # tmp_path holds other things: never replaced


def test_a_supervised_checkpoint_is_found_after_a_crash_between_the_renames(tmp_path) -> None:
    from ranking.rl.supervised import checkpoint_exists, saved_config

    old = tmp_path / ".checkpoint.old"
    old.mkdir()
    torch.save({"config": {"lr": 0.5}}, old / "state.pt")
    assert checkpoint_exists(tmp_path) and saved_config(tmp_path) == {"lr": 0.5}
    assert not checkpoint_exists(tmp_path / "elsewhere") and saved_config(tmp_path) != {}


def test_train_ranker_refuses_an_out_folder_that_is_not_a_model(tmp_path) -> None:
    from recsys.errors import UserError
    from recsys.hybrid_training import HybridTrainOptions

    (tmp_path / "notes.txt").write_text("keep me")
    refused = r"--out .* exists and is not a hybrid model folder .*name a new or empty"
    with pytest.raises(UserError, match=refused):
        HybridTrainOptions(task="rec-movie", out=tmp_path)
    with pytest.raises(UserError, match=r"--bundle .* is not a bundle folder"):
        HybridTrainOptions(task="rec-movie", bundle=tmp_path)
    HybridTrainOptions(task="rec-movie", out=tmp_path / "new")  # a new folder is fine
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_text_file_is_written_whole_or_left_as_it_was(tmp_path, monkeypatch) -> None:
    from ranking.folders import write_whole

    path = write_whole(tmp_path / "results" / "eval.json", '{"runs": [1]}\n')
    assert path.read_text() == '{"runs": [1]}\n'
    real = Path.replace

    def replace(self: Path, target: Path) -> Path:
        raise OSError("No space left on device")  # dies before the rename

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        write_whole(path, '{"runs": [2]}\n')
    monkeypatch.setattr(Path, "replace", real)
    assert path.read_text() == '{"runs": [1]}\n'  # the previous results, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["eval.json"]  # no leftovers


def test_a_link_to_a_version_keeps_pointing_at_the_replaced_folder(tmp_path) -> None:
    version(tmp_path / "v3", "v3")
    (tmp_path / "current").symlink_to("v3")
    (tmp_path / ".v3.old").symlink_to("v3")  # a stray link where the swap puts .old
    version(tmp_path / "current", "v4")
    assert (tmp_path / "current").is_symlink() and contents(tmp_path / "v3") == {MARK: b"v4"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v3"]
