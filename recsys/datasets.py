"""Readers for the interaction data sets the backend and its evaluation use.

Every reader returns a `Dataset`: two polars frames with fixed column names and types,

- `interactions`: user_id (str), item_id (str), rating (f64, null when the source has
  none), timestamp (i64: unix seconds, or the position in the user's sequence when the
  source only has an order);
- `items`: item_id (str), title (str) and whatever extra columns the source has.

Rows keep the file order. Bad files raise `recsys.errors.UserError` naming the file,
the line and what is wrong (missing columns, wrong types, non-UTF-8 bytes, empty file).

Supported layouts (see docs/eval.md):

- `read_movielens(folder)`: MovieLens 100K (`u.data` + `u.item`, latin-1) or 1M
  (`ratings.dat` + `movies.dat`, `::`-separated, latin-1); detected from the file names.
  Titles keep the release year, e.g. "Toy Story (1995)".
- `read_recbole(folder)`: RecBole atomic files `<name>.inter` (+ optional `<name>.item`)
  with typed headers such as `user_id:token  item_id:token  rating:float  timestamp:float`.
- `read_amazon_seq(folder)`: LLMRank / UniSRec per-user sequence files
  (`<name>.test.inter` with `user_id:token  item_id_list:token_seq  item_id:token` and
  `<name>.item`), e.g. the shipped Games-6k.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys.errors import UserError

INTERACTION_SCHEMA = {
    "user_id": pl.String,
    "item_id": pl.String,
    "rating": pl.Float64,
    "timestamp": pl.Int64,
}
TITLE_COLUMNS = ("title", "movie_title", "item_title", "name", "item_name")
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


@dataclass(frozen=True)
class Dataset:
    """Interactions plus the item catalogue of one data set (column contract above)."""

    interactions: pl.DataFrame
    items: pl.DataFrame
    name: str = ""

    @property
    def n_users(self) -> int:
        return self.interactions["user_id"].n_unique()

    def titles(self) -> dict[str, str]:
        """item_id -> title."""
        return dict(zip(self.items["item_id"], self.items["title"], strict=True))


# ---------------------------------------------------------------- generic parsing


def read_lines(path: Path, encoding: str = "utf-8") -> pl.DataFrame:
    """The non-blank lines of a text file as a frame (line: 1-based number, raw: text).

    Raises UserError when the file is missing, empty or not valid in `encoding`."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    data = path.read_bytes()
    if not data.strip():
        raise UserError(f"{path}: the file is empty")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}, line {line}: byte 0x{data[exc.start]:02x} is not valid {encoding}; "
            f"re-encode the file as {encoding}"
        ) from None
    lines = text.splitlines()
    frame = pl.DataFrame(
        {"line": pl.int_range(1, len(lines) + 1, eager=True), "raw": lines},
        schema={"line": pl.Int64, "raw": pl.String},
    )
    return frame.filter(pl.col("raw").str.strip_chars() != "")


def split_fields(
    lines: pl.DataFrame, path: Path, separator: str, names: list[str], *, at_least: bool = False
) -> pl.DataFrame:
    """Split `raw` on `separator` into string columns `names` (plus `line`).

    Every line must have exactly len(names) fields (or at least that many with
    `at_least`, the rest being ignored); otherwise UserError names the first bad line."""
    parts = lines.select("line", pl.col("raw").str.split(separator).alias("f"))
    counts = parts["f"].list.len()
    bad = (counts < len(names)) if at_least else (counts != len(names))
    if bad.any():
        row = parts.filter(bad).row(0, named=True)
        shown = "tab" if separator == "\t" else repr(separator)
        raise UserError(
            f"{path}, line {row['line']}: expected {len(names)} fields separated by {shown} "
            f"({', '.join(names)}), found {len(row['f'])}"
        )
    return parts.select(
        "line", *[pl.col("f").list.get(i).alias(name) for i, name in enumerate(names)]
    )


def cast_column(
    frame: pl.DataFrame, path: Path, column: str, dtype: pl.DataType, *, nullable: bool = False
) -> pl.DataFrame:
    """Cast a string column; UserError names the first line whose value does not parse.

    Empty values become null when `nullable`, and are an error otherwise."""
    text = pl.col(column).str.strip_chars()
    if dtype == pl.String:
        value = text
    elif dtype == pl.Int64:
        # "881250949.0" (RecBole floats) is an integer too
        value = text.cast(pl.Float64, strict=False)
        value = pl.when(value == value.floor()).then(value).cast(pl.Int64, strict=False)
    else:
        value = text.cast(dtype, strict=False)
    empty = text.is_null() | (text == "")
    value = pl.when(empty).then(None).otherwise(value)
    checked = frame.with_columns(value.alias("_value"), empty.alias("_empty"))
    bad = checked.filter(pl.col("_value").is_null() & (~pl.col("_empty") | (not nullable)))
    if bad.height:
        row = bad.row(0, named=True)
        kind = {pl.Int64: "an integer", pl.Float64: "a number"}.get(dtype, "a value")
        what = "is empty" if row["_empty"] else f"{row[column]!r} is not {kind}"
        raise UserError(f"{path}, line {row['line']}: column {column!r} {what}")
    return checked.drop(column, "_empty").rename({"_value": column})


def interactions_frame(
    frame: pl.DataFrame, path: Path, *, rating: bool, timestamp: bool
) -> pl.DataFrame:
    """Type user_id/item_id/rating/timestamp string columns into INTERACTION_SCHEMA."""
    for column in ("user_id", "item_id"):
        frame = cast_column(frame, path, column, pl.String)
    if rating:
        frame = cast_column(frame, path, "rating", pl.Float64, nullable=True)
    else:
        frame = frame.with_columns(pl.lit(None, pl.Float64).alias("rating"))
    if timestamp:
        frame = cast_column(frame, path, "timestamp", pl.Int64)
    else:  # keep the file order as the time order
        frame = frame.with_columns(pl.col("line").cast(pl.Int64).alias("timestamp"))
    return frame.select([pl.col(c).cast(t) for c, t in INTERACTION_SCHEMA.items()])


def _one(folder: Path, pattern: str, what: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    if len(found) > 1:
        raise UserError(
            f"{folder}: several {what} files ({', '.join(p.name for p in found)}); "
            "pass a folder with exactly one"
        )
    return found[0] if found else None


def _folder(folder: str | Path) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"{path}: not a folder (pass the data set's folder)")
    return path


# ---------------------------------------------------------------- MovieLens


def read_movielens(folder: str | Path) -> Dataset:
    """MovieLens 100K (`u.data`, `u.item`) or 1M (`ratings.dat`, `movies.dat`)."""
    path = _folder(folder)
    if (path / "u.data").is_file():
        return _read_ml100k(path)
    if (path / "ratings.dat").is_file():
        return _read_ml1m(path)
    raise UserError(
        f"{path}: no MovieLens files found; expected u.data + u.item (100K) "
        "or ratings.dat + movies.dat (1M)"
    )


def _read_ml100k(path: Path) -> Dataset:
    ratings = path / "u.data"
    parts = split_fields(
        read_lines(ratings), ratings, "\t", ["user_id", "item_id", "rating", "timestamp"]
    )
    interactions = interactions_frame(parts, ratings, rating=True, timestamp=True)
    items_file = path / "u.item"
    names = ["item_id", "title", "release_date", "video_release_date", "imdb_url"]
    items = split_fields(
        read_lines(items_file, "latin-1"), items_file, "|", [*names, *ML100K_GENRES]
    )
    items = cast_column(items, items_file, "item_id", pl.String)
    flags = [pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in ML100K_GENRES]
    items = items.select(
        "item_id", "title", "release_date",
        pl.concat_list(flags).list.drop_nulls().list.join("|").alias("genres"),
    )  # fmt: skip
    return _checked(Dataset(interactions, items, "movielens-100k"), items_file)


def _read_ml1m(path: Path) -> Dataset:
    ratings = path / "ratings.dat"
    parts = split_fields(
        read_lines(ratings, "latin-1"), ratings, "::", ["user_id", "item_id", "rating", "timestamp"]
    )
    interactions = interactions_frame(parts, ratings, rating=True, timestamp=True)
    movies = path / "movies.dat"
    items = split_fields(
        read_lines(movies, "latin-1"), movies, "::", ["item_id", "title", "genres"]
    )
    items = cast_column(items, movies, "item_id", pl.String).select("item_id", "title", "genres")
    return _checked(Dataset(interactions, items, "movielens-1m"), movies)


# ---------------------------------------------------------------- RecBole atomic


def parse_recbole_header(path: Path, header: str) -> list[tuple[str, str]]:
    """`user_id:token\\titem_id:token` -> [("user_id", "token"), ("item_id", "token")]."""
    columns = []
    for field in header.split("\t"):
        name, sep, kind = field.strip().partition(":")
        if not sep or not name or not kind:
            raise UserError(
                f"{path}, line 1: header field {field!r} is not 'name:type' "
                "(RecBole atomic headers look like user_id:token\\titem_id:token)"
            )
        columns.append((name, kind))
    return columns


def read_recbole_file(path: Path, required: tuple[str, ...]) -> pl.DataFrame:
    """A RecBole atomic file as string columns named without their `:type` suffix."""
    lines = read_lines(path)
    header = lines.row(0, named=True)
    columns = parse_recbole_header(path, header["raw"])
    names = [name for name, _ in columns]
    missing = [c for c in required if c not in names]
    if missing:
        raise UserError(
            f"{path}, line {header['line']}: missing column(s) {missing}; the header has {names}"
        )
    if lines.height < 2:
        raise UserError(f"{path}: the file has a header but no rows")
    return split_fields(lines.slice(1), path, "\t", names)


def read_recbole(folder: str | Path) -> Dataset:
    """RecBole atomic data: `<name>.inter` (user_id, item_id, optional rating/timestamp)
    and optional `<name>.item` (item_id and a title column: title, movie_title, ...).

    Without a `.item` file, or without a title column, an item's title is its id.
    Without a timestamp column, the file order is the time order."""
    path = _folder(folder)
    inter_path = _one(path, "*.inter", ".inter")
    if inter_path is None:
        raise UserError(f"{path}: no <name>.inter file (RecBole atomic format) found")
    raw = read_recbole_file(inter_path, ("user_id", "item_id"))
    interactions = interactions_frame(
        raw, inter_path, rating="rating" in raw.columns, timestamp="timestamp" in raw.columns
    )
    item_path = path / f"{inter_path.stem}.item"
    if item_path.is_file():
        items = read_recbole_file(item_path, ("item_id",))
        items = cast_column(items, item_path, "item_id", pl.String).drop("line")
        title = next((c for c in TITLE_COLUMNS if c in items.columns), None)
        if title is None:
            title = next((c for c in items.columns if "title" in c), None)
        if title is None:
            items = items.with_columns(pl.col("item_id").alias("title"))
        elif title != "title":
            items = items.rename({title: "title"})
        items = items.select("item_id", "title", pl.exclude("item_id", "title"))
    else:
        item_path = inter_path
        ids = interactions["item_id"].unique(maintain_order=True)
        items = pl.DataFrame({"item_id": ids, "title": ids})
    return _checked(Dataset(interactions, items, inter_path.stem), item_path)


# ---------------------------------------------------------------- Amazon sequences


def read_amazon_seq(folder: str | Path) -> Dataset:
    """LLMRank / UniSRec sequence files: `<name>.test.inter` rows hold a user's
    chronological history (`item_id_list`, space separated) and last item (`item_id`).

    Interactions get timestamp = position in the user's sequence (0 = oldest); ratings
    are null. Items come from `<name>.item` (item_id, title)."""
    path = _folder(folder)
    inter_path = _one(path, "*.test.inter", ".test.inter")
    if inter_path is None:
        raise UserError(f"{path}: no <name>.test.inter sequence file found")
    raw = read_recbole_file(inter_path, ("user_id", "item_id_list", "item_id"))
    raw = cast_column(raw, inter_path, "user_id", pl.String)
    raw = cast_column(raw, inter_path, "item_id", pl.String)
    sequences = raw.select(
        "user_id",
        pl.concat_list(
            pl.col("item_id_list")
            .str.strip_chars()
            .str.split(" ")
            .list.eval(pl.element().filter(pl.element() != "")),
            pl.col("item_id"),
        ).alias("item_id"),
    )
    interactions = (
        sequences.explode("item_id")
        .with_columns(
            pl.lit(None, pl.Float64).alias("rating"),
            pl.int_range(pl.len()).over("user_id").cast(pl.Int64).alias("timestamp"),
        )
        .select([pl.col(c).cast(t) for c, t in INTERACTION_SCHEMA.items()])
    )
    name = inter_path.name.removesuffix(".test.inter")
    item_path = path / f"{name}.item"
    items = read_recbole_file(item_path, ("item_id",))
    items = cast_column(items, item_path, "item_id", pl.String).drop("line")
    title = next((c for c in TITLE_COLUMNS if c in items.columns), None)
    if title is None:
        raise UserError(f"{item_path}: no title column; expected one of {list(TITLE_COLUMNS)}")
    items = items.rename({title: "title"}) if title != "title" else items
    return _checked(Dataset(interactions, items.select("item_id", "title"), name), item_path)


def _checked(data: Dataset, items_path: Path) -> Dataset:
    """Item ids must be unique; items without a title get their id as title."""
    items = data.items.with_columns(
        pl.when(pl.col("title").str.strip_chars() == "")
        .then(pl.col("item_id"))
        .otherwise(pl.col("title"))
        .alias("title")
    )
    dupes = items.filter(pl.col("item_id").is_duplicated())
    if dupes.height:
        raise UserError(
            f"{items_path}: item id {dupes['item_id'][0]!r} appears more than once; "
            "item ids must be unique"
        )
    return Dataset(data.interactions, items, data.name)


def read_dataset(folder: str | Path) -> Dataset:
    """Detect the layout of `folder` (MovieLens, sequence files, RecBole atomic) and read it."""
    path = _folder(folder)
    if (path / "u.data").is_file() or (path / "ratings.dat").is_file():
        return read_movielens(path)
    if any(path.glob("*.test.inter")):
        return read_amazon_seq(path)
    if any(path.glob("*.inter")):
        return read_recbole(path)
    raise UserError(
        f"{path}: no known data set layout (MovieLens u.data/ratings.dat, "
        "RecBole <name>.inter, or <name>.test.inter sequences)"
    )
