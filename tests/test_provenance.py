"""Which code produced a result (recsys.provenance), as results files and cards record it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from recsys.provenance import MAX_LISTED, code_version
from tests.fixtures.cli import run_cli


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@example.com", "-c",
                    "user.name=t", *args], check=True, capture_output=True)  # fmt: skip


def test_a_clean_checkout_then_its_uncommitted_python_files(tmp_path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("text\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    version = code_version(tmp_path)
    assert len(version["commit"]) == 40 and version["uncommitted"] == []
    (tmp_path / "a.py").write_text("x = 2\n")  # modified
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "b.py").write_text("")  # untracked, in a new folder
    (tmp_path / "notes.md").write_text("edited\n")  # not code: not listed
    assert code_version(tmp_path)["uncommitted"] == ["a.py", "pkg/b.py"]


def test_the_list_is_capped_and_the_count_exact(tmp_path) -> None:
    git(tmp_path, "init", "-q")
    for n in range(MAX_LISTED + 5):
        (tmp_path / f"m{n:02d}.py").write_text("")
    (tmp_path / "keep.txt").write_text("")
    git(tmp_path, "add", "keep.txt")
    git(tmp_path, "commit", "-qm", "first")
    version = code_version(tmp_path)
    assert len(version["uncommitted"]) == MAX_LISTED
    assert version["uncommitted_count"] == MAX_LISTED + 5


def test_outside_a_checkout_or_inside_another_there_is_no_commit(tmp_path) -> None:
    none = {"commit": None, "uncommitted": [], "uncommitted_count": 0}
    assert code_version(tmp_path / "nowhere") == none
    git(tmp_path, "init", "-q")  # e.g. a project whose venv holds the installed package
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "x.txt").write_text("")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    assert code_version(tmp_path / "site-packages") == none


def test_results_files_record_the_code(monkeypatch, capsys, tmp_path) -> None:
    from tests.fixtures.data import tiny_ml100k

    data = tiny_ml100k(tmp_path / "ml")
    out = tmp_path / "results.json"
    args = ["eval", "--task", "rec-movie", "--ranker", "random", "--data", str(data),
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert run_cli(monkeypatch, capsys, args)[0] == 0
    assert json.loads(out.read_text())["config"]["code"] == code_version()


def test_eval_diff_notes_results_measured_with_uncommitted_code(monkeypatch, capsys, tmp_path):
    rows = [{"id": "t:0", "user": "0", "cold": False, "mrr": 1.0}]
    run = {"task": "t", "ranker": "A", "instances": rows}
    dirty = {"commit": "a" * 40, "uncommitted": ["recsys/eval/ltr.py"], "uncommitted_count": 1}
    files = {"dirty": {"code": dirty}, "clean": {"code": {**dirty, "uncommitted": [],
             "uncommitted_count": 0}}, "old": {}}  # fmt: skip
    for name, config in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"config": config, "runs": [run]}))
    args = ["eval-diff", *(str(tmp_path / f"{n}.json") for n in files)]
    code, _, err = run_cli(monkeypatch, capsys, args)
    assert code == 0
    assert err.count("uncommitted") == 1
    assert "dirty.json was measured with 1 uncommitted .py file(s) on top of aaaaaaaaaaaa" in err
    assert "recsys/eval/ltr.py" in err


def test_extension_digest_tells_two_builds_of_a_compiled_package_apart(tmp_path, monkeypatch):
    from recsys.provenance import extension_digest

    package = tmp_path / "fakefm"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_fast.cpython-311-x86_64-linux-gnu.so").write_bytes(b"built with -march=a")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = extension_digest("fakefm")
    assert first == extension_digest("fakefm") and len(first) == 12
    # a reinstall writes a new file in place of the old one (as pip does)
    (package / "new.so.tmp").write_bytes(b"built with -march=b")
    (package / "new.so.tmp").replace(package / "_fast.cpython-311-x86_64-linux-gnu.so")
    assert extension_digest("fakefm") != first
    assert extension_digest("no_such_package_here") == "absent"


def test_the_fit_cache_key_changes_with_the_lightfm_build(monkeypatch) -> None:
    """A fit cache shared by machines whose LightFM builds differ keeps one entry each."""
    from recsys import provenance
    from recsys.eval.fit_cache import library_versions

    before = library_versions()
    monkeypatch.setattr(provenance, "extension_digest", lambda name: "another-build")
    assert library_versions() != before and "lightfm-build=another-build" in library_versions()
