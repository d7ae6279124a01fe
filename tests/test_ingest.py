"""Ingestion on SQLite and PostgreSQL: idempotent loads, bad files refused whole (or skipped
row by row), Parquet and item catalogues, and a crash mid-load leaving the database as before."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from recsys.db.catalogue import items_by_ids
from recsys.db.events import InteractionRecord, log_interactions, user_history
from recsys.db.models import Interaction, Item, User
from recsys.db.testing import count_rows, migrated_engine
from recsys.errors import UserError
from recsys.ingest import ColumnMap, ingest

RATINGS = ColumnMap(rating="rating")


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _synthetic_csv(path: Path, rows: int, users: int = 20, items: int = 30) -> Path:
    frame = pl.DataFrame(
        {
            "user_id": [f"u{n % users}" for n in range(rows)],
            "item_id": [f"i{(n * 7) % items}" for n in range(rows)],
            "rating": [float(n % 5 + 1) for n in range(rows)],
            "timestamp": [1_600_000_000 + n for n in range(rows)],
        }
    )
    frame.write_csv(path)
    return path


def _counts(engine: Engine) -> tuple[int, int, int]:
    return tuple(count_rows(m, engine=engine) for m in (Interaction, User, Item))  # type: ignore[return-value]


def test_ingest_loads_and_reingesting_adds_nothing(engine: Engine, tmp_path: Path) -> None:
    path = _synthetic_csv(tmp_path / "events.csv", 250)
    first = ingest(path, "csv", columns=RATINGS, chunk_rows=64, engine=engine, progress=False)
    assert (first.rows_read, first.rows_loaded, first.interactions_added) == (250, 250, 250)
    assert (first.users_added, first.items_added) == (20, 30)
    assert _counts(engine) == (250, 20, 30)

    again = ingest(path, "csv", columns=RATINGS, chunk_rows=100, engine=engine, progress=False)
    assert (again.rows_loaded, again.interactions_added, again.users_added) == (250, 0, 0)
    assert _counts(engine) == (250, 20, 30)

    history = user_history("u0", 3, engine=engine)
    assert [h.timestamp for h in history] == sorted(h.timestamp for h in history)
    assert history[-1].timestamp == datetime.fromtimestamp(1_600_000_000 + 240, UTC)
    assert history[-1].event == "rating" and history[-1].value == 1.0


def test_iso_and_epoch_timestamps_of_the_same_instant_are_the_same_event(
    engine: Engine, tmp_path: Path
) -> None:
    epoch = _write(tmp_path / "a.csv", "user_id,item_id,timestamp\nu1,i1,1700000000\n")
    iso = _write(tmp_path / "b.csv", "user_id,item_id,timestamp\nu1,i1,2023-11-14T22:13:20Z\n")
    millis = _write(tmp_path / "c.csv", "user_id,item_id,timestamp\nu1,i1,1700000000000\n")
    assert ingest(epoch, source="s", engine=engine, progress=False).interactions_added == 1
    assert ingest(iso, source="s", engine=engine, progress=False).interactions_added == 0
    as_ms = ColumnMap(timestamp_unit="ms")
    again = ingest(millis, source="s", columns=as_ms, engine=engine, progress=False)
    assert again.interactions_added == 0
    assert ingest(iso, source="other", engine=engine, progress=False).interactions_added == 1


BAD_FILES = [
    # (file content, column map, error message regex)
    ("user_id,item_id,timestamp\nu1,i1,10\n,i2,11\n", ColumnMap(), r"bad\.csv:3: missing user id"),
    ("user_id,item_id,timestamp\nu1,,10\n", ColumnMap(), r"bad\.csv:2: missing item id"),
    ("user_id,item_id,timestamp\nu1,i1,\n", ColumnMap(), r"bad\.csv:2: missing timestamp"),
    (
        "user_id,item_id,timestamp\nu1,i1,10\nu1,i2,yesterday\n",
        ColumnMap(),
        r'bad\.csv:3: timestamp "yesterday" is not a number of seconds',
    ),
    (
        "user_id,item_id,timestamp,rating\nu1,i1,10,five\n",
        RATINGS,
        r'bad\.csv:2: rating "five" is not a finite number',
    ),
    ("user_id,item_id,timestamp,rating\nu1,i1,10,inf\n", RATINGS, r'rating "inf" is not a finite'),
    (
        "user_id,item_id,timestamp\nu1,i1,10\nu1,i2,11,extra,fields\n",
        ColumnMap(),
        r"bad\.csv:3: 5 fields but the header has 3",
    ),
    (
        "user_id,item_id,timestamp\nu1,i1,10\nu2,i2\n",
        ColumnMap(),
        r"bad\.csv:3: 2 fields but the header has 3",
    ),
    ("uid,item_id,timestamp\nu1,i1,10\n", ColumnMap(), r"has no column 'user_id'.*--user-col"),
    ("user_id,item_id,ts\nu1,i1,10\n", ColumnMap(), r"has no column 'timestamp'.*--timestamp-col"),
    ("", ColumnMap(), r"has no column 'user_id'"),
    (
        "user_id,item_id,timestamp,kind\nu1,i1,10,\n",
        ColumnMap(event="kind"),
        r"bad\.csv:2: missing event type \(column 'kind'\)",
    ),
]


@pytest.mark.parametrize(("content", "columns", "message"), BAD_FILES)
def test_bad_files_are_refused_whole(
    engine: Engine, tmp_path: Path, content: str, columns: ColumnMap, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        ingest(path, "csv", columns=columns, engine=engine, progress=False)
    assert _counts(engine) == (0, 0, 0)


@pytest.mark.parametrize(
    ("path", "fmt", "message"),
    [
        ("missing.csv", "csv", "does not exist"),
        ("events.csv", "xml", "unknown format 'xml'"),
        ("events.csv", "movielens", "expects a folder"),
        (".", "csv", "expects a file"),
        ("notes.md", "auto", "cannot tell the format of notes.md"),
        ("events.csv", "csv", "chunk size must be at least 1 row"),
    ],
)
def test_bad_arguments_are_user_errors(engine, tmp_path, path, fmt, message) -> None:
    _synthetic_csv(tmp_path / "events.csv", 3)
    (tmp_path / "notes.md").write_text("hi")
    chunk_rows = 0 if "chunk" in message else 100
    with pytest.raises(UserError, match=message):
        ingest(tmp_path / path, fmt, chunk_rows=chunk_rows, engine=engine, progress=False)


def test_unknown_timestamp_unit_is_refused() -> None:
    with pytest.raises(UserError, match="timestamp unit 'h' is not one of s, ms, us"):
        ColumnMap(timestamp_unit="h")


def test_refusal_lists_every_bad_line_even_across_chunks(engine: Engine, tmp_path: Path) -> None:
    lines = ["user_id,item_id,timestamp"] + [f"u{n},i{n},{n}" for n in range(40)]
    lines[5] = "u5,i5,later"  # line 6
    lines[33] = ",i33,33"  # line 34, in a later chunk
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"2 bad line\(s\), nothing was written") as caught:
        ingest(path, chunk_rows=8, engine=engine, progress=False)
    assert "bad.csv:6: timestamp" in str(caught.value)
    assert "bad.csv:34: missing user id" in str(caught.value)
    assert "--skip-bad" in str(caught.value)
    assert _counts(engine) == (0, 0, 0)


def test_skip_bad_loads_good_rows_and_counts_reasons(engine: Engine, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "mixed.csv",
        """
        user_id,item_id,timestamp,rating
        u1,i1,100,4
        u1,i2,soon,5
        u2,i1,101,x
        ,i3,102,3
        u2,i2,later,1
        u3,i3,103,
        """,
    )
    report = ingest(path, columns=RATINGS, skip_bad=True, engine=engine, progress=False)
    assert (report.rows_read, report.rows_loaded, report.rows_skipped) == (6, 2, 4)
    assert report.skipped_by_reason == {
        'timestamp "…" is not a number of seconds since 1970 or an ISO-8601 date': 2,
        'rating "…" is not a finite number': 1,
        "missing user id (column 'user_id')": 1,
    }
    assert report.skipped_examples[0].endswith(
        'mixed.csv:3: timestamp "soon" is not a number of seconds since 1970 or an ISO-8601 date'
    )
    assert _counts(engine) == (2, 2, 2)
    assert [h.value for h in user_history("u3", engine=engine)] == [None]


def test_parquet_with_typed_columns_and_custom_names(engine: Engine, tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "who": [1, 2, 2],
            "what": [10, 10, 11],
            "when": [datetime(2024, 5, 1, 12, tzinfo=UTC)] * 3,
            "stars": [4.0, float("nan"), 2.5],
            "kind": ["view", "view", "buy"],
            "name": ["Ten", "Ten", "Eleven"],
        }
    )
    frame.write_parquet(tmp_path / "events.parquet")
    columns = ColumnMap(
        user="who", item="what", timestamp="when", rating="stars", event="kind", title="name"
    )
    with pytest.raises(UserError, match=r'events\.parquet:2: stars "NaN" is not a finite number'):
        ingest(tmp_path / "events.parquet", columns=columns, engine=engine, progress=False)
    report = ingest(
        tmp_path / "events.parquet", columns=columns, skip_bad=True, engine=engine, progress=False
    )
    assert (report.format, report.rows_loaded, report.rows_skipped) == ("parquet", 2, 1)
    history = user_history("2", engine=engine)
    assert [(h.item_id, h.title, h.event, h.value) for h in history] == [
        ("11", "Eleven", "buy", 2.5)
    ]
    assert history[0].timestamp == datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_item_catalogue_file_sets_titles_and_attributes(engine: Engine, tmp_path: Path) -> None:
    events = _synthetic_csv(tmp_path / "events.csv", 10, users=2, items=3)
    catalogue = _write(
        tmp_path / "items.csv",
        """
        item_id,title,genre
        i0,Zero,drama
        i1,One,comedy
        i2,Two,
        i9,Nine (never rated),horror
        """,
    )
    report = ingest(events, columns=RATINGS, items_path=catalogue, engine=engine, progress=False)
    assert (report.items_in_file, report.items_added) == (4, 4)
    items = items_by_ids(["i0", "i2", "i9"], engine=engine)
    assert items["i0"].title == "Zero" and items["i0"].attributes == {"genre": "drama"}
    assert items["i2"].attributes == {}
    assert items["i9"].title == "Nine (never rated)"

    # the catalogue changes: new genre and title are applied, an unchanged item is not touched
    _write(catalogue, "item_id,title,genre\ni0,Zero,thriller\ni1,One!,comedy\n")
    with engine.connect() as conn:
        stamp = sa.select(Item.updated_at).where(Item.external_id == "i2")
        before = conn.execute(stamp).scalar_one()
    again = ingest(events, columns=RATINGS, items_path=catalogue, engine=engine, progress=False)
    assert (again.interactions_added, again.items_added) == (0, 0)
    items = items_by_ids(["i0", "i1", "i2"], engine=engine)
    assert items["i0"].attributes == {"genre": "thriller"}
    assert items["i1"].title == "One!"
    with engine.connect() as conn:
        assert conn.execute(stamp).scalar_one() == before


# where the process dies: while staging the second chunk, or inside the merge transaction
# after users, items and interactions were all inserted but before the commit
CRASH_POINTS = {
    "staging": ("recsys.ingest", "_Loader", "load", 2),
    "merge": ("recsys.db.bulk", "StagedLoad", "_merge_events", 1),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_crash_mid_ingest_leaves_the_database_as_before(
    engine: Engine, database_url: str, tmp_path: Path, point: str
) -> None:
    """The process dies (os._exit: no clean-up, no rollback by us): nothing of that load is
    visible afterwards, the database is not locked, and the file loads fine again."""
    ingest(_synthetic_csv(tmp_path / "first.csv", 30), engine=engine, progress=False)
    before = _counts(engine)
    second = tmp_path / "second.csv"
    pl.DataFrame(
        {
            "user_id": [f"new{n % 7}" for n in range(300)],
            "item_id": [f"newitem{n % 11}" for n in range(300)],
            "timestamp": list(range(300)),
        }
    ).write_csv(second)
    module, cls, method, nth = CRASH_POINTS[point]
    crash = textwrap.dedent(
        f"""
        import importlib, os
        import recsys.ingest
        from recsys.db.engine import make_engine

        target = getattr(importlib.import_module({module!r}), {cls!r})
        original, calls = getattr(target, {method!r}), []
        def then_crash(self, *args, **kwargs):
            original(self, *args, **kwargs)
            calls.append(1)
            if len(calls) == {nth}:
                os._exit(17)
        setattr(target, {method!r}, then_crash)
        recsys.ingest.ingest({str(second)!r}, chunk_rows=50, progress=False,
                             engine=make_engine({database_url!r}))
        """
    )
    result = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True)
    assert result.returncode == 17, result.stderr
    assert _counts(engine) == before
    report = ingest(second, engine=engine, progress=False)
    assert report.interactions_added == 300
    assert _counts(engine) == (before[0] + 300, before[1] + 7, before[2] + 11)


def test_an_error_mid_load_rolls_back(engine: Engine, tmp_path: Path, monkeypatch) -> None:
    import recsys.ingest as ingest_module

    original, calls = ingest_module._Loader.load, []

    def load_then_fail(self, good):
        original(self, good)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(ingest_module._Loader, "load", load_then_fail)
    with pytest.raises(KeyboardInterrupt):
        ingest(
            _synthetic_csv(tmp_path / "e.csv", 200), chunk_rows=40, engine=engine, progress=False
        )
    assert _counts(engine) == (0, 0, 0)


def test_cli_ingest_reports_and_refuses(sqlite_url: str, tmp_path: Path) -> None:
    from recsys.cli import app

    good = _write(tmp_path / "good.tsv", "u\ti\tts\tr\n1\t2\t100\t5\n1\t3\t101\t4\n")
    args = ["ingest", str(good), "--separator", "\\t", "--user-col", "u", "--item-col", "i"]
    args += ["--timestamp-col", "ts", "--rating-col", "r", "--no-progress", "--url", sqlite_url]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--report", str(tmp_path / "report.json")])
    assert first.exit_code == 0, first.output
    assert "loaded 2" in first.output and "added 2 interactions" in first.output
    assert '"interactions_added": 2' in (tmp_path / "report.json").read_text()
    second = runner.invoke(app, args)
    assert "added 0 interactions" in second.output

    bad = _write(tmp_path / "bad.csv", "user_id,item_id,timestamp\nu1,i1,noon\n")
    result = subprocess.run(
        [sys.executable, "-c", "from recsys.cli import main; main()", "ingest", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "RECSYS_DATABASE_URL": sqlite_url},
    )
    assert result.returncode == 2
    assert 'bad.csv:2: timestamp "noon"' in result.stderr
    assert "Traceback" not in result.stderr


def test_logged_and_ingested_events_are_the_same_events(engine, tmp_path) -> None:
    """`log_interactions` (events from code) and a file ingest both load through the bulk
    path and key events alike: events logged first are not added again by the file."""
    path = _synthetic_csv(tmp_path / "events.csv", 120, users=15, items=9)
    frame = pl.read_csv(path).head(50)
    logged = [
        InteractionRecord(u, i, "rating", datetime.fromtimestamp(t, UTC), r, source="events.csv")
        for u, i, r, t in frame.select("user_id", "item_id", "rating", "timestamp").iter_rows()
    ]
    assert log_interactions(logged, engine=engine) == 50
    assert log_interactions(logged[:10], engine=engine) == 0
    report = ingest(path, columns=RATINGS, engine=engine, progress=False)
    assert (report.interactions_added, report.rows_loaded) == (70, 120)
    assert _counts(engine) == (120, 15, 9)
    assert [h.value for h in user_history("u3", 2, engine=engine)] == [4.0, 4.0]


def test_sqlite_writers_are_not_blocked_while_a_load_is_staging(
    sqlite_url: str, tmp_path: Path, monkeypatch
) -> None:
    """Staging writes only temporary tables: another connection can write meanwhile (it would
    fail with 'database is locked' after 1 s if the load held the write lock)."""
    import sqlite3

    import recsys.ingest as ingest_module

    with migrated_engine(sqlite_url) as engine:
        original, written = ingest_module._Loader.load, []

        def load_then_write_elsewhere(self, good):
            original(self, good)
            other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=1)
            with other:
                other.execute(
                    "INSERT INTO api_keys (name, key_hash, scopes, created_at) "
                    "VALUES (?, ?, '[]', '2024-01-01 00:00:00')",
                    (f"k{len(written)}", f"h{len(written)}"),
                )
            other.close()
            written.append(1)

        monkeypatch.setattr(ingest_module._Loader, "load", load_then_write_elsewhere)
        path = _synthetic_csv(tmp_path / "e.csv", 120)
        report = ingest(path, chunk_rows=40, engine=engine, progress=False)
        assert (len(written), report.interactions_added) == (3, 120)


def test_merge_in_small_ranges_stores_the_same(engine, tmp_path, monkeypatch) -> None:
    """The merge goes through the staged events in ranges (for progress): ranges that split
    the file anywhere store every row once."""
    import recsys.db.bulk as bulk

    monkeypatch.setattr(bulk, "MERGE_BATCH", 7)
    path = _synthetic_csv(tmp_path / "events.csv", 100, users=9, items=13)
    steps: list[int] = []
    original = bulk.StagedLoad.merge

    def merge_and_count(self, **kwargs):
        kwargs["progress"] = steps.append
        return original(self, **kwargs)

    monkeypatch.setattr(bulk.StagedLoad, "merge", merge_and_count)
    report = ingest(path, columns=RATINGS, engine=engine, progress=False)
    assert (report.interactions_added, report.users_added, report.items_added) == (100, 9, 13)
    assert steps == [7] * 14 + [2]
    assert _counts(engine) == (100, 9, 13)
