"""The fitted-model cache: a hit gives what a fit gives, the key follows the data, entries
are whole or absent, a broken entry is refitted, old entries are evicted."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import polars as pl

from recsys.eval.fit_cache import FitCache, frame_digest, source_digest
from recsys.eval.ltr import LambdaMARTBaseline
from tests.test_ltr import rec_world


def scores_of(baseline: LambdaMARTBaseline, taskset) -> list[np.ndarray]:
    return [baseline.scores(i) for i in taskset.instances]


def test_a_loaded_lambdamart_scores_as_the_fitted_one(tmp_path: Path) -> None:
    ts = rec_world()
    plain = LambdaMARTBaseline(seed=7)
    plain.prepare(ts)
    cache = FitCache(tmp_path)
    first = LambdaMARTBaseline(seed=7, cache=cache)
    first.prepare(ts)
    second = LambdaMARTBaseline(seed=7, cache=cache)
    second.prepare(ts)
    assert (cache.misses, cache.hits) == (1, 1)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 1
    for a, b, c in zip(scores_of(plain, ts), scores_of(first, ts), scores_of(second, ts),
                       strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_the_key_follows_the_log_the_seed_and_the_negatives() -> None:
    ts = rec_world()
    base = LambdaMARTBaseline(seed=7)
    key = base.fit_key(ts)
    assert base.fit_key(ts) == key  # deterministic
    assert LambdaMARTBaseline(seed=8).fit_key(ts) != key
    fewer = ts.train.head(ts.train.height - 1)
    assert base.fit_key(dataclasses.replace(ts, train=fewer)) != key
    reordered = ts.train.reverse()
    assert base.fit_key(dataclasses.replace(ts, train=reordered)) != key
    retitled = {**ts.catalogue, next(iter(ts.catalogue)): "Another title"}
    assert base.fit_key(dataclasses.replace(ts, catalogue=retitled)) != key
    retrieval_info = {**ts.info, "candidates": "retrieval top-20"}
    assert base.fit_key(dataclasses.replace(ts, info=retrieval_info)) != key


def test_digests_see_content_not_identity() -> None:
    a = pl.DataFrame({"user_id": ["1", "1"], "item_id": ["x", "y"]})
    assert frame_digest(a, ["user_id", "item_id"]) == frame_digest(
        a.clone(), ["user_id", "item_id"]
    )
    assert frame_digest(a, ["item_id"]) != frame_digest(a.reverse(), ["item_id"])
    # a column boundary cannot be forged by moving a value between rows
    b = pl.DataFrame({"item_id": ["xy", ""]})
    assert frame_digest(pl.DataFrame({"item_id": ["x", "y"]}), ["item_id"]) != frame_digest(
        b, ["item_id"]
    )
    folder = Path(__file__).resolve().parents[1] / "recsys" / "eval"
    one = source_digest(folder / "fit_cache.py")
    assert one == source_digest(folder / "fit_cache.py")
    assert one != source_digest(folder / "ltr.py")  # another file's source
    assert one != source_digest(folder)  # a folder: every .py file under it


def test_a_broken_entry_is_refitted_and_replaced(tmp_path: Path) -> None:
    cache = FitCache(tmp_path)
    calls: list[int] = []

    def fit() -> str:
        calls.append(1)
        return "value"

    def save(value: str, folder: Path) -> None:
        (folder / "v.txt").write_text(value)

    def load(folder: Path) -> str:
        return (folder / "v.txt").read_text()

    assert cache.load_or_fit("m", "k" * 64, fit, save, load) == "value"
    (cache.entry("m", "k" * 64) / "v.txt").unlink()  # torn by hand
    assert cache.load_or_fit("m", "k" * 64, fit, save, load) == "value"
    assert len(calls) == 2
    assert cache.load_or_fit("m", "k" * 64, fit, save, load) == "value"
    assert (len(calls), cache.hits) == (2, 1)


def test_a_failed_save_leaves_no_entry_and_still_returns_the_fit(tmp_path: Path) -> None:
    cache = FitCache(tmp_path)

    def save(value: str, folder: Path) -> None:
        (folder / "partial").write_text("half")
        raise OSError("disk full")

    assert cache.load_or_fit("m", "a" * 64, lambda: "v", save, lambda f: "never") == "v"
    assert list(tmp_path.iterdir()) == []  # no half entry, no temporary folder


def test_the_least_recently_used_entries_are_evicted(tmp_path: Path) -> None:
    cache = FitCache(tmp_path, max_entries=2)

    def save(value: str, folder: Path) -> None:
        (folder / "v.txt").write_text(value)

    def load(folder: Path) -> str:
        return (folder / "v.txt").read_text()

    for n, key in enumerate(["a", "b"]):
        cache.load_or_fit("m", key * 64, lambda key=key: key, save, load)
        os.utime(cache.entry("m", key * 64), (1000 + n, 1000 + n))
    cache.load_or_fit("m", "a" * 64, lambda: "a", save, load)  # a hit: a is now the newest
    cache.load_or_fit("m", "c" * 64, lambda: "c", save, load)
    kept = sorted(p.name[2] for p in tmp_path.iterdir())
    assert kept == ["a", "c"]


def test_an_unwritable_cache_costs_only_the_refit(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = FitCache(blocker / "cache")  # cannot be created under a file
    assert cache.load_or_fit("m", "a" * 64, lambda: "v", lambda v, f: None, lambda f: "x") == "v"
    assert cache.misses == 1


def test_eval_reuses_the_fitted_lambdamart(monkeypatch, capsys, tmp_path, fresh_settings):
    from tests.fixtures.cli import run_cli
    from tests.fixtures.data import tiny_ml100k

    fresh_settings.setenv("RECSYS_FIT_CACHE_DIR", str(tmp_path / "cache"))
    data = tiny_ml100k(tmp_path / "ml")
    rows, caches = [], []
    for n, flag in enumerate(["--fit-cache", "--fit-cache", "--no-fit-cache"]):
        out = tmp_path / f"r{n}.json"
        args = ["eval", "--task", "rec-movie", "--ranker", "lambdamart", "--data", str(data),
                "--out", str(out), "--no-progress", flag]  # fmt: skip
        code, stdout, _ = run_cli(monkeypatch, capsys, args)
        assert code == 0
        doc = json.loads(out.read_text())
        rows.append(doc["runs"][0]["instances"])
        caches.append(doc["config"]["fit_cache"])
    assert caches == [{"loaded": 0, "fitted": 1}, {"loaded": 1, "fitted": 0}, None]
    assert rows[0] == rows[1] == rows[2]
    assert "1 loaded, 0 fitted" not in stdout  # the last run did not use the cache
