"""Load interactions and items into the database: polars reads and validates, chunks are upserted.

Formats: `csv` and `parquet` (any column names, given by a ColumnMap), `movielens` and `recbole`
(folders, read by recsys.datasets). Every chunk of rows is normalised to one frame
(user, item, event, value, ts_us, title, text) plus an `error` column naming the first thing
wrong with the row. The whole file is loaded in ONE transaction:

- by default a file with any bad row is refused and nothing is written; the error lists the bad
  rows as `file:line: what is wrong`;
- with `skip_bad=True` the good rows are loaded and the report counts the skipped ones by reason;
- a crash (or Ctrl-C) mid-load rolls back, leaving the database as it was.

Re-loading is idempotent: each interaction's `event_id` hashes (source, user, item, timestamp,
event), and rows whose event id exists are skipped by `INSERT ... ON CONFLICT DO NOTHING`.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy.engine import Engine

from recsys.db.bulk import StagedLoad
from recsys.db.catalogue import ItemRecord
from recsys.db.engine import get_engine
from recsys.db.events import epoch_micros, event_id
from recsys.errors import UserError
from recsys.ingest_formats import (
    DATASET_FORMATS,
    DEFAULT_CHUNK_ROWS,
    FORMATS,
    MAX_LISTED_ERRORS,
    SQLITE_CACHE_MIB,
    ColumnMap,
    Source,
    csv_source,
    dataset_source,
    detect_format,
    parquet_source,
    read_items_file,
)


@dataclass
class IngestReport:
    path: str
    format: str
    source: str
    rows_read: int = 0
    rows_loaded: int = 0
    rows_skipped: int = 0
    rows_held_out: int = 0  # at or after `until`: left for `recsys simulate` to play
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)
    interactions_added: int = 0
    users_added: int = 0
    items_added: int = 0
    items_in_file: int = 0
    seconds: float = 0.0
    merge_seconds: float = 0.0  # the write transaction: how long other writers may wait

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"{self.path} ({self.format}, source {self.source!r}): read {self.rows_read:,} rows, "
            f"loaded {self.rows_loaded:,}, skipped {self.rows_skipped:,} in {self.seconds:.1f} s "
            f"({self.merge_seconds:.1f} s of it writing)",
            f"  added {self.interactions_added:,} interactions, {self.users_added:,} users, "
            f"{self.items_added:,} items ({self.items_in_file:,} items in the input)",
        ]
        if self.rows_held_out:
            lines.append(f"  held out {self.rows_held_out:,} interactions at or after --until")
        lines += [f"  skipped {n:,}: {reason}" for reason, n in self.skipped_by_reason.items()]
        lines += [f"    e.g. {example}" for example in self.skipped_examples]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# loading


class _Loader:
    """Stages validated chunks (see recsys.db.bulk); nothing reaches the real tables
    before the merge."""

    def __init__(self, stage: StagedLoad, source_name: str) -> None:
        self.stage = stage
        self.source_name = source_name
        self.seen_items: set[str] = set()

    def load_catalogue(self, items: pl.DataFrame) -> None:
        records = [
            ItemRecord(row["item_id"], row["title"], row["text"], _attributes(row["attributes"]))
            for row in items.iter_rows(named=True)
            if row["item_id"]
        ]
        for start in range(0, len(records), DEFAULT_CHUNK_ROWS):
            self.stage.add_items(records[start : start + DEFAULT_CHUNK_ROWS], catalogue=True)
        self.seen_items.update(r.item_id for r in records)

    def load(self, good: pl.DataFrame) -> None:
        # items first seen here, with the title/text of their first row when the file has them
        firsts = good.unique("item", keep="first", maintain_order=True).filter(
            ~pl.col("item").is_in(list(self.seen_items))
        )
        if firsts.height:
            records = [
                ItemRecord(i, t, x)
                for i, t, x in firsts.select("item", "title", "text").iter_rows()
            ]
            self.stage.add_items(records, catalogue=False)
            self.seen_items.update(r.item_id for r in records)
        self.stage.add_events(self._rows(good))

    def _rows(self, good: pl.DataFrame) -> list[tuple[Any, ...]]:
        users, items, events = (
            good["user"].to_list(),
            good["item"].to_list(),
            good["event"].to_list(),
        )
        micros, values = good["ts_us"].to_list(), good["value"].to_list()
        stamps = good["ts_us"].cast(pl.Datetime("us", "UTC")).to_list()
        source = self.source_name
        return [
            (event_id(source, u, i, us, e), u, i, e, v, ts, source)
            for u, i, e, us, v, ts in zip(users, items, events, micros, values, stamps, strict=True)
        ]


def _attributes(value: Any) -> dict[str, Any]:
    """Extra catalogue columns as JSON-safe attributes (dates and the like become text)."""
    if not isinstance(value, dict):
        return {}
    plain = (str, int, float, bool, list)
    return {k: v if isinstance(v, plain) else str(v) for k, v in value.items() if v is not None}


def open_source(
    path: Path,
    fmt: str,
    columns: ColumnMap,
    *,
    separator: str = ",",
    items_path: Path | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Source:
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt in DATASET_FORMATS:
        if not path.is_dir():
            raise UserError(f"--format {fmt} expects a folder, {path} is a file")
        return dataset_source(path, fmt, chunk_rows=chunk_rows)
    if path.is_dir():
        raise UserError(f"--format {fmt} expects a file, {path} is a folder")
    if fmt == "csv":
        source = csv_source(path, columns, separator=separator, chunk_rows=chunk_rows)
    else:
        source = parquet_source(path, columns, chunk_rows=chunk_rows)
    if items_path is not None:
        source.items = read_items_file(items_path, columns, separator)
    return source


def ingest(
    path: str | Path,
    fmt: str = "auto",
    *,
    columns: ColumnMap | None = None,
    items_path: str | Path | None = None,
    skip_bad: bool = False,
    source: str | None = None,
    separator: str = ",",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = True,
    until: datetime | None = None,
    engine: Engine | None = None,
) -> IngestReport:
    """Load a file or folder. Refuses it whole on any bad row unless `skip_bad`. With
    `until`, interactions at or after that time are left out (counted as held out): the
    part `recsys simulate` later plays as live traffic."""
    started = time.perf_counter()
    if chunk_rows < 1:
        raise UserError(f"chunk size must be at least 1 row, got {chunk_rows}")
    path = Path(path)
    columns = columns or ColumnMap()
    src = open_source(
        path,
        fmt,
        columns,
        separator=separator,
        items_path=Path(items_path) if items_path else None,
        chunk_rows=chunk_rows,
    )
    resolved_fmt = detect_format(path) if fmt == "auto" else fmt
    report = IngestReport(str(path), resolved_fmt, source or path.name)
    engine = engine or get_engine()
    with engine.connect() as conn, StagedLoad(conn) as stage:
        loader = _Loader(stage, report.source)
        if src.items is not None:
            loader.load_catalogue(src.items)
        _load_chunks(src, loader, report, skip_bad=skip_bad, progress=progress, until=until)
        if report.rows_skipped and not skip_bad:
            raise UserError(_refusal(src, report.rows_skipped, report.skipped_examples))
        report.items_in_file = stage.staged_items()
        merge_started = time.perf_counter()
        with _bar(report.rows_loaded, "merge into the database", progress) as bar:
            added = stage.merge(sqlite_cache_mib=SQLITE_CACHE_MIB, progress=bar.update)
        report.merge_seconds = round(time.perf_counter() - merge_started, 3)
        report.interactions_added, report.users_added, report.items_added = added
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _load_chunks(
    src: Source,
    loader: _Loader,
    report: IngestReport,
    *,
    skip_bad: bool,
    progress: bool,
    until: datetime | None = None,
) -> None:
    """Validate every chunk, load the good rows; once a strict load has seen a bad row it only
    keeps reading to list every bad row (the transaction will be rolled back)."""
    reasons: Counter[str] = Counter()
    with _bar(src.total_rows, f"read {Path(src.label).name}", progress) as bar:
        for chunk in src.chunks:
            report.rows_read += chunk.height
            for line, error in (
                chunk.filter(pl.col("error").is_not_null()).select("line", "error").iter_rows()
            ):
                reasons[_reason_key(error)] += 1
                if len(report.skipped_examples) < MAX_LISTED_ERRORS:
                    report.skipped_examples.append(f"{src.label}:{line}: {error}")
            if not reasons or skip_bad:
                good = chunk.filter(pl.col("error").is_null())
                if until is not None:
                    kept = good.filter(pl.col("ts_us") < epoch_micros(until))
                    report.rows_held_out += good.height - kept.height
                    good = kept
                if good.height:
                    loader.load(good)
                report.rows_loaded += good.height
            bar.update(chunk.height)
    report.rows_skipped = sum(reasons.values())
    report.skipped_by_reason = dict(reasons.most_common())


def _bar(total: int | None, what: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="rows", desc=what, disable=not enabled)


def _reason_key(error: str) -> str:
    """Group messages by kind: the offending value (in double quotes) is left out."""
    return re.sub(r'"[^"]*"', '"…"', error, count=1)


def _refusal(src: Source, bad_rows: int, examples: list[str]) -> str:
    shown = "\n  ".join(examples)
    more = f"\n  ... and {bad_rows - len(examples)} more" if bad_rows > len(examples) else ""
    return (
        f"{src.label}: {bad_rows} bad {src.line_word}(s), nothing was written:\n  {shown}{more}\n"
        "fix them, or pass --skip-bad to load the good rows and skip these"
    )
