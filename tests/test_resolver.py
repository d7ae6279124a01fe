"""Model specs resolve (recsys.resolver): default, paths, 'promoted', a version."""

from __future__ import annotations

import pytest

from recsys.db.registry import promote_model, register_model
from recsys.errors import UserError
from recsys.resolver import resolve_ranker


def resolve_ranker_model(spec, engine):
    return resolve_ranker(spec, engine=engine).model


@pytest.fixture
def engine(sqlite_engine):
    """A registry to resolve against; any database will do: SQLite only."""
    return sqlite_engine


def test_default_and_existing_paths_pass_through(engine, tmp_path):
    assert resolve_ranker_model("default", engine=engine) == "default"
    assert resolve_ranker_model(str(tmp_path), engine=engine) == str(tmp_path)


def test_promoted_and_named_versions_resolve_to_their_artifact(engine, tmp_path):
    model_dir = tmp_path / "ranker-v1"
    model_dir.mkdir()
    register_model("ranker", "v1", str(model_dir), engine=engine)
    assert resolve_ranker_model("v1", engine=engine) == str(model_dir)
    with pytest.raises(UserError, match="no ranker version is promoted"):
        resolve_ranker_model("promoted", engine=engine)
    promote_model("ranker", "v1", engine=engine)
    assert resolve_ranker_model("promoted", engine=engine) == str(model_dir)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("v404", "no ranker model version 'v404'"), ("gone", "not a local path that exists")],
)
def test_unknown_or_missing_versions_fail_clearly(engine, tmp_path, spec, message):
    register_model("ranker", "gone", str(tmp_path / "deleted"), engine=engine)
    with pytest.raises(UserError, match=message):
        resolve_ranker_model(spec, engine=engine)
