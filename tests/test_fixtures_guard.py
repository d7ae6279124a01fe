"""The test suite's own guard: a missing data set (or service) skips a test outside CI and
fails it under CI=true, so CI can never pass by skipping."""

from __future__ import annotations

import pytest

from tests.fixtures.data import SHARED_DATA, require_data


def test_missing_data_skips_outside_ci(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="missing-set is not available"):
        require_data(tmp_path / "missing-set")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_data(tmp_path / "missing-set")


def test_missing_data_fails_under_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing-set is not available"):
        require_data(tmp_path / "missing-set")


def test_present_data_is_returned(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert require_data(tmp_path) == tmp_path


def test_missing_service_fails_under_ci(monkeypatch):
    from tests.fixtures.services import require_service

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"Nothing is not reachable at 127\.0\.0\.1:9;"):
        require_service("Nothing", "127.0.0.1", 9)  # the discard port: nothing listens


def test_shared_data_is_where_the_settings_look():
    from recsys.settings import Settings

    assert Settings.model_fields["data_dir"].default == SHARED_DATA


def test_conftest_loads_every_fixtures_module_and_only_existing_ones():
    """A fixtures module missing from tests/conftest.py would leave its fixtures unknown; a
    listed module that does not exist would break every run."""
    import importlib
    from pathlib import Path

    from tests import conftest

    folder = Path(__file__).parent / "fixtures"
    for name in conftest.pytest_plugins:
        importlib.import_module(name)  # exists
    with_fixtures = {
        f"tests.fixtures.{p.stem}"
        for p in folder.glob("*.py")
        if "@pytest.fixture" in p.read_text(encoding="utf-8")
    }
    assert with_fixtures <= set(conftest.pytest_plugins)
