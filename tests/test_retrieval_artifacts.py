"""Versioned artifacts: atomic publish, checksums, clear errors for missing versions."""

from __future__ import annotations

import hashlib
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


# sha256 of the bytes write_payload("one") writes
MODEL_JSON_ONE = "255003d33e43c98c08a1c244203cbfb8c950702f6a39273b6e90ad6888f9af53"
IDS_TXT = "911169ddaaf146aff539f58c26c489af3b892dff0fe283c1c264c65ae5aa59a2"  # "a\nb\n"


def test_manifest_lists_every_file_checksum_and_the_version_digest_is_the_manifests(tmp_path):
    art = ArtifactStore(tmp_path).save("cf", "v1", write_payload("one"), meta={"recall": 0.5})
    manifest = art.path / "manifest.json"
    assert json.loads(manifest.read_text()) == {
        "name": "cf",
        "version": "v1",
        "files": {"model.json": MODEL_JSON_ONE, "sub/ids.txt": IDS_TXT},
        "meta": {"recall": 0.5},
    }
    assert hashlib.sha256((art.path / "sub" / "ids.txt").read_bytes()).hexdigest() == IDS_TXT
    assert art.sha256 == hashlib.sha256(manifest.read_bytes()).hexdigest()
    # and its bytes are pinned (indent 1, sorted keys): the same files give the same digest
    assert art.sha256 == "73d3511ba9b1b16e9862024e84fc4e0b8f64f6f2148a5283ca0dd47e08eb1e73"
    assert (
        ArtifactStore(tmp_path / "again")
        .save("cf", "v1", write_payload("one"), meta={"recall": 0.5})
        .sha256
        == art.sha256
    )


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


def test_new_versions_sort_in_time_order(tmp_path, monkeypatch):
    """UTC second, then a random suffix: a later second sorts later whatever the suffixes
    (here the later version draws the smaller one), so `versions` lists them in time order."""
    import uuid
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from retrieval import artifacts

    times = iter([datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)])
    suffixes = iter([uuid.UUID(int=2**128 - 1), uuid.UUID(int=0)])

    class Clock:
        @staticmethod
        def now(tz):
            assert tz is UTC
            return next(times)

    monkeypatch.setattr(artifacts, "datetime", Clock)
    monkeypatch.setattr(artifacts, "uuid", SimpleNamespace(uuid4=lambda: next(suffixes)))
    a, b = new_version(), new_version()
    assert (a, b) == ("20241231T235959-ffffff", "20250101T000000-000000")
    store = ArtifactStore(tmp_path)
    store.save("cf", b, write_payload("new"))
    store.save("cf", a, write_payload("old"))  # saved last, but older
    assert store.versions("cf") == [a, b]


def test_real_new_versions_are_unique_and_well_formed():
    import re

    versions = [new_version() for _ in range(50)]
    assert len(set(versions)) == 50
    assert all(re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{6}", v) for v in versions)


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
