"""recsys.datasets: the three readers on small files written here, bad files as a table,
and the shipped data where it is cheap to read."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys import datasets
from recsys.errors import UserError


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return folder


GENRES = "|".join(["0"] * 19)
ML100K = {
    "u.data": "1\t10\t4\t100\n1\t11\t3\t90\n2\t10\t5\t95\n",
    "u.item": (
        f"10|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|{'|'.join(['0'] * 15)}\n"
        f"11|Mis\xe9rables (1995)|01-Jan-1995||http://y|{GENRES}\n"
    ).encode("latin-1"),
}
ML1M = {
    "ratings.dat": "1::10::4::100\n1::11::3::90\n",
    "movies.dat": "10::Toy Story (1995)::Animation|Comedy\n11::Heat (1995)::Action\n".encode(
        "latin-1"
    ),
}
RECBOLE = {
    "toy.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\ti1\t5\t881250949.0\nu1\ti2\t\t881250950\nu2\ti1\t3\t12\n",
    "toy.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\n"
    "i1\tToy Story\t1995\ni2\tHeat\t1995\n",
}
SEQ = {
    "G.test.inter": "user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0 1 2\t3\n1\t2\t0\n",
    "G.item": "item_id:token\ttitle:token_seq\n0\tA\n1\tB\n2\tC\n3\tD\n",
}


def test_movielens_100k_types_titles_and_genres(tmp_path: Path) -> None:
    data = datasets.read_movielens(write(tmp_path, ML100K))
    assert dict(data.interactions.schema) == datasets.INTERACTION_SCHEMA
    assert data.interactions.rows() == [
        ("1", "10", 4.0, 100),
        ("1", "11", 3.0, 90),
        ("2", "10", 5.0, 95),
    ]
    assert data.titles() == {"10": "Toy Story (1995)", "11": "Misérables (1995)"}
    assert data.items["genres"].to_list() == ["Animation", ""]


def test_movielens_1m_detected(tmp_path: Path) -> None:
    data = datasets.read_movielens(write(tmp_path, ML1M))
    assert data.name == "movielens-1m"
    assert data.interactions["timestamp"].to_list() == [100, 90]
    assert data.items["genres"].to_list() == ["Animation|Comedy", "Action"]


def test_recbole_typed_header_nullable_rating_and_title_by_name(tmp_path: Path) -> None:
    data = datasets.read_recbole(write(tmp_path, RECBOLE))
    assert data.interactions.rows() == [
        ("u1", "i1", 5.0, 881250949),
        ("u1", "i2", None, 881250950),
        ("u2", "i1", 3.0, 12),
    ]
    assert data.items.columns[:2] == ["item_id", "title"]
    assert data.titles() == {"i1": "Toy Story", "i2": "Heat"}


def test_recbole_without_item_file_or_timestamp(tmp_path: Path) -> None:
    inter = "user_id:token\titem_id:token\nu1\tb\nu1\ta\n"
    data = datasets.read_recbole(write(tmp_path, {"x.inter": inter}))
    assert data.interactions["timestamp"].to_list() == [2, 3]  # file order (line numbers)
    assert data.interactions["rating"].null_count() == 2
    assert data.titles() == {"b": "b", "a": "a"}


def test_amazon_sequences_become_ordered_interactions(tmp_path: Path) -> None:
    data = datasets.read_amazon_seq(write(tmp_path, SEQ))
    assert data.interactions.select("user_id", "item_id", "timestamp").rows() == [
        ("0", "0", 0), ("0", "1", 1), ("0", "2", 2), ("0", "3", 3), ("1", "2", 0), ("1", "0", 1),
    ]  # fmt: skip
    assert data.titles()["3"] == "D"


def test_read_dataset_detects_layouts(tmp_path: Path) -> None:
    assert datasets.read_dataset(write(tmp_path / "a", ML100K)).name == "movielens-100k"
    assert datasets.read_dataset(write(tmp_path / "b", RECBOLE)).name == "toy"
    assert datasets.read_dataset(write(tmp_path / "c", SEQ)).name == "G"


BAD = [
    # (reader, files, message regex)
    ("movielens", {**ML100K, "u.data": ""}, r"u\.data: the file is empty"),
    ("movielens", {**ML100K, "u.data": "1\t10\t4\t100\n1\t10\t4\n"},
     r"u\.data, line 2: expected 4"),
    ("movielens", {**ML100K, "u.data": "1\t10\t4\t100\n\n1\t10\tfour\t1\n"},
     r"u\.data, line 3: column 'rating' 'four' is not a number"),
    ("movielens", {**ML100K, "u.data": "1\t10\t4\tyesterday\n"},
     r"line 1: column 'timestamp' 'yesterday' is not an integer"),
    ("movielens", {"u.data": ML100K["u.data"]}, r"u\.item: file not found"),
    ("movielens", {"README": "x"}, r"no MovieLens files found"),
    ("movielens", {**ML1M, "ratings.dat": "1::10::4::100\n1::10\n"},
     r"ratings\.dat, line 2: expected 4 fields separated by '::'"),
    ("recbole", {"toy.inter": "user_id:token\trating:float\nu1\t3\n"},
     r"toy\.inter, line 1: missing column\(s\) \['item_id'\]"),
    ("recbole", {"toy.inter": "user_id\titem_id\nu1\ti1\n"},
     r"toy\.inter, line 1: header field 'user_id' is not 'name:type'"),
    ("recbole", {"toy.inter": "user_id:token\titem_id:token\n"}, r"header but no rows"),
    ("recbole", {"toy.inter": b"user_id:token\titem_id:token\nu1\ti\xff\n"},
     r"toy\.inter, line 2: byte 0xff is not valid utf-8"),
    ("recbole", {"toy.inter": "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t\n"},
     r"line 2: column 'timestamp' is empty"),
    ("recbole", {"toy.inter": "user_id:token\titem_id:token\nu1\t\n"},
     r"line 2: column 'item_id' is empty"),
    ("recbole", {**RECBOLE, "toy.item": "item_id:token\ttitle:token_seq\ni1\tA\ni1\tB\n"},
     r"toy\.item: item id 'i1' appears more than once"),
    ("recbole", {"notes.txt": "x"}, r"no <name>\.inter file"),
    ("amazon_seq", {**SEQ, "G.item": "item_id:token\tbrand:token\n0\tx\n"}, r"no title column"),
    ("amazon_seq", {**SEQ, "G.test.inter": "user_id:token\titem_id:token\n0\t1\n"},
     r"missing column\(s\) \['item_id_list'\]"),
]  # fmt: skip


@pytest.mark.parametrize(("reader", "files", "message"), BAD)
def test_bad_files_name_file_line_and_problem(
    tmp_path: Path, reader: str, files: dict, message: str
) -> None:
    folder = write(tmp_path / "data", files)
    with pytest.raises(UserError, match=message):
        getattr(datasets, f"read_{reader}")(folder)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a folder"):
        datasets.read_recbole(tmp_path / "missing")


def test_shipped_movielens_100k(shared_movielens_100k: Path) -> None:
    data = datasets.read_movielens(shared_movielens_100k)
    assert data.interactions.height == 100_000
    assert data.n_users == 943
    assert data.items.height == 1682
    assert data.titles()["1"] == "Toy Story (1995)"
    assert data.interactions.select(pl.col("rating").is_between(1, 5).all()).item()
