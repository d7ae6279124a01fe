"""Shared fixtures live in tests/fixtures/*.py, one module per concern; helpers without
fixtures (tests.fixtures.cli, tests.fixtures.requests) are imported where used."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# listed, not discovered: a fixtures module that goes missing is an import error, not a
# silently smaller set of fixtures
pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.db",
    "tests.fixtures.models",
    "tests.fixtures.data",
    "tests.fixtures.clock",
    "tests.fixtures.settings",
]
