"""No SQL outside recsys/db: the application, the libraries, the worker and the benchmarks
reach the database only through the functions of recsys.db, checked on the source."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("recsys", "ranking", "retrieval", "jobs", "benchmarks", "scripts")
DATA_LAYER = ROOT / "recsys" / "db"
# what may be imported from SQLAlchemy outside the data layer: the Engine type (to pass an
# engine along) and the exception classes (to report an unusable database)
ALLOWED_SQLALCHEMY = ("sqlalchemy.engine", "sqlalchemy.exc")
# calls that run SQL (Connection/Session.execute, the driver's own, ORM sessions' reads)
SQL_CALLS = {"execute", "executemany", "exec_driver_sql", "scalar", "scalars", "execution_options"}
SQL_TEXT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|TRUNCATE|COPY)\s")


def sources() -> list[Path]:
    found = [p for pkg in SCANNED if (ROOT / pkg).is_dir() for p in (ROOT / pkg).rglob("*.py")]
    return sorted(p for p in found if DATA_LAYER not in p.parents)


def violations(path: Path) -> list[str]:
    """What in `path` writes or runs SQL, as `file:line: what`."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    where = path.relative_to(ROOT)
    out = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sqlalchemy" and not _allowed(alias.name):
                    out.append(f"{where}:{line}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "sqlalchemy" and not _allowed(node.module):
                names = ", ".join(a.name for a in node.names)
                out.append(f"{where}:{line}: from {node.module} import {names}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in SQL_CALLS:
                out.append(f"{where}:{line}: .{node.func.attr}(...)")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and SQL_TEXT.match(node.value)
        ):
            out.append(f"{where}:{line}: SQL text {node.value.strip()[:40]!r}")
    return out


def _allowed(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in ALLOWED_SQLALCHEMY)


def test_the_scan_sees_the_code_base() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in sources()}
    assert {"recsys/pipeline.py", "recsys/auth.py", "recsys/job_runs.py", "jobs/tasks.py"} <= names
    assert not any(n.startswith("recsys/db/") for n in names)


def test_no_sql_outside_the_data_layer() -> None:
    found = [v for path in sources() for v in violations(path)]
    assert found == [], "SQL outside recsys/db (move it into a recsys/db module):\n" + "\n".join(
        found
    )


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("import sqlalchemy as sa\n", "import sqlalchemy"),
        ("from sqlalchemy import select, text\n", "from sqlalchemy import select, text"),
        ("from sqlalchemy.orm import Session\n", "from sqlalchemy.orm import Session"),
        ("def f(conn):\n    return conn.execute(q)\n", ".execute(...)"),
        ("def f(conn):\n    conn.exec_driver_sql('x')\n", ".exec_driver_sql(...)"),
        ("Q = 'SELECT id FROM users'\n", "SQL text 'SELECT id FROM users'"),
    ],
)
def test_the_scan_catches_sql(tmp_path, monkeypatch, source: str, caught: str) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    path = tmp_path / "module.py"
    path.write_text(source)
    assert [v.split(": ", 1)[1] for v in violations(path)] == [caught]


def test_the_scan_allows_engine_types_and_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    path = tmp_path / "module.py"
    path.write_text(
        "from sqlalchemy.engine import Engine\nfrom sqlalchemy.exc import SQLAlchemyError\n"
        "'''Selecting candidates: see INSERT ... ON CONFLICT in recsys.db.'''\n"
    )
    assert violations(path) == []
