"""Reading interaction files for `recsys ingest`: each format is a `Source` yielding chunks
normalised to one frame (user, item, event, value, ts_us, title, text) plus an `error`
column naming the first thing wrong with each row (recsys.ingest loads them)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys.errors import UserError

FORMATS = ("auto", "csv", "parquet", "movielens", "recbole", "amazon-seq")
DATASET_FORMATS = ("movielens", "recbole", "amazon-seq")
DEFAULT_CHUNK_ROWS = 50_000
MAX_LISTED_ERRORS = 10
SQLITE_CACHE_MIB = 256  # the event_id index takes random inserts: keep it in memory
TIME_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}


@dataclass(frozen=True)
class ColumnMap:
    """Which input column holds what. Only user, item and timestamp are required."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = None  # the interaction's value (a rating, a watch time, ...)
    event: str | None = None  # column with the event type; else `default_event`
    title: str | None = None  # item title, when the interactions file carries it
    text: str | None = None  # item description
    default_event: str | None = None  # default: "rating" when a rating column is set
    timestamp_unit: str = "s"  # unit of numeric timestamps: s | ms | us

    def __post_init__(self) -> None:
        if self.timestamp_unit not in TIME_UNITS:
            raise UserError(
                f"timestamp unit {self.timestamp_unit!r} is not one of {', '.join(TIME_UNITS)}"
            )

    def event_name(self) -> str:
        return self.default_event or ("rating" if self.rating else "interaction")


# ---------------------------------------------------------------------------------------------
# reading: every source yields chunks with the normalised columns


@dataclass
class Source:
    """Where rows come from: chunks of interactions, an optional item catalogue, a row count."""

    label: str  # the file named in error messages
    line_word: str  # "line" for text files, "row" for parquet / data frames
    total_rows: int | None
    chunks: Iterator[pl.DataFrame]  # line, user, item, event, value, ts_us, title, text, error
    items: pl.DataFrame | None = None  # item_id, title, text, attributes (dict) - whole catalogue


def detect_format(path: Path) -> str:
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if names & {"u.data", "ratings.dat"}:
            return "movielens"
        if any(name.endswith(".test.inter") for name in names):
            return "amazon-seq"
        if any(name.endswith(".inter") for name in names):
            return "recbole"
        raise UserError(f"{path} is a folder without u.data, ratings.dat or *.inter; pass --format")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise UserError(f"cannot tell the format of {path.name}; pass --format csv|parquet|...")


def _check_columns(label: str, available: list[str], columns: ColumnMap) -> None:
    wanted = {
        "--user-col": columns.user,
        "--item-col": columns.item,
        "--timestamp-col": columns.timestamp,
        "--rating-col": columns.rating,
        "--event-col": columns.event,
        "--title-col": columns.title,
        "--text-col": columns.text,
    }
    for option, name in wanted.items():
        if name is not None and name not in available:
            raise UserError(
                f"{label} has no column {name!r} (it has: {', '.join(available)}); "
                f"name the right one with {option}"
            )


def _selected(columns: ColumnMap) -> list[str]:
    names = [columns.user, columns.item, columns.timestamp]
    names += [c for c in (columns.rating, columns.event, columns.title, columns.text) if c]
    return list(dict.fromkeys(names))


def csv_source(
    path: Path, columns: ColumnMap, *, separator: str = ",", chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Source:
    """A CSV file with a header line; every column is read as text and validated here.

    pyarrow's incremental reader pulls one block at a time, so memory stays bounded however
    slow the database is (polars' collect_batches reads ahead without limit)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    label = str(path)
    scan = pl.scan_csv(path, separator=separator, infer_schema=False, raise_if_empty=False)
    try:
        header = scan.collect_schema().names()
        total = scan.select(pl.len()).collect().item()
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise UserError(f"{label}: cannot read as CSV: {_first_line(exc)}") from exc
    _check_columns(label, header, columns)
    selected = _selected(columns)
    bytes_per_row = path.stat().st_size / max(total, 1)
    block = int(min(max(chunk_rows * bytes_per_row * 1.2, 1 << 20), 1 << 28))

    def chunks() -> Iterator[pl.DataFrame]:
        if total == 0:
            return
        offset = 2  # line numbers are 1-based and the header is line 1
        try:
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=block),
                parse_options=pacsv.ParseOptions(delimiter=separator, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in header},
                    include_columns=selected,
                    null_values=[""],
                    strings_can_be_null=True,
                ),
            )
            for batch in reader:
                for piece in pl.from_arrow(pa.Table.from_batches([batch])).iter_slices(chunk_rows):
                    yield normalise(piece.with_row_index("_row"), columns, line_offset=offset)
                    offset += piece.height
        except pa.ArrowInvalid as exc:
            raise UserError(_locate_csv_error(path, separator, exc)) from exc

    return Source(label, "line", total, chunks())


def parquet_source(
    path: Path, columns: ColumnMap, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Source:
    """A Parquet file, read a batch at a time (bounded memory); columns keep their types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    label = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{label}: cannot read as Parquet: {_first_line(exc)}") from exc
    _check_columns(label, parquet.schema_arrow.names, columns)

    def chunks() -> Iterator[pl.DataFrame]:
        offset = 1
        for batch in parquet.iter_batches(batch_size=chunk_rows, columns=_selected(columns)):
            piece = pl.from_arrow(pa.Table.from_batches([batch]))
            yield normalise(piece.with_row_index("_row"), columns, line_offset=offset)
            offset += piece.height

    return Source(label, "row", parquet.metadata.num_rows, chunks())


def dataset_source(path: Path, fmt: str, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Source:
    """MovieLens / RecBole / sequence-file folders, parsed by recsys.datasets (which names the
    file and line of anything wrong). Rows with a rating become `rating` events, others
    `interaction` events; sequence files carry positions, not times, as timestamps."""
    from recsys import datasets

    readers = {
        "movielens": datasets.read_movielens,
        "recbole": datasets.read_recbole,
        "amazon-seq": datasets.read_amazon_seq,
    }
    data = readers[fmt](path)
    frame = data.interactions
    rated = "rating" in frame.columns and frame["rating"].null_count() < frame.height
    columns = ColumnMap(
        user="user_id",
        item="item_id",
        timestamp="timestamp",
        rating="rating" if rated else None,
        default_event="rating" if rated else "interaction",
    )
    frame = frame.select(_selected(columns)).with_row_index("_row")
    batches = (normalise(b, columns, line_offset=1) for b in frame.iter_slices(chunk_rows))
    return Source(str(path), "row", frame.height, batches, catalogue(data.items))


def catalogue(items: pl.DataFrame, columns: ColumnMap | None = None) -> pl.DataFrame:
    """An item table (item id, title, text, other columns) as item_id/title/text/attributes."""
    item_col = columns.item if columns else "item_id"
    title_col = (
        columns.title
        if columns and columns.title
        else _find(items, ("title", "movie_title", "name"))
    )
    text_col = columns.text if columns and columns.text else _find(items, ("text", "description"))
    if item_col not in items.columns:
        raise UserError(f"the item table has no column {item_col!r} (it has: {items.columns})")
    named = [c for c in (item_col, title_col, text_col) if c]
    extra = [c for c in items.columns if c not in named]
    return items.select(
        pl.col(item_col).cast(pl.String).alias("item_id"),
        (pl.col(title_col).cast(pl.String) if title_col else pl.lit(None, pl.String)).alias(
            "title"
        ),
        (pl.col(text_col).cast(pl.String) if text_col else pl.lit(None, pl.String)).alias("text"),
        (pl.struct(extra) if extra else pl.lit(None)).alias("attributes"),
    ).unique("item_id", keep="first", maintain_order=True)


def read_items_file(path: Path, columns: ColumnMap, separator: str = ",") -> pl.DataFrame:
    """A separate item catalogue (CSV or Parquet) for --items."""
    if not path.exists():
        raise UserError(f"item file {path} does not exist")
    try:
        if detect_format(path) == "parquet":
            items = pl.read_parquet(path)
        else:
            items = pl.read_csv(path, separator=separator, infer_schema=False)
    except pl.exceptions.ComputeError as exc:
        raise UserError(f"{path}: cannot read the item table: {_first_line(exc)}") from exc
    return catalogue(items, columns)


def _find(frame: pl.DataFrame, names: tuple[str, ...]) -> str | None:
    lowered = {c.lower().split(":")[0]: c for c in frame.columns}
    return next((lowered[n] for n in names if n in lowered), None)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _locate_csv_error(path: Path, separator: str, exc: BaseException) -> str:
    """polars does not say which line broke the CSV structure; find it with the csv module."""
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle, delimiter=separator)
        header = next(reader, [])
        for row in reader:
            if row and len(row) != len(header):
                return (
                    f"{path}:{reader.line_num}: {len(row)} fields but the header has "
                    f"{len(header)}; fix the line or quote fields that contain {separator!r}"
                )
    return f"{path}: cannot parse CSV: {_first_line(exc)}"


# ---------------------------------------------------------------------------------------------
# validation: vectorised in polars, one error message per bad row


def _as_text(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.String).str.strip_chars()


def _timestamp_us(name: str, dtype: pl.DataType, unit: str) -> pl.Expr:
    """Microseconds since the epoch from a datetime, a number in `unit`, or ISO-8601 text."""
    if dtype.is_temporal():
        stamp = pl.col(name).cast(pl.Datetime("us"))
        if isinstance(dtype, pl.Datetime) and dtype.time_zone:
            stamp = pl.col(name).dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return stamp.cast(pl.Datetime("us")).cast(pl.Int64)
    factor = TIME_UNITS[unit]
    if dtype.is_numeric():
        return (pl.col(name).cast(pl.Float64) * factor).round().cast(pl.Int64, strict=False)
    raw = _as_text(name)
    number = (raw.cast(pl.Float64, strict=False) * factor).round().cast(pl.Int64, strict=False)
    utc = "UTC"
    iso = pl.coalesce(
        raw.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", strict=False, time_unit="us", time_zone=utc),
        raw.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%#z", strict=False, time_unit="us", time_zone=utc),
        raw.str.to_datetime(
            "%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us"
        ).dt.replace_time_zone(utc),
        raw.str.to_datetime(
            "%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us"
        ).dt.replace_time_zone(utc),
        raw.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")).dt.replace_time_zone(utc),
    )
    return pl.coalesce(number, iso.dt.replace_time_zone(None).cast(pl.Int64))


def normalise(batch: pl.DataFrame, columns: ColumnMap, *, line_offset: int) -> pl.DataFrame:
    """Map a raw chunk to the normalised frame and name the first problem of each bad row."""
    schema = batch.schema
    user, item = _as_text(columns.user), _as_text(columns.item)
    ts_raw = _as_text(columns.timestamp)
    ts_us = _timestamp_us(columns.timestamp, schema[columns.timestamp], columns.timestamp_unit)
    value_raw = _as_text(columns.rating) if columns.rating else pl.lit(None, pl.String)
    value = (
        pl.col(columns.rating).cast(pl.Float64, strict=False)
        if columns.rating
        else pl.lit(None, pl.Float64)
    )
    event = _as_text(columns.event) if columns.event else pl.lit(columns.event_name())

    def problem(condition: pl.Expr, message: pl.Expr | str) -> pl.Expr:
        text = pl.lit(message) if isinstance(message, str) else message
        return pl.when(condition).then(text)

    def missing(expr: pl.Expr) -> pl.Expr:
        return expr.is_null() | (expr == "")

    checks = [
        problem(missing(user), f"missing user id (column {columns.user!r})"),
        problem(missing(item), f"missing item id (column {columns.item!r})"),
        problem(missing(ts_raw), f"missing timestamp (column {columns.timestamp!r})"),
        problem(
            ts_us.is_null(),
            pl.format(
                'timestamp "{}" is not a number of {} since 1970 or an ISO-8601 date',
                ts_raw,
                pl.lit(
                    {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}[
                        columns.timestamp_unit
                    ]
                ),
            ),
        ),
    ]
    if columns.rating:
        checks.append(
            problem(
                value_raw.is_not_null()
                & (value_raw != "")
                & (value.is_null() | value.is_nan() | value.is_infinite()),
                pl.format('{} "{}" is not a finite number', pl.lit(columns.rating), value_raw),
            )
        )
    if columns.event:
        checks.append(problem(missing(event), f"missing event type (column {columns.event!r})"))
    title = _as_text(columns.title) if columns.title else pl.lit(None, pl.String)
    text = pl.col(columns.text).cast(pl.String) if columns.text else pl.lit(None, pl.String)
    return batch.select(
        (pl.col("_row").cast(pl.Int64) + line_offset).alias("line"),
        user.alias("user"),
        item.alias("item"),
        event.alias("event"),
        value.alias("value"),
        ts_us.alias("ts_us"),
        title.alias("title"),
        text.alias("text"),
        pl.coalesce(checks).alias("error"),
    )
