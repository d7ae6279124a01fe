"""Shared fixtures live in tests/fixtures/*.py, one module per concern."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    f"tests.fixtures.{name}"
    for name in ("services", "models", "data")
    if os.path.exists(os.path.join(os.path.dirname(__file__), "fixtures", f"{name}.py"))
]
