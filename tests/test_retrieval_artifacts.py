"""Versioned artifacts: atomic publish, checksums, clear errors for missing versions."""

from __future__ import annotations

import json
import os

import pytest

from retrieval.artifacts import ArtifactStore, new_version
from retrieval.errors import RetrievalError


def write_payload(text):
    def write(folder):
        (folder / "model.json").write_text(json.dumps({"payload": text}))
        (folder / "sub").mkdir()
        (folder / "sub" / "ids.txt").write_text("a\nb\n")

    return write


def read_payload(art):
    return json.loads((art.path / "model.json").read_text())["payload"]


def test_save_then_load_by_version_and_latest(tmp_path):
    store = ArtifactStore(tmp_path)
    store.save("cf", "v1", write_payload("one"), meta={"recall": 0.5})
    store.save("cf", "v2", write_payload("two"))
    assert store.versions("cf") == ["v1", "v2"]
    assert read_payload(store.load("cf", "v1")) == "one"
    assert read_payload(store.load("cf")) == "two"
    assert store.load("cf", "v1").meta == {"recall": 0.5}
    assert len(store.load("cf", "v1").sha256) == 64


def test_failure_mid_save_leaves_previous_version_loadable(tmp_path):
    store = ArtifactStore(tmp_path)
    store.save("cf", "v1", write_payload("one"))

    def crash_halfway(folder):
        (folder / "model.json").write_text('{"payload": "half')  # a torn file
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.save("cf", "v2", crash_halfway)
    assert store.versions("cf") == ["v1"]
    assert store.latest("cf") == "v1"
    assert read_payload(store.load("cf")) == "one"
    # nothing half-written is left behind, and v2 can be saved again later
    assert sorted(os.listdir(tmp_path / "cf")) == ["LATEST", "v1"]
    store.save("cf", "v2", write_payload("two"))
    assert read_payload(store.load("cf", "v2")) == "two"


def test_corrupted_file_is_detected(tmp_path):
    store = ArtifactStore(tmp_path)
    art = store.save("cf", "v1", write_payload("one"))
    (art.path / "sub" / "ids.txt").write_text("tampered")
    with pytest.raises(RetrievalError, match=r"corrupt: sub/ids.txt"):
        store.load("cf", "v1")


def test_new_versions_sort_in_time_order():
    a, b = new_version(), new_version()
    assert a != b and len(a) == len(b)


BAD = [
    (lambda s: s.load("cf", "v9"), r"cf version 'v9' does not exist .* available: \['v1'\]"),
    (lambda s: s.load("index"), r"no saved index artifact"),
    (lambda s: s.save("cf", "v1", write_payload("again")), "versions are immutable"),
    (lambda s: s.save("cf", "../escape", write_payload("x")), "invalid version"),
    (lambda s: s.save("", "v3", write_payload("x")), "invalid artifact name"),
]


@pytest.mark.parametrize(("call", "message"), BAD)
def test_artifact_bad_input(tmp_path, call, message):
    store = ArtifactStore(tmp_path)
    store.save("cf", "v1", write_payload("one"))
    with pytest.raises(RetrievalError, match=message):
        call(store)
