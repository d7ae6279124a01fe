"""`--format movielens|recbole|amazon-seq`: folders parsed by recsys.datasets, loaded by the
same idempotent, all-or-nothing machinery (small synthetic folders, both backends)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from recsys.db.catalogue import items_by_ids
from recsys.db.events import user_history
from recsys.db.models import Interaction, Item, User
from recsys.db.testing import count_rows, migrated_engine
from recsys.errors import UserError
from recsys.ingest import ingest
from tests.fixtures.data import require_data, write_ml100k

TITLES = {1: "Toy Story (1995)", 2: "GoldenEye (1995)", 3: "Café Society (1995)"}


def _ml100k(folder: Path, ratings: list[str]) -> Path:
    return write_ml100k(folder, ratings, TITLES)


def _counts(engine: Engine) -> tuple[int, ...]:
    return tuple(count_rows(m, engine=engine) for m in (Interaction, User, Item))


def test_movielens_folder_loads_with_titles_and_is_idempotent(engine, tmp_path) -> None:
    folder = _ml100k(
        tmp_path / "ml", ["10\t1\t5\t881250949", "10\t3\t4\t881250950", "11\t2\t3\t881250951"]
    )
    report = ingest(folder, engine=engine, progress=False)
    assert (report.format, report.rows_loaded, report.items_in_file) == ("movielens", 3, 3)
    assert _counts(engine) == (3, 2, 3)
    history = user_history("10", engine=engine)
    assert [(h.item_id, h.title, h.event, h.value) for h in history] == [
        ("1", "Toy Story (1995)", "rating", 5.0),
        ("3", "Café Society (1995)", "rating", 4.0),
    ]
    assert history[0].timestamp == datetime.fromtimestamp(881250949, UTC)
    assert ingest(folder, "movielens", engine=engine, progress=False).interactions_added == 0
    assert _counts(engine) == (3, 2, 3)


def test_recbole_folder_without_ratings_loads_interaction_events(engine, tmp_path) -> None:
    folder = tmp_path / "music"
    folder.mkdir()
    (folder / "music.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\nu1\tcd1\t100\nu1\tcd2\t200\n"
    )
    (folder / "music.item").write_text("item_id:token\ttitle:token_seq\ncd1\tBlue\ncd2\tKind\n")
    report = ingest(folder, engine=engine, progress=False)
    assert report.format == "recbole"
    history = user_history("u1", engine=engine)
    assert [(h.title, h.event, h.value) for h in history] == [
        ("Blue", "interaction", None),
        ("Kind", "interaction", None),
    ]


def test_a_bad_dataset_file_names_file_and_line_and_writes_nothing(engine, tmp_path) -> None:
    folder = _ml100k(tmp_path / "ml", ["10\t1\t5\t881250949", "10\tx\t4\tnot-a-time"])
    with pytest.raises(UserError, match=r"u\.data, line 2: column .timestamp. .not-a-time."):
        ingest(folder, "movielens", engine=engine, progress=False)
    assert _counts(engine) == (0, 0, 0)


def test_real_movielens_100k_loads_completely(sqlite_url: str) -> None:
    """The shipped ml-100k: every rating and item arrives (read from ../shared/data)."""
    from recsys.settings import get_settings

    folder = require_data(get_settings().data_dir / "movielens-100k" / "u.data").parent
    with migrated_engine(sqlite_url) as engine:
        report = ingest(folder, engine=engine, progress=False)
        assert (report.interactions_added, report.users_added, report.items_added) == (
            100_000,
            943,
            1_682,
        )
        assert items_by_ids(["1"], engine=engine)["1"].title == "Toy Story (1995)"
